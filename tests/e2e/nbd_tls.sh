#!/usr/bin/env bash
# nbd_tls: `thinpool serve --tls` against libnbd's real TLS client (nbdinfo, nbdsh) on
# 127.0.0.1. The script makes its own CA and server certificate (certtool) and a PSK file
# (psktool) in its temp dir, then:
#   --tls require: nbds:// with X.509 (tls-certificates=DIR) and with PSK (tls-psk-file)
#     read and write; a plain nbd:// client is refused, and even `nbdinfo --list` learns
#     no export name; a client trusting another CA, or with a wrong key, is refused;
#   --tls on: both plain and TLS clients work (h.get_tls_negotiated() tells them apart);
#   bad TLS options exit 2 and unloadable credentials exit 1, before anything is served.
# Every server is stopped with SIGTERM and must exit 0; the pool then checks clean.
# Usage: nbd_tls.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

for tool in certtool psktool nbdinfo nbdsh; do
  if ! command -v "$tool" >/dev/null; then
    echo "$NAME: SKIP: $tool not installed (scripts/install-deps.sh)"
    exit 0
  fi
done

. "$(dirname "$0")/lib/nbd.sh"
[ -n "$PY" ] || skip "no python3 with libnbd's bindings (python3-libnbd)"
NBDSH=("$PY" -m nbd)
run() { timeout 60 "$@"; }

# --- credentials ---------------------------------------------------------------------------
PKI=$T/pki            # the server's directory (nbdkit's layout)
CLI=$T/client         # what a client trusts: ca-cert.pem only
OTHER=$T/other-ca     # a CA that did not sign the server's certificate
mkdir -p "$PKI" "$CLI" "$OTHER"
cat >"$T/ca.info" <<'EOF'
cn = thinpool test CA
ca
cert_signing_key
expiration_days = 2
EOF
cat >"$T/server.info" <<'EOF'
organization = thinpool test
cn = localhost
dns_name = localhost
ip_address = 127.0.0.1
tls_www_server
encryption_key
signing_key
expiration_days = 2
EOF
certtool --generate-privkey --outfile "$T/ca-key.pem" 2>/dev/null
certtool --generate-self-signed --load-privkey "$T/ca-key.pem" --template "$T/ca.info" \
  --outfile "$PKI/ca-cert.pem" >/dev/null 2>&1 || fail "certtool: CA"
certtool --generate-privkey --outfile "$PKI/server-key.pem" 2>/dev/null
certtool --generate-certificate --load-privkey "$PKI/server-key.pem" \
  --load-ca-certificate "$PKI/ca-cert.pem" --load-ca-privkey "$T/ca-key.pem" \
  --template "$T/server.info" --outfile "$PKI/server-cert.pem" >/dev/null 2>&1 \
  || fail "certtool: server certificate"
cp "$PKI/ca-cert.pem" "$CLI/"
certtool --generate-privkey --outfile "$T/other-key.pem" 2>/dev/null
certtool --generate-self-signed --load-privkey "$T/other-key.pem" --template "$T/ca.info" \
  --outfile "$OTHER/ca-cert.pem" >/dev/null 2>&1 || fail "certtool: other CA"
psktool -u alice -p "$T/keys.psk" >/dev/null 2>&1 || fail "psktool"
grep -q '^alice:[0-9a-f]\+$' "$T/keys.psk" || fail "psktool wrote an unexpected format"
# The same user with another key.
echo "alice:$(head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$T/wrong.psk"

tp init --size 64M >/dev/null
tp create vol --size 8M >/dev/null
tp create hidden-name --size 4M >/dev/null

# Every server here also listens on TCP (an ephemeral port: PORT).
serve_tcp() {
  start_server --listen 127.0.0.1:0 "$@"
  [ -n "$PORT" ] || fail "no TCP port in the ready line: $(cat "$T/server.log")"
}

x509() { echo "nbds://127.0.0.1:$PORT/$1?tls-certificates=${2:-$CLI}"; }
psk() { echo "nbds://alice@127.0.0.1:$PORT/$1?tls-psk-file=${2:-$T/keys.psk}"; }
plain() { echo "nbd://127.0.0.1:$PORT/$1"; }

# nbdsh_rw URI SEED: writes 64 KiB at 1 MiB and reads it back, over TLS.
# (libnbd reads tls-certificates and tls-psk-file from a URI only when allowed to.)
nbdsh_connect() { echo "h.set_uri_allow_local_file(True); h.connect_uri('$1')"; }
nbdsh_rw() {
  run "${NBDSH[@]}" -c "$(nbdsh_connect "$1")" -c "
assert h.get_tls_negotiated(), 'TLS not negotiated'
buf = bytes((i * 7 + $2) % 256 for i in range(65536))
h.pwrite(buf, 1048576)
h.flush()
assert h.pread(65536, 1048576) == buf, 'data read back differs'
" || fail "nbdsh read/write over $1"
}
# refused CMD...: the client must fail; its stderr is kept in $T/refused.err.
refused() {
  if run env "$@" >"$T/refused.out" 2>"$T/refused.err"; then
    fail "'$*' succeeded but must be refused: $(cat "$T/refused.out")"
  fi
}

