#!/usr/bin/env bash
# nbd_enospc: a full pool reaches the NBD client as ENOSPC, at once and without hanging,
# while a provisioned (guaranteed) volume still takes writes; after a TRIM frees blocks,
# writes work again; the server stops cleanly and the pool checks.
# Usage: nbd_enospc.sh PATH/TO/thinpool   (THINPOOL_SERVE_CMD: as in nbd_clients.sh)
set -euo pipefail

TP=$(realpath "${1:?usage: $0 PATH/TO/thinpool}")
if [ -n "${THINPOOL_SERVE_CMD:-}" ]; then
  read -r -a SERVE <<<"$THINPOOL_SERVE_CMD"
else
  if ! "$TP" serve --help 2>&1 | grep -- '--socket' >/dev/null; then
    echo "nbd_enospc: SKIP: $TP has no 'serve' subcommand (set THINPOOL_SERVE_CMD)"
    exit 0
  fi
  SERVE=("$TP")
fi
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import nbd' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
  echo "nbd_enospc: SKIP: libnbd python bindings (python3-libnbd) not installed"
  exit 0
fi

T=$(mktemp -d)
SRV_PID=
cleanup() {
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null || true
    wait "$SRV_PID" 2>/dev/null || true
  fi
  rm -rf "$T"
}
trap cleanup EXIT
unset THINPOOL_POOL
P=$T/pool
S=$T/nbd.sock
tp() { "$TP" -p "$P" "$@"; }
fail() {
  echo "nbd_enospc: FAIL: $*" >&2
  if [ -s "$T/server.log" ]; then sed 's/^/  server: /' "$T/server.log" >&2; fi
  exit 1
}

# 32 blocks of 64 KiB; 4 of them guaranteed to g; vol is 16 MiB, far more than fits.
tp init --size 2M >/dev/null
tp create g --size 256K --provision >/dev/null
tp create vol --size 16M >/dev/null

timeout -s TERM 300 "${SERVE[@]}" -p "$P" serve --socket "$S" 2>"$T/server.log" &
SRV_PID=$!
for _ in $(seq 100); do
  grep '^serving ' "$T/server.log" >/dev/null && break
  kill -0 "$SRV_PID" 2>/dev/null || fail "server exited at start"
  sleep 0.1
done

SOCK=$S timeout 120 "$PY" - <<'EOF' || fail "libnbd script"
import errno, os, nbd

uri = lambda name: "nbd+unix:///%s?socket=%s" % (name, os.environ["SOCK"])
vol = nbd.NBD()
vol.connect_uri(uri("vol"))
blk = b"\xa5" * 65536
written = 0
try:
    for i in range(64):  # 4 MiB: twice the pool
        vol.pwrite(blk, i * 65536)
        written += 1
    raise AssertionError("a 4 MiB write into a 2 MiB pool succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, "want ENOSPC, got %s (%s)" % (e.errnum, e.string)
assert 0 < written <= 28, written
assert vol.pread(65536, 0) == blk  # what was written before the pool filled reads back
# Guaranteed space: g's writes cannot fail for lack of space, even now.
g = nbd.NBD()
g.connect_uri(uri("g"))
g.pwrite(b"\x3c" * (256 << 10), 0)
g.flush()
assert g.pread(256 << 10, 0) == b"\x3c" * (256 << 10)
# TRIM gives blocks back: writes work again.
vol.trim(4 * 65536, 0)
vol.flush()
vol.pwrite(blk, 40 * 65536)
vol.flush()
vol.shutdown()
g.shutdown()
EOF

kill -TERM "$SRV_PID"
rc=0
wait "$SRV_PID" || rc=$?
SRV_PID=
[ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
tp check >/dev/null || fail "pool check: $(tp check 2>&1)"
echo "nbd_enospc: ok: full pool is ENOSPC, guaranteed volume still writable, trim frees"
