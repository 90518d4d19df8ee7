#!/usr/bin/env bash
# serve_rss: the resident memory of `thinpool serve` with a 1 TiB volume after 10 GiB of
# random writes over NBD (issue 12: must stay under 64 MiB).
#  1. init a pool whose data file (sparse) holds the writes, create a 1 TiB volume;
#  2. start `thinpool -p POOL serve --socket SOCK --default vol` in the background;
#  3. fio's nbd engine writes 10 GiB at random offsets of the volume, each offset once, then
#     FLUSHes (bench/fio/serve_rss.fio);
#  4. read VmRSS and VmHWM (peak) of the server from /proc/PID/status;
#  5. stop the server by its PID (SIGTERM: final commit), then `thinpool check` the pool.
# Takes minutes and needs the written bytes (+2 GiB) free on the disk; the pool is removed
# at the end. The pool goes in TP_BENCH_DIR, TMPDIR or /tmp (a memory file system is
# refused: the data would count against RAM).
#
# Usage: bench/serve_rss.sh PATH/TO/thinpool [--volume 1T] [--write 10G] [--bs 64K]
#                           [--iodepth 8] [--keep]
# Sizes are binary units (K, M, G, T). --bs smaller than the pool's 64 KiB block makes every
# write allocate a whole block: the pool is sized for that (sparse), the disk use is what fio
# writes.
set -euo pipefail

usage() {
  echo "usage: $0 PATH/TO/thinpool [--volume 1T] [--write 10G] [--bs 64K] [--iodepth 8] [--keep]" >&2
  exit 2
}
bytes() { numfmt --from=iec "${1^^}"; }
mib() { echo $((($1 + 1048575) / 1048576)); }

[ $# -ge 1 ] || usage
TP=$(realpath "$1")
shift
VOLUME=1T WRITE=10G BS=64K IODEPTH=8 KEEP=0
LIMIT_MIB=64
while [ $# -gt 0 ]; do
  case "$1" in
    --volume) VOLUME=${2:?} && shift 2 ;;
    --write) WRITE=${2:?} && shift 2 ;;
    --bs) BS=${2:?} && shift 2 ;;
    --iodepth) IODEPTH=${2:?} && shift 2 ;;
    --keep) KEEP=1 && shift ;;
    *) usage ;;
  esac
done
VOLUME_B=$(bytes "$VOLUME") WRITE_B=$(bytes "$WRITE") BS_B=$(bytes "$BS")
if [ "$BS_B" -lt 4096 ] || [ $((BS_B % 4096)) -ne 0 ]; then usage; fi
[ -x "$TP" ] || {
  echo "serve_rss: $TP is not executable (make build)" >&2
  exit 1
}
if ! fio --enghelp=nbd 2>/dev/null | grep '^uri' >/dev/null; then
  echo "serve_rss: needs fio with the nbd engine (make deps)" >&2
  exit 1
fi

PARENT=${TP_BENCH_DIR:-${TMPDIR:-/tmp}}
case "$(stat -f -c %T "$PARENT")" in
  tmpfs | ramfs)
    echo "serve_rss: $PARENT is a memory file system: set TP_BENCH_DIR to a directory on a disk" >&2
    exit 1
    ;;
esac
AVAIL_B=$(df -B1 --output=avail "$PARENT" | tail -n 1)
if [ "$AVAIL_B" -lt $((WRITE_B + (2 << 30))) ]; then
  echo "serve_rss: $PARENT has $(mib "$AVAIL_B") MiB free, needs $(mib $((WRITE_B + (2 << 30)))) MiB" >&2
  exit 1
fi

T=$(mktemp -d "$PARENT/tp-serve-rss.XXXXXX")
P=$T/pool
S=$T/nbd.sock
SRV_PID=
cleanup() {
  local rc=$?
  set +e
  if [ -n "$SRV_PID" ]; then
    kill -TERM "$SRV_PID" 2>/dev/null
    for _ in $(seq 600); do kill -0 "$SRV_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SRV_PID" 2>/dev/null
    wait "$SRV_PID" 2>/dev/null
  fi
  if [ "$KEEP" = 1 ]; then echo "serve_rss: kept $T"; else rm -rf "$T"; fi
  exit "$rc"
}
trap cleanup EXIT
fail() {
  echo "serve_rss: FAIL: $*" >&2
  if [ -s "$T/server.log" ]; then tail -n 20 "$T/server.log" | sed 's/^/  server: /' >&2; fi
  exit 1
}

