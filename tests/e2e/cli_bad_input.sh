#!/usr/bin/env bash
# cli_bad_input: bad input never crashes thinpool, never changes the pool, gets the exit
# status of CLI.md (1 failed, 2 usage, 3 damaged / not a pool) and exactly one line on
# stderr starting "thinpool: ", with nothing on stdout (with --json: one JSON error document
# with the same exit status). After every failure the pool still checks clean and a volume
# reads back with the same sha256.
#
# Oversized sizes: a size above 8 EiB is rejected by the size parser and one above the
# engine's 1 EiB volume limit (thin::kMaxVolumeBytes) by the CLI, both before the pool is
# opened: exit 2. Only semantic refusals from the engine (duplicate name, unknown volume,
# has snapshots, file larger than the volume, read-only snapshot, pool locked) exit 1.
# Usage: cli_bad_input.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

LOCKER=
cleanup() {
  if [ -n "$LOCKER" ]; then kill "$LOCKER" 2>/dev/null || true; wait "$LOCKER" 2>/dev/null || true; fi
  rm -rf "$T"
}
trap cleanup EXIT

# expect STATUS CMD...: runs CMD, checks its exit status, one stderr line, empty stdout (with
# --json: the error document).
expect() {
  local want=$1 got=0
  shift
  "$@" >"$T/out" 2>"$T/err" || got=$?
  [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want: $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "'$*' printed more or less than one line: $(cat "$T/err")"
  grep -q '^thinpool: ' "$T/err" || fail "'$*' message does not start with 'thinpool: '"
  if [[ " $* " == *" --json "* ]]; then
    python3 -c 'import json,sys; e=json.load(open(sys.argv[1]))["error"]; sys.exit(0 if e["exit_status"] == int(sys.argv[2]) and e["message"] else 1)' \
      "$T/out" "$want" || fail "'$*': stdout is not one JSON error document: $(cat "$T/out")"
  else
    [ ! -s "$T/out" ] || fail "'$*' printed on stdout on error: $(cat "$T/out")"
  fi
}

# intact: the pool checks clean and vol reads back the same bytes.
intact() {
  tp check >"$T/check.out" 2>&1 || fail "check after '$1' failed: $(cat "$T/check.out")"
  tp read vol "$T/r.img" >/dev/null || fail "read after '$1' failed"
  [ "$(sha256sum <"$T/r.img")" = "$BASE" ] || fail "volume content changed after '$1'"
}

tp init --size 64M >/dev/null
tp create vol --size 16M >/dev/null
head -c $((2 * MiB)) /dev/urandom >"$T/in.img"
tp write vol "$T/in.img" >/dev/null
tp snapshot vol ro >/dev/null
tp read vol "$T/r.img" >/dev/null
BASE=$(sha256sum <"$T/r.img")

# --- usage errors (2): nothing reaches the pool ------------------------------------------
for s in abc "" -1 1.5 1K2 0x10 "1 K" 99999999999E 16E 9223372036854775809; do
  expect 2 tp create x --size "$s"
done
intact "bad sizes"
expect 2 tp create x --size 2E          # above the 1 EiB volume limit (checked by the CLI)
expect 2 tp resize vol --size 16E       # above 8 EiB (the parser's limit)
expect 2 tp --json resize vol --size 1.5G1
expect 2 tp create 'bad/name' --size 1M
expect 2 tp create -- -dash --size 1M
expect 2 tp create "$(printf 'a%.0s' {1..129})" --size 1M
expect 2 tp frobnicate
expect 2 tp create
expect 2 tp create x
expect 2 tp info --bogus
expect 2 tp init --size 64M --block-size 4K
expect 2 "$TP" info                     # no pool given
intact "usage errors"
tp list --json | python3 -c 'import json,sys; n=[v["name"] for v in json.load(sys.stdin)]; sys.exit(0 if n == ["ro", "vol"] else 1)' \
  || fail "a usage error created a volume: $(tp list)"

# --- operation failures (1) --------------------------------------------------------------
expect 1 tp create vol --size 1M        # duplicate
expect 1 tp --json create vol --size 1M
expect 1 tp snapshot vol ro             # duplicate snapshot name
expect 1 tp remove nosuch
expect 1 tp resize nosuch --size 1M
expect 1 tp snapshot nosuch s
expect 1 tp delta vol nosuch
expect 1 tp read nosuch "$T/x.img"
[ ! -e "$T/x.img" ] || fail "read of an unknown volume created its output file"
expect 1 tp write nosuch "$T/in.img"
expect 1 tp write vol "$T/no-such-file"
head -c $((17 * MiB)) /dev/zero >"$T/big.img"
expect 1 tp write vol "$T/big.img"      # larger than the volume
expect 1 tp write ro "$T/in.img"        # read-only snapshot
expect 1 tp init --size 64M             # a pool is already there
intact "operation failures"

# remove refuses a volume with snapshots unless --recursive.
tp create tmpv --size 1M >/dev/null
tp snapshot tmpv tmps >/dev/null
tp snapshot tmps tmps2 >/dev/null
expect 1 tp remove tmpv
intact "remove without --recursive"
tp remove tmpv --recursive >/dev/null || fail "remove --recursive failed"
tp list --json | python3 -c 'import json,sys; n=[v["name"] for v in json.load(sys.stdin)]; sys.exit(0 if n == ["ro", "vol"] else 1)' \
  || fail "remove --recursive left: $(tp list)"
intact "remove --recursive"

# --- not a pool, damaged pool (3) ---------------------------------------------------------
mkdir "$T/empty"
expect 3 "$TP" -p "$T/empty" info
expect 3 "$TP" -p "$T/empty" list
expect 3 "$TP" -p "$T/nowhere" info
[ -z "$(ls -A "$T/empty")" ] || fail "opening a non-pool created files in it"

cp -r --sparse=always "$P" "$T/copy"
truncate -s 4096 "$T/copy/metadata"
expect 3 "$TP" -p "$T/copy" info
expect 3 "$TP" -p "$T/copy" list
expect 3 "$TP" -p "$T/copy" check
expect 3 "$TP" -p "$T/copy" --json read vol "$T/x.img"
intact "damaged copy"

# A catalog of the first record layout (TPCATLG1: crc32c of the payload only, the header
# not covered) is refused with a clear message, never read as empty, and left unchanged.
cp -r --sparse=always "$P" "$T/old"
python3 - "$T/old/catalog" <<'PY'
import struct, sys
def crc32c(b):
    c = 0xFFFFFFFF
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    return c ^ 0xFFFFFFFF
b = bytearray(open(sys.argv[1], "rb").read())
pos = 0
while pos + 32 <= len(b):
    assert b[pos:pos + 8] == b"TPCATLG2"
    n = struct.unpack_from("<I", b, pos + 24)[0]
    # As catalog.h documents the current layout: header bytes 0..27, then the payload.
    assert struct.unpack_from("<I", b, pos + 28)[0] == crc32c(b[pos:pos + 28] + b[pos + 32:pos + 32 + n])
    b[pos + 7] = ord("1")
    struct.pack_into("<I", b, pos + 28, crc32c(b[pos + 32:pos + 32 + n]))
    pos += 32 + n
assert pos == len(b)
open(sys.argv[1], "wb").write(b)
PY
OLD_SUM=$(sha256sum <"$T/old/catalog")
expect 3 "$TP" -p "$T/old" info
grep -q 'catalog written by an older thinpool format' "$T/err" \
  || fail "old catalog layout message is not clear: $(cat "$T/err")"
expect 3 "$TP" -p "$T/old" check
expect 3 "$TP" -p "$T/old" list
[ "$(sha256sum <"$T/old/catalog")" = "$OLD_SUM" ] || fail "the old-layout catalog was changed"
intact "old catalog layout"

# --- another process holds the pool's lock (1) -------------------------------------------
mkfifo "$T/ready"
python3 -c '
import fcntl, sys, time
f = open(sys.argv[1], "a")
fcntl.flock(f, fcntl.LOCK_EX)
open(sys.argv[2], "w").write("locked\n")
time.sleep(60)
' "$P/lock" "$T/ready" &
LOCKER=$!
read -r _ <"$T/ready"
expect 1 tp info
grep -q 'in use' "$T/err" || fail "lock message is not clear: $(cat "$T/err")"
expect 1 tp create y --size 1M
kill "$LOCKER"
wait "$LOCKER" 2>/dev/null || true
LOCKER=
intact "locked pool"

echo "cli_bad_input: ok"
