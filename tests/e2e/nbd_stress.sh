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
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"
[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"

DURATION=30
if [ "${TP_LONG:-}" = 1 ]; then DURATION=300; fi
DURATION=${TP_STRESS_SECONDS:-$DURATION}

tp init --size 128M >/dev/null
tp create gvol --size 8M --provision >/dev/null
tp create tvol --size 16M >/dev/null
tp create side --size 256K >/dev/null

SERVE_TIMEOUT=$((DURATION + 240))
start_server

timeout $((DURATION + 180)) "$PY" "$LIB/nbd_stress.py" --thinpool "$TP" --pool "$P" \
  --socket "$S" --tmp "$T" --duration "$DURATION" --bound 30 --clients 8 ||
  fail "stress run (exit $?)"

stop_server
check_pool "after the run"
ok "no verification error, no hang, no guaranteed write refused"
