#!/usr/bin/env bash
# Runs every fuzz target of a TP_FUZZ build for a while on a scratch copy of its checked-in
# seed corpus (fuzz/corpus/<target>; the copy keeps the repo's corpus unchanged), and prints
# one line per target:
#   fuzz <target>: N execs, 0 crashes
# A crash, leak, timeout or out-of-memory leaves its input in BUILD/fuzz-artifacts/ and the
# log next to it; the script then exits 1 (after running the other targets).
#
# Targets run FUZZ_JOBS at a time (default: one per CPU).
#
# Usage: scripts/fuzz.sh BUILD SECONDS [TARGET...]
set -uo pipefail

build=${1:?usage: fuzz.sh BUILD SECONDS [TARGET...]}
secs=${2:?usage: fuzz.sh BUILD SECONDS [TARGET...]}
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  targets=(pdata_fuzz_block pdata_fuzz_metadata catalog_fuzz thin_fuzz_delta nbd_fuzz_request
           nbd_fuzz_handshake daemon_fuzz_control)
fi

artifacts="$build/fuzz-artifacts"
mkdir -p "$artifacts"
artifacts=$(cd "$artifacts" && pwd)
scratch=$(mktemp -d "${TMPDIR:-/tmp}/tp-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
# The targets' pools and files go to memory when it is there (commits fsync).
if [ -d /dev/shm ] && [ -w /dev/shm ]; then
  export TMPDIR=$(mktemp -d /dev/shm/tp-fuzz.XXXXXX)
  trap 'rm -rf "$scratch" "$TMPDIR"' EXIT
fi

# One target: its result line(s) to $scratch/$t.out; exit status 1 when it found something.
run_one() {
  local t=$1 bin="$build/fuzz/$1" corpus log rc execs found
  if [ ! -x "$bin" ]; then
    echo "fuzz $t: not built ($bin)"
    return 1
  fi
  corpus="$scratch/$t"
  mkdir -p "$corpus"
  if [ -d "$repo/fuzz/corpus/$t" ]; then cp -r "$repo/fuzz/corpus/$t/." "$corpus/"; fi
  log="$artifacts/$t.log"
  # -timeout: one input taking longer is a hang; -rss_limit_mb: runaway allocation.
  ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=0 UBSAN_OPTIONS=print_stacktrace=1 \
    timeout $((secs * 3 + 120)) "$bin" -max_total_time="$secs" -timeout=30 -rss_limit_mb=2560 \
    -print_final_stats=1 -artifact_prefix="$artifacts/$t-" "$corpus" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  execs=${execs:-0}
  if [ $rc -eq 0 ]; then
    echo "fuzz $t: $execs execs, 0 crashes"
    return 0
  fi
  found=$(ls -t "$artifacts/$t-"* 2>/dev/null | grep -v '\.log$' | head -1)
  echo "fuzz $t: $execs execs, 1 crash (exit $rc; input ${found:-none}; log $log)"
  grep -m5 -E 'ERROR|SUMMARY|fuzz property|runtime error' "$log" | sed 's/^/    /'
  return 1
}

# FUZZ_JOBS targets at a time (default: one per CPU); results in the order given.
jobs=${FUZZ_JOBS:-$(nproc)}
running=0
for t in "${targets[@]}"; do
  if [ "$running" -ge "$jobs" ]; then
    wait -n
    running=$((running - 1))
  fi
  (run_one "$t" >"$scratch/$t.out" 2>&1; echo $? >"$scratch/$t.rc") &
  running=$((running + 1))
done
wait
failed=0
for t in "${targets[@]}"; do
  cat "$scratch/$t.out"
  [ "$(cat "$scratch/$t.rc" 2>/dev/null)" = 0 ] || failed=1
done
exit $failed
