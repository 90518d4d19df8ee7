#!/usr/bin/env bash
# nbd_fio: data integrity of `thinpool serve` under load and across crashes.
#  1. fio's nbd engine, 4 writer jobs (one connection each: multi-conn) doing random writes
#     of 4K..128K with a FLUSH every 16 writes and verify=crc32c, while 2 more jobs TRIM a
#     pre-filled region; then that region must read back as zeros (verify_pattern=0) and be
#     unmapped (nbdinfo --map). Any verify error, I/O error, or no FLUSH/TRIM sent fails.
#  2. kill -9 rounds (3; 20 with TP_LONG=1): lib/nbd_crash.py writes stamped 4K slots over 4
#     connections (writes, FUA writes, TRIMs, FLUSHes), the server is killed with SIGKILL at a
#     random moment, thin_check and `thinpool check` must pass on the crashed pool, the
#     server restarts, and every write covered by a completed FLUSH (or FUA) must read back;
#     a slot may hold only its last covered write or a later one, never older data or garbage.
#     `thinpool check` also runs against the restarted, serving daemon.
# Usage: nbd_fio.sh PATH/TO/thinpool   (TP_SEED=N: replay the random choices)
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"

command -v fio >/dev/null 2>&1 || skip "fio not installed"
fio --enghelp=nbd 2>&1 | grep_q '^uri' || skip "this fio has no nbd engine"
[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"

SEED=${TP_SEED:-$RANDOM}
RANDOM=$SEED
ROUNDS=3
[ "${TP_LONG:-0}" = 1 ] && ROUNDS=20
echo "$NAME: seed $SEED, $ROUNDS crash rounds"

tp init --size 256M >/dev/null
tp create fio --size 64M >/dev/null
tp create crash --size 32M >/dev/null
start_server

# --- 1. fio -------------------------------------------------------------------------------------
cat >"$T/job.fio" <<EOF
[global]
ioengine=nbd
uri=$(uri fio)
iodepth=8
randseed=$SEED

; 8 MiB of data at 48M for the trim jobs to discard.
[fill]
rw=write
bs=1m
offset=48m
size=8m

; 4 writers, 12 MiB each at 0, 12M, 24M, 36M; verified after writing.
[write]
stonewall
rw=randwrite
bsrange=4k-128k
blockalign=4k
size=12m
offset_increment=12m
numjobs=4
fsync=16
verify=crc32c
verify_fatal=1
verify_state_save=0

; At the same time, 2 more connections discard the fill, whole 64K blocks at random.
[trim]
rw=randtrim
bs=64k
iodepth=4
offset=48m
size=4m
offset_increment=4m
numjobs=2

; The discarded region reads as zeros.
[zeros]
stonewall
rw=read
bs=256k
offset=48m
size=8m
verify=pattern
verify_pattern=0
verify_fatal=1
EOF
rc=0
# libnbd's debug log shows every command fio sends: count the FLUSHes and TRIMs.
(cd "$T" && LIBNBD_DEBUG=1 timeout 300 fio --output-format=json --output="$T/fio.json" \
  "$T/job.fio" 2>"$T/fio.log") || rc=$?
[ "$rc" -eq 0 ] || fail "fio exited with $rc: $(grep -v 'libnbd: debug' "$T/fio.log" | tail -n 20)"
grep -o 'nbd_aio_[a-z_]*: enter' "$T/fio.log" | sort | uniq -c >"$T/calls.txt"
rm -f "$T/fio.log"
"$PY" - "$T/fio.json" <<'EOF' || fail "fio results"
import json, sys
text = open(sys.argv[1]).read()
# With LIBNBD_DEBUG the nbd engine logs into the same output, ahead of the JSON document.
j = json.loads(text[text.index('{\n  "fio version"'):])
jobs = {}
for job in j["jobs"]:
    assert job["error"] == 0, "%s: error %s" % (job["jobname"], job["error"])
    jobs.setdefault(job["jobname"], []).append(job)
assert len(jobs["write"]) == 4 and len(jobs["trim"]) == 2, {k: len(v) for k, v in jobs.items()}
for w in jobs["write"]:
    # Every byte written was read back and checked.
    assert w["write"]["io_bytes"] == 12 << 20, w["write"]["io_bytes"]
    assert w["read"]["io_bytes"] == 12 << 20, w["read"]["io_bytes"]
for t in jobs["trim"]:
    assert t["trim"]["io_bytes"] == 4 << 20, t["trim"]["io_bytes"]
assert jobs["zeros"][0]["read"]["io_bytes"] == 8 << 20
EOF
flushes=$(awk '/nbd_aio_flush:/ {print $1}' "$T/calls.txt")
trims=$(awk '/nbd_aio_trim:/ {print $1}' "$T/calls.txt")
[ "${flushes:-0}" -ge 4 ] || fail "fio sent ${flushes:-no} FLUSHes: $(cat "$T/calls.txt")"
[ "${trims:-0}" -eq 128 ] || fail "fio sent ${trims:-no} TRIMs, want 128"
# The 48 MiB the writers covered is mapped; the trimmed 8 MiB is unmapped again (hole, zero)
# like the 8 MiB never written after it.
timeout 60 nbdinfo --map "$(uri fio)" | awk '{print $1, $2, $3}' >"$T/map.txt"
printf '%s\n' "0 $((48 * MiB)) 0" "$((48 * MiB)) $((16 * MiB)) 3" >"$T/map.want"
diff -u "$T/map.want" "$T/map.txt" >&2 || fail "nbdinfo --map after the writes and trims"
ok "fio: 4x12 MiB random writes verified (crc32c), $flushes FLUSHes, $trims TRIMs read as zeros"
stop_server
check_pool "after fio"

# --- 2. kill -9 rounds ----------------------------------------------------------------------------
CRASH=$LIB/nbd_crash.py
start_server
for round in $(seq "$ROUNDS"); do
  : >"$T/writer.out"
  timeout 120 "$PY" "$CRASH" write "$S" crash "$T/crash.json" $((SEED * 100 + round)) \
    >"$T/writer.out" 2>&1 &
  WRITER=$!
  for _ in $(seq 300); do
    grep_q '^flushed' "$T/writer.out" && break
    kill -0 "$WRITER" 2>/dev/null || break
    sleep 0.1
  done
  grep_q '^flushed' "$T/writer.out" || fail "round $round: writer did not start: $(cat "$T/writer.out")"
  # A random moment 0.1..1.6 s after the first completed FLUSH.
  ms=$((100 + RANDOM % 1500))
  sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
  kill9_server
  rc=0
  wait "$WRITER" || rc=$?
  [ "$rc" -eq 0 ] || fail "round $round: writer exited with $rc: $(cat "$T/writer.out")"
  # The crashed pool, before anything opens it: thin_check on its metadata, then our check.
  check_pool "after kill -9 (round $round)"
  start_server
  "$PY" "$CRASH" verify "$S" crash "$T/crash.json" >"$T/verify.out" 2>&1 \
    || fail "round $round: $(sed -n '/^wrote/p' "$T/writer.out"); $(cat "$T/verify.out")"
  # `thinpool check` against the serving daemon (a snapshot of its committed metadata).
  tp check >"$T/check.out" 2>&1 || fail "check while serving (round $round): $(cat "$T/check.out")"
  echo "$NAME: round $round: $(sed -n 's/^wrote //p' "$T/writer.out"); $(cat "$T/verify.out")"
done
# The checker itself: a planted stale slot and a garbage slot must fail it.
"$PY" "$CRASH" selftest "$S" crash "$T/crash.json" >"$T/verify.out" 2>&1 \
  || fail "checker self-test: $(cat "$T/verify.out")"
stop_server
check_pool "at the end"
ok "$ROUNDS kill -9 rounds: every flushed write read back, pool checks after each"
