#!/usr/bin/env bash
# nbd_hostile: what a hostile or broken client can and cannot do to `thinpool serve`.
#   - names: volume names with path characters or over 128 bytes are refused at create
#     and snapshot (also through the daemon) and by `serve --export`; the same names as NBD
#     export names (libnbd: GO, INFO, the URI) find nothing, and nothing outside the pool
#     is touched;
#   - sizes: READ and WRITE requests over 32 MiB (libnbd with strict mode off) get an
#     error, the connection goes on, and the server's peak memory does not grow by them
#     (nothing of that size is allocated);
#   - handshake timeout (serve --handshake-timeout 1): clients that connect and say nothing,
#     stop after the client flags, or stop in the middle of an option are dropped, while a
#     real client is served meanwhile;
#   - handshakes per address: 16 TCP connections from 127.0.0.1 that say nothing hold
#     every handshake slot of that address, a 17th is closed at once, a real client on the
#     Unix socket is served meanwhile, and one over TCP once the 16 have timed out.
# Usage: nbd_hostile.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

. "$(dirname "$0")/lib/nbd.sh"
if [ -z "$PY" ] || ! command -v nbdinfo >/dev/null; then
  skip "needs nbdinfo and python3 with libnbd's bindings (python3-libnbd)"
fi

volumes() { tp list --json | python3 -c 'import json,sys; print(" ".join(sorted(v["name"] for v in json.load(sys.stdin))))'; }

tp init --size 128M >/dev/null
tp create vol --size 64M >/dev/null
mkdir "$T/outside"
LONG=$(printf 'v%.0s' {1..129})
BAD_NAMES=("../outside/x" "a/b" "/abs" ".." "." "-x" "$LONG")

start_server --handshake-timeout 1 --listen 127.0.0.1:0
[ -n "$PORT" ] || fail "no TCP port in the server's ready line"

# --- names at create time, through the daemon ------------------------------------------------
for n in "${BAD_NAMES[@]}"; do
  rc=0
  tp create "$n" --size 1M >/dev/null 2>"$T/err" || rc=$?
  [ "$rc" -eq 2 ] || fail "create '$n' exited $rc, expected 2: $(cat "$T/err")"
  rc=0
  tp snapshot vol "$n" >/dev/null 2>"$T/err" || rc=$?
  [ "$rc" -eq 2 ] || fail "snapshot vol '$n' exited $rc, expected 2: $(cat "$T/err")"
done
[ "$(volumes)" = vol ] || fail "a bad name created a volume: $(volumes)"
[ -z "$(ls -A "$T/outside")" ] || fail "something was created outside the pool"
rc=0
"$TP" -p "$P" serve --socket "$T/other.sock" --export ../outside/x 2>"$T/err" || rc=$?
[ "$rc" -eq 2 ] || fail "serve --export ../outside/x exited $rc, expected 2"
ok "names with path characters or over 128 bytes are refused at create, snapshot and --export"

# --- the same names as NBD export names --------------------------------------------------------
SOCK=$S "$PY" - "${BAD_NAMES[@]}" "$(printf 'v%.0s' {1..4000})" <<'EOF' || fail "libnbd export-name checks"
import os, sys, nbd
sock = os.environ["SOCK"]
for name in sys.argv[1:]:
    h = nbd.NBD()
    h.set_export_name(name)
    try:
        h.connect_unix(sock)
    except nbd.Error:
        pass
    else:
        raise SystemExit("export %r was opened" % name[:40])
# In option mode: INFO for each bad name fails, LIST names only the real volume.
h = nbd.NBD()
h.set_opt_mode(True)
h.connect_unix(sock)
for name in sys.argv[1:]:
    h.set_export_name(name)
    try:
        h.opt_info()
    except nbd.Error:
        pass
    else:
        raise SystemExit("NBD_OPT_INFO answered for %r" % name[:40])
names = []
h.opt_list(lambda n, d: names.append(n))
assert names == ["vol"], names
h.set_export_name("vol")
h.opt_go()
assert h.get_size() == 64 << 20
EOF
run_nbdinfo() { timeout 60 nbdinfo "$@" >/dev/null 2>&1; }
run_nbdinfo "nbd+unix:///..%2Foutside%2Fx?socket=$S" && fail "nbdinfo opened ../outside/x"
run_nbdinfo "nbd+unix:///vol?socket=$S" || fail "nbdinfo cannot open vol after the bad names"
[ -z "$(ls -A "$T/outside")" ] || fail "an export name touched something outside the pool"
ok "bad NBD export names find nothing (GO, INFO, URI); LIST shows only real volumes"