# Every write may allocate a block of its own (64 KiB, or more when a write spans several):
# room for all of them, plus 10 % and 1 GiB so that the pool never fills up.
BLOCK_B=65536
PER_WRITE_B=$((((BS_B + BLOCK_B - 1) / BLOCK_B) * BLOCK_B))
NR_WRITES=$(((WRITE_B + BS_B - 1) / BS_B))
POOL_B=$((NR_WRITES * PER_WRITE_B * 11 / 10 + (1 << 30)))
"$TP" -p "$P" init --size "$POOL_B" >/dev/null
"$TP" -p "$P" create vol --size "$VOLUME_B" >/dev/null
echo "serve_rss: pool of $(mib "$POOL_B") MiB (sparse) in $T, volume of $VOLUME;" \
  "$WRITE random writes of $BS at QD $IODEPTH (fio nbd)"

# The server: `timeout` bounds it whatever happens to this script; it relays SIGTERM. The
# memory figures are the server's own (the child of timeout).
timeout -s KILL 7200 "$TP" -p "$P" serve --socket "$S" --default vol 2>"$T/server.log" &
SRV_PID=$!
for _ in $(seq 100); do
  grep '^serving ' "$T/server.log" >/dev/null && break
  kill -0 "$SRV_PID" 2>/dev/null || fail "server exited at start"
  sleep 0.1
done
grep '^serving ' "$T/server.log" >/dev/null || fail "server not ready after 10 s"
PID=$(pgrep -P "$SRV_PID") || fail "no server process under $SRV_PID"

# status FIELD: a line of /proc/PID/status, in kB.
status() { awk -v f="$1:" '$1 == f { print $2 }' "/proc/$PID/status"; }
kb_mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
echo "serve_rss: serving (pid $PID): VmRSS $(kb_mib "$(status VmRSS)") MiB"

start=$(date +%s)
rc=0
URI="nbd+unix:///?socket=$S" SIZE=$VOLUME_B IO_SIZE=$WRITE_B BS=$BS_B IODEPTH=$IODEPTH \
  timeout 7000 fio "$(dirname "$0")/fio/serve_rss.fio" >"$T/fio.log" 2>&1 || rc=$?
[ "$rc" -eq 0 ] || fail "fio exited with $rc: $(tail -n 20 "$T/fio.log")"
secs=$(($(date +%s) - start))
echo "serve_rss: fio done in ${secs} s:$(grep -m 1 'WRITE:' "$T/fio.log" | sed 's/^ *WRITE://')"

rss=$(status VmRSS) hwm=$(status VmHWM) anon=$(status RssAnon) file=$(status RssFile)
used=$("$TP" -p "$P" info --json | sed -n 's/.*"used_bytes": *\([0-9]*\).*/\1/p')
echo "serve_rss: after the writes and their FLUSH: VmRSS $(kb_mib "$rss") MiB" \
  "(anon $(kb_mib "$anon"), file $(kb_mib "$file")), VmHWM $(kb_mib "$hwm") MiB;" \
  "pool used: $(mib "${used:-0}") MiB"

kill -TERM "$SRV_PID"
stop=$(date +%s)
for _ in $(seq 3000); do
  kill -0 "$SRV_PID" 2>/dev/null || break
  sleep 0.1
done
kill -0 "$SRV_PID" 2>/dev/null && fail "server still running 300 s after SIGTERM"
rc=0
wait "$SRV_PID" || rc=$?
SRV_PID=
[ "$rc" -eq 0 ] || fail "server exited with $rc after SIGTERM"
echo "serve_rss: server stopped in $(($(date +%s) - stop)) s"
"$TP" -p "$P" check >"$T/check.out" 2>&1 || fail "thinpool check: $(cat "$T/check.out")"
echo "serve_rss: thinpool check: ok"

# The issue's figure is VmRSS after the writes; the peak (VmHWM) is judged the same way.
verdict() { if [ "$1" -lt $((LIMIT_MIB * 1024)) ]; then echo "under"; else echo "OVER"; fi; }
echo "RSS of serve, $VOLUME volume after $WRITE of random $BS writes:" \
  "VmRSS $(kb_mib "$rss") MiB ($(verdict "$rss") $LIMIT_MIB MiB)," \
  "VmHWM $(kb_mib "$hwm") MiB ($(verdict "$hwm") $LIMIT_MIB MiB)"
