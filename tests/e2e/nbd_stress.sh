#!/usr/bin/env bash
# nbd_stress: 8 NBD connections (multi-conn, 4 per export) write tagged patterns, trim,
# flush and verify their own regions of a guaranteed (provisioned) volume and a thin volume
# while the thinpool CLI, through the daemon's control socket, takes snapshots of both,
# merges a non-exported writable snapshot into a non-exported volume, removes snapshots,
# checks the pool, and fills the pool to full with another volume and frees it again.
# Fails on any verification error, any request or command unanswered after 30 s, any write
# to the guaranteed volume refused, and any ENOSPC outside a fill. ~30 s; TP_LONG=1: 300 s;
# TP_STRESS_SECONDS=N: N s. Then the server stops (SIGTERM by PID), and `thinpool check` and
# thin_check pass.
set -euo pipefail

TP=$(realpath "${1:?usage: $0 PATH/TO/thinpool}")
HERE=$(cd "$(dirname "$0")" && pwd)
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import nbd' 2>/dev/null; then PY=$p; break; fi
done
if [ -z "$PY" ]; then
  echo "nbd_stress: SKIP: libnbd python bindings (python3-libnbd) not installed"
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
  echo "nbd_stress: FAIL: $*" >&2
  if [ -s "$T/server.log" ]; then tail -n 40 "$T/server.log" | sed 's/^/  server: /' >&2; fi
  exit 1
}

DURATION=30
if [ "${TP_LONG:-}" = 1 ]; then DURATION=300; fi
DURATION=${TP_STRESS_SECONDS:-$DURATION}

tp init --size 128M >/dev/null
tp create gvol --size 8M --provision >/dev/null
tp create tvol --size 16M >/dev/null
tp create side --size 256K >/dev/null

timeout -s TERM $((DURATION + 240)) "$TP" -p "$P" serve --socket "$S" 2>"$T/server.log" &
SRV_PID=$!
for _ in $(seq 100); do
  grep '^serving ' "$T/server.log" >/dev/null && break
  kill -0 "$SRV_PID" 2>/dev/null || fail "server exited at start"
  sleep 0.1
done
grep '^serving ' "$T/server.log" >/dev/null || fail "server not ready after 10 s"

timeout $((DURATION + 180)) "$PY" "$HERE/lib/nbd_stress.py" --thinpool "$TP" --pool "$P" \
  --socket "$S" --tmp "$T" --duration "$DURATION" --bound 30 --clients 8 ||
  fail "stress run (exit $?)"

kill -TERM "$SRV_PID"
rc=0
wait "$SRV_PID" || rc=$?
SRV_PID=
[ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
tp check >"$T/check.out" 2>&1 || fail "pool check: $(cat "$T/check.out")"
if command -v thin_check >/dev/null; then
  thin_check "$P/metadata" >/dev/null 2>&1 || fail "thin_check: $(thin_check "$P/metadata" 2>&1)"
fi
echo "nbd_stress: ok: no verification error, no hang, no guaranteed write refused"