# --- requests over 32 MiB ----------------------------------------------------------------------------
hwm_kib() { awk '/^VmHWM:/ {print $2}' "/proc/$(server_pid)/status"; }
# Warm up (threads, buffers of legitimate sizes), then reset the peak when the kernel allows.
SOCK=$S "$PY" -c '
import os, nbd
h = nbd.NBD(); h.connect_unix(os.environ["SOCK"])
for n in (4096, 1 << 20, 4 << 20): h.pread(n, 0)
h.shutdown()' || fail "warm-up reads"
echo 5 >"/proc/$(server_pid)/clear_refs" 2>/dev/null || true
BEFORE=$(hwm_kib)
SOCK=$S "$PY" - <<'EOF' || fail "oversized requests"
import errno, os, nbd
h = nbd.NBD()
h.set_strict_mode(0)  # let libnbd send what the server advertises it will not take
h.connect_unix(os.environ["SOCK"])
big = (32 << 20) + 4096
for i in range(4):
    try:
        h.pread(big, 0)
    except nbd.Error as e:
        assert e.errnum in (errno.EOVERFLOW, errno.EINVAL), e
    else:
        raise SystemExit("a READ of 32 MiB + 4 KiB succeeded")
buf = bytes(big)
for i in range(2):
    try:
        h.pwrite(buf, 0)
    except nbd.Error as e:
        assert e.errnum in (errno.EOVERFLOW, errno.EINVAL), e
    else:
        raise SystemExit("a WRITE of 32 MiB + 4 KiB succeeded")
# The connection is still in step.
h.pwrite(b"x" * 4096, 0)
assert h.pread(4096, 0) == b"x" * 4096
h.shutdown()
EOF
AFTER=$(hwm_kib)
GROWTH=$(( (AFTER - BEFORE) / 1024 ))
echo "$NAME: peak RSS before ${BEFORE} KiB, after ${AFTER} KiB"
[ "$GROWTH" -lt 16 ] || fail "peak memory grew by $GROWTH MiB serving refused 32+ MiB requests"
ok "READ/WRITE over 32 MiB refused without allocation (peak RSS +$GROWTH MiB), connection kept"

# --- handshake timeout -----------------------------------------------------------------------------
SOCK=$S "$PY" - <<'EOF' || fail "stalled handshakes"
import os, socket, struct, time, nbd
sock = os.environ["SOCK"]

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(30)  # far beyond the server's 1 s: a server that never drops fails here
    s.connect(sock)
    return s

silent = connect()                       # says nothing at all
flags = connect()                        # greeting read, flags sent, then nothing
assert len(flags.recv(18)) == 18
flags.sendall(struct.pack(">I", 3))
half = connect()                         # half an option header
half.recv(18)
half.sendall(struct.pack(">I", 3) + b"IHAVEOPT"[:5])

# A real client is served while the three hang.
h = nbd.NBD()
h.connect_unix(sock)
h.pwrite(b"y" * 4096, 8192)
assert h.pread(4096, 8192) == b"y" * 4096

def dropped(s):
    data = b""
    while True:
        chunk = s.recv(4096)  # socket.timeout after 30 s fails the test
        if not chunk:
            return data
        data += chunk

dropped(silent)
dropped(flags)
dropped(half)
# The transmission phase has no such deadline: the real client still works.
assert h.pread(4096, 8192) == b"y" * 4096
h.shutdown()
EOF
[ "$(grep -c 'handshake timed out' "$T/server.log")" -ge 3 ] \
  || fail "the server did not log three handshake timeouts"
ok "clients stalling in the handshake are dropped after --handshake-timeout; others served"

# --- unfinished handshakes per TCP address -------------------------------------------------------
SOCK=$S PORT=$PORT "$PY" - <<'EOF' || fail "handshakes per address"
import os, socket, nbd
sock, port = os.environ["SOCK"], int(os.environ["PORT"])

def tcp():
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    return s

def read_to_eof(s):
    data = b""
    while True:
        chunk = s.recv(4096)  # socket.timeout after 30 s fails the test
        if not chunk:
            return data
        data += chunk

stalled = [tcp() for _ in range(16)]
for s in stalled:
    assert s.recv(18)[:8] == b"NBDMAGIC", "a stalled client got no greeting"
extra = tcp()
assert read_to_eof(extra) == b"", "a 17th unfinished handshake from 127.0.0.1 was greeted"

h = nbd.NBD()  # the Unix socket has no per-address cap
h.connect_unix(sock)
assert h.pread(4096, 8192) == b"y" * 4096
h.shutdown()

# Dropped after --handshake-timeout 1; the server counts a handshake out before it closes
# the connection, so the slots of 127.0.0.1 are free once the 16 see EOF.
for s in stalled:
    read_to_eof(s)
h = nbd.NBD()
h.connect_tcp("127.0.0.1", str(port))
assert h.pread(4096, 8192) == b"y" * 4096
h.shutdown()
EOF
grep_q 'unfinished handshakes from 127.0.0.1' "$T/server.log" \
  || fail "the refused 17th handshake was not logged"
ok "16 unfinished TCP handshakes per address, a 17th closed at once; Unix and later TCP clients served"

stop_server
tp check >"$T/check.out" 2>&1 || fail "pool check: $(cat "$T/check.out")"
ok "pool checks clean"
