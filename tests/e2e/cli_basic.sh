#!/usr/bin/env bash
# cli_basic: the offline commands end to end on a fresh pool.
#   init, create, write an image with a zero MiB (stays unmapped), read it back (sparse, same
#   bytes), snapshot, change the origin, delta, remove, check (and thin_check), info --json.
# Usage: cli_basic.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"


tp init --size 64M >/dev/null
tp create vol --size 16M >/dev/null
# The pool holds every volume's bytes: owner-only, whatever the umask.
[ "$(stat -c %a "$P")" = 700 ] || fail "pool directory is $(stat -c %a "$P"), want 700"
for f in data metadata catalog lock; do
  [ "$(stat -c %a "$P/$f")" = 600 ] || fail "$f is $(stat -c %a "$P/$f"), want 600"
done

# 4 MiB: random, a zero MiB, then 2 MiB random.
{ head -c $MiB /dev/urandom; head -c $MiB /dev/zero; head -c $((2 * MiB)) /dev/urandom; } \
  >"$T/in.img"
tp write vol "$T/in.img" >/dev/null
tp read vol "$T/out.img" >/dev/null
[ "$(stat -c %s "$T/out.img")" -eq $((16 * MiB)) ] || fail "read output is not the volume size"
cmp -n $((4 * MiB)) "$T/in.img" "$T/out.img" || fail "read back differs from what was written"
cmp -i $((4 * MiB)):0 -n $((12 * MiB)) "$T/out.img" /dev/zero || fail "tail of volume not zero"
# Sparse: the unmapped 12 MiB tail and the zero MiB are holes (allow file system slack).
[ $(($(stat -c %b "$T/out.img") * 512)) -lt $((8 * MiB)) ] || fail "read output is not sparse"

tp list --json | json '[v["mapped_bytes"] for v in j if v["name"] == "vol"] == [3 * 2**20]' \
  || fail "mapped_bytes should be 3 MiB (the zero MiB is not mapped): $(tp list --json)"

# Snapshot, then change the first MiB of the origin (write copies FILE to offset 0 and
# leaves the rest of the volume alone; every block it writes is a new block, even one with
# the same bytes, so the new image is only the first MiB).
tp snapshot vol snap >/dev/null
head -c $MiB /dev/urandom >"$T/in2.img"
tp write vol "$T/in2.img" >/dev/null
tp read vol "$T/vol2.img" >/dev/null
cmp -n $MiB "$T/in2.img" "$T/vol2.img" || fail "second write not read back"
cmp -i $MiB:$MiB -n $((3 * MiB)) "$T/in.img" "$T/vol2.img" || fail "second write changed the rest"
tp delta snap vol --json >"$T/delta.json"
json 'len(j) > 0 and all(r["kind"] in ("changed", "added", "removed") for r in j)' \
  <"$T/delta.json" || fail "delta is empty or malformed: $(cat "$T/delta.json")"
json 'sum(r["length"] for r in j) == 2**20 and j[0]["offset"] == 0' <"$T/delta.json" \
  || fail "delta should be exactly the first MiB: $(cat "$T/delta.json")"
tp delta snap vol | grep -qE '^0 [0-9]+ (changed|added|removed)$' || fail "delta text format"
tp read snap "$T/snap.img" >/dev/null
cmp -n $((4 * MiB)) "$T/in.img" "$T/snap.img" || fail "snapshot changed with its origin"

tp remove snap >/dev/null
tp list --json | json '[v["name"] for v in j] == ["vol"]' || fail "snap not removed"

tp check >"$T/check.txt" || fail "check failed: $(cat "$T/check.txt")"
tp check --json | json 'j["ok"] and j["damage"] == [] and j["thin_check"] in ("passed", "not installed")' \
  || fail "check --json: $(tp check --json)"
if command -v thin_check >/dev/null; then
  tp check --json | json 'j["thin_check"] == "passed"' || fail "thin_check did not pass"
fi

tp info --json | json 'j["volumes"] == 1 and j["size_bytes"] == 64 * 2**20 and
  j["used_bytes"] == 3 * 2**20 and j["block_bytes"] == 65536 and j["state"] == "ok" and
  j["free_bytes"] + j["used_bytes"] == j["size_bytes"]' || fail "info --json: $(tp info --json)"
tp info | grep -q '^size .*64.00 MiB' || fail "info text"
tp list | grep -qE '^NAME +ID +SIZE' || fail "list header"

echo "cli_basic: ok"
