# NBD helpers for the end-to-end scripts; source it after common.sh:
#   . "$(dirname "$0")/lib/common.sh" "$@"
#   . "$(dirname "$0")/lib/nbd.sh"
# It gives $S (the server's Unix socket), $PY (a python3 with libnbd's bindings, or empty),
# start_server / stop_server / kill9_server (by PID, every wait bounded), skip, ok, and a
# cleanup trap that stops the server and then runs the commands in CLEANUP (a function name
# the script may set: unmount, detach... on every path) before the temp dir goes.

S=$T/nbd.sock
SRV_PID=
CLEANUP=
LIB=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

ok() { echo "$NAME: ok: $*"; }
skip() {
  echo "$NAME: SKIP: $*"
  exit 0
}
fail() {
  echo "$NAME: FAIL: $*" >&2
  if [ -s "$T/server.log" ]; then tail -n 30 "$T/server.log" | sed 's/^/  server: /' >&2; fi
  exit 1
}
# grep -q would stop reading early and, under pipefail, fail the writer with SIGPIPE.
grep_q() { grep "$@" >/dev/null; }
uri() { echo "nbd+unix:///$1?socket=$S"; }

nbd_cleanup() {
  local rc=$?
  set +e
  if [ -n "$CLEANUP" ]; then "$CLEANUP"; fi
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null
    # Bounded: SIGKILL if a clean stop takes more than 30 s.
    for _ in $(seq 300); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null
  fi
  rm -rf "$T"
  exit "$rc"
}
trap nbd_cleanup EXIT

# A python3 with libnbd's bindings (what nbdsh runs); pyenv shims may hide the system one.
PY=
for p in python3 /usr/bin/python3; do
  if "$p" -c 'import nbd' 2>/dev/null; then
    PY=$p
    break
  fi
done

# The server command: thinpool, or THINPOOL_SERVE_CMD="prog args" (run as "prog args -p POOL
# serve --socket S ...": another build, or a wrapper).
if [ -n "${THINPOOL_SERVE_CMD:-}" ]; then
  read -r -a SERVE <<<"$THINPOOL_SERVE_CMD"
else
  SERVE=("$TP")
fi

# start_server [ARGS...]: thinpool serve on $S, waits for its ready line (10 s at most);
# PORT is the TCP port when ARGS ask for a listener. The server is killed after
# SERVE_TIMEOUT seconds (900) whatever happens.
PORT=
SERVE_TIMEOUT=900
start_server() {
  : >"$T/server.log"
  timeout -s KILL "$SERVE_TIMEOUT" "${SERVE[@]}" -p "$P" serve --socket "$S" "$@" 2>>"$T/server.log" &
  SRV_PID=$!
  for _ in $(seq 100); do
    if grep_q '^serving ' "$T/server.log"; then
      PORT=$(sed -n 's/^serving .* and 127\.0\.0\.1:\([0-9]*\).*/\1/p' "$T/server.log")
      return 0
    fi
    kill -0 "$SRV_PID" 2>/dev/null || fail "server exited at start"
    sleep 0.1
  done
  fail "server not ready after 10 s"
}
# stop_server: SIGTERM, a clean exit within 60 s, no socket left behind.
stop_server() {
  kill -TERM "$SRV_PID"
  local rc=0 i
  for i in $(seq 600); do
    kill -0 "$SRV_PID" 2>/dev/null || break
    sleep 0.1
  done
  kill -0 "$SRV_PID" 2>/dev/null && fail "server still running 60 s after SIGTERM"
  wait "$SRV_PID" || rc=$?
  SRV_PID=
  [ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
  [ ! -e "$S" ] || fail "socket $S left behind"
}
# server_pid: the daemon's own PID (SRV_PID is its `timeout` wrapper).
server_pid() { pgrep -P "$SRV_PID" || fail "no server process under $SRV_PID"; }
# kill9_server: SIGKILL, as a crash would; the socket file stays behind. SRV_PID is the
# `timeout` wrapper (it relays TERM but cannot relay KILL): the server is its child.
kill9_server() {
  kill -KILL "$(server_pid)"
  wait "$SRV_PID" 2>/dev/null || true
  SRV_PID=
}
# check_pool WHAT: the pool is offline; `thinpool check` (which runs thin_check too) and,
# when installed, thin_check on DIR/metadata directly.
check_pool() {
  tp check >"$T/check.out" 2>&1 || fail "thinpool check $1: $(cat "$T/check.out")"
  if command -v thin_check >/dev/null 2>&1; then
    thin_check "$P/metadata" >"$T/check.out" 2>&1 || fail "thin_check $1: $(cat "$T/check.out")"
  fi
}