# --- --tls require with X.509 ------------------------------------------------------------------
serve_tcp --tls require --tls-certificates "$PKI"
grep -q "(TLS require)" "$T/server.log" || fail "ready line does not name the TLS mode"
run nbdinfo "$(x509 vol)" >"$T/info.txt" || fail "nbdinfo over X.509 TLS"
grep -q "export-size: $((8 * MiB))" "$T/info.txt" || fail "nbdinfo size: $(cat "$T/info.txt")"
nbdsh_rw "$(x509 vol)" 1
run nbdinfo --list "$(x509 '')" >"$T/list.txt" || fail "nbdinfo --list over TLS"
grep -q 'export="hidden-name"' "$T/list.txt" || fail "TLS list misses an export: $(cat "$T/list.txt")"
ok "--tls require: nbds:// with X.509 reads, writes and lists"

# libnbd's own message is generic; its debug log shows the server's NBD_REP_ERR_TLS_REQD text.
refused LIBNBD_DEBUG=1 nbdinfo "$(plain vol)"
grep -q 'TLS is required' "$T/refused.err" || fail "plain client not refused for TLS: $(cat "$T/refused.err")"
refused LIBNBD_DEBUG=1 nbdinfo --list "$(plain '')"
grep -q 'TLS is required' "$T/refused.err" || fail "plain --list not refused for TLS"
if grep -q 'hidden-name' "$T/refused.out" "$T/refused.err"; then
  fail "a plain client learnt an export name"
fi
refused nbdinfo "nbd+unix:///vol?socket=$T/nbd.sock"  # the Unix socket requires TLS too
refused nbdinfo "$(x509 vol "$OTHER")"                 # a CA that did not sign the server
refused nbdinfo "$(psk vol)"                           # PSK offered to an X.509 server
ok "--tls require: plain clients (TCP and Unix), a foreign CA and PSK are refused"
stop_server

# --- --tls require with PSK ----------------------------------------------------------------------
serve_tcp --tls require --tls-psk "$T/keys.psk"
run nbdinfo "$(psk vol)" >"$T/info.txt" || fail "nbdinfo over PSK TLS"
grep -q "export-size: $((8 * MiB))" "$T/info.txt" || fail "nbdinfo size over PSK"
nbdsh_rw "$(psk vol)" 2
refused nbdinfo "$(psk vol "$T/wrong.psk")"
refused nbdinfo "$(plain vol)"
refused nbdinfo "$(x509 vol)"
ok "--tls require: nbds:// with PSK reads and writes; wrong key, plain and X.509 refused"
stop_server

# --- --tls on: both ------------------------------------------------------------------------------
serve_tcp --tls on --tls-certificates "$PKI"
run "${NBDSH[@]}" -c "$(nbdsh_connect "$(plain vol)")" -c '
assert not h.get_tls_negotiated()
assert h.pread(65536, 1048576) == bytes((i * 7 + 2) % 256 for i in range(65536))
' || fail "plain client with --tls on"
nbdsh_rw "$(x509 vol)" 3
run nbdinfo --list "$(plain '')" | grep -q 'export="vol"' || fail "plain --list with --tls on"
ok "--tls on: plain and TLS clients both served"
stop_server

# --- bad options: nothing is served --------------------------------------------------------------
expect_rc() {
  local want=$1 got=0
  shift
  timeout 30 "$TP" -p "$P" serve --socket "$T/bad.sock" "$@" >/dev/null 2>"$T/bad.err" || got=$?
  [ "$got" -eq "$want" ] || fail "serve $* exited $got, expected $want: $(cat "$T/bad.err")"
  [ ! -e "$T/bad.sock" ] || fail "serve $* left a socket"
}
expect_rc 2 --tls require                                   # no credentials
expect_rc 2 --tls on --tls-certificates "$PKI" --tls-psk "$T/keys.psk"  # both kinds
expect_rc 2 --tls-certificates "$PKI"                       # credentials with TLS off
expect_rc 2 --tls maybe --tls-certificates "$PKI"
expect_rc 2 --handshake-timeout 0
expect_rc 1 --tls require --tls-certificates "$T/nonexistent"
expect_rc 1 --tls require --tls-certificates "$CLI"         # a CA but no server key
echo "garbage" >"$T/bad.psk"
expect_rc 1 --tls require --tls-psk "$T/bad.psk"
ok "bad TLS options exit 2, unloadable credentials exit 1"

tp check >"$T/check.out" 2>&1 || fail "pool check after the TLS servers: $(cat "$T/check.out")"
ok "pool checks clean"
