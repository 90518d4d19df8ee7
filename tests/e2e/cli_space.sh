#!/usr/bin/env bash
# cli_space: guaranteed space from the command line (SEMANTICS.md "The space invariant").
#   per-class guarantees and explicit reservations in info/list --json; a provisioned
#   volume keeps taking writes after another volume filled the pool (ENOSPC there); a
#   snapshot's --reserve budget is exactly what it may write on a full pool; operations
#   that would break the invariant fail up front and change nothing; merge works on a full
#   pool; merge and rollback contents checked by sha256 of `read`; check (and thin_check)
#   passes at the end.
# Usage: cli_space.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

# vol NAME: the `list --json` object of one volume, as a JSON document.
vol() { tp list --json | python3 -c "import json,sys; print(json.dumps([v for v in json.load(sys.stdin) if v['name'] == '$1'][0]))"; }
# refused STATUS WHAT CMD...: CMD must exit STATUS with one message line containing WHAT.
refused() {
  local want=$1 what=$2 got=0
  shift 2
  "$@" >"$T/out" 2>"$T/err" || got=$?
  [ "$got" -eq "$want" ] || fail "'$*' exited $got, expected $want: $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "'$*': not one message line: $(cat "$T/err")"
  grep -q -- "$what" "$T/err" || fail "'$*': message lacks '$what': $(cat "$T/err")"
}
sha() {
  tp read "$1" "$T/sha.img" >/dev/null
  sha256sum <"$T/sha.img" | cut -d' ' -f1
}
KiB=1024
MiB=$((1024 * KiB))

tp init --size 64M >/dev/null  # 1024 blocks of 64 KiB

# --- guarantees by class, explicit reservations ---------------------------------------
tp create base --size 8M --provision >/dev/null
vol base | json 'j["guaranteed_bytes"] == 8 * 2**20 and j["guaranteed_data_bytes"] == 8 * 2**20 and
  j["guaranteed_meta_bytes"] == 0 and j["mapped_bytes"] == 8 * 2**20 and j["reserved_bytes"] == 0' \
  || fail "create --provision: $(vol base)"
head -c $((8 * MiB)) /dev/urandom >"$T/a.img"
tp write base "$T/a.img" >/dev/null
A=$(sha256sum <"$T/a.img" | cut -d' ' -f1)
[ "$(sha base)" = "$A" ] || fail "base does not read back what was written"

tp create m --size 4M >/dev/null
tp provision m --offset 1M --length 1M --class meta >/dev/null
tp provision m --offset 3M --length 64K >/dev/null  # class data by default
vol m | json 'j["guaranteed_meta_bytes"] == 2**20 and j["guaranteed_data_bytes"] == 65536 and
  j["mapped_bytes"] == 2**20 + 65536' || fail "provision --class: $(vol m)"
tp info --json | json 'j["guaranteed_data_bytes"] == 8 * 2**20 + 65536 and
  j["guaranteed_meta_bytes"] == 2**20 and j["reserved_data_bytes"] == 0 and
  j["reserved_meta_bytes"] == 0 and j["explicit_reserved_bytes"] == 0 and
  j["state"] == "ok" and j["low_water_crossings"] == 0' || fail "info per class: $(tp info --json)"
tp info | grep -qE '^meta +1\.00 MiB' || fail "info text has no meta row: $(tp info)"
tp unprovision m --offset 1M --length 1M >/dev/null
vol m | json 'j["guaranteed_meta_bytes"] == 0 and j["guaranteed_data_bytes"] == 65536 and
  j["mapped_bytes"] == 2**20 + 65536' || fail "unprovision: the guarantee goes, data stays: $(vol m)"
tp unprovision m >/dev/null
vol m | json 'j["guaranteed_bytes"] == 0' || fail "unprovision (whole volume): $(vol m)"
tp reserve m 1M >/dev/null
vol m | json 'j["explicit_reserved_bytes"] == 2**20 and j["reserved_bytes"] == 2**20' \
  || fail "reserve: $(vol m)"
tp info --json | json 'j["explicit_reserved_bytes"] == 2**20 and j["reserved_bytes"] == 2**20' \
  || fail "info after reserve: $(tp info --json)"
tp reserve m 0 >/dev/null
tp info --json | json 'j["explicit_reserved_bytes"] == 0 and j["reserved_bytes"] == 0' \
  || fail "reserve 0 releases: $(tp info --json)"
refused 1 "out of space" tp reserve m 1G
refused 1 "out of space" tp create huge --size 1G --provision
tp list --json | json 'sorted(v["name"] for v in j) == ["base", "m"]' || fail "huge was created"
tp remove m >/dev/null

# --- snapshots with a write budget, then fill the pool ----------------------------------
# base's 128 guaranteed blocks become shared: base reserves a copy of each; s1 gets 1 MiB.
tp snapshot base s1 --writable --reserve 1M >/dev/null
vol base | json 'j["reserved_bytes"] == 8 * 2**20 and j["reserved_data_bytes"] == 8 * 2**20' \
  || fail "snapshot: origin reserves its shared blocks: $(vol base)"
vol s1 | json 'j["explicit_reserved_bytes"] == 2**20 and j["writable"]' || fail "s1: $(vol s1)"
tp info --json | json 'j["reserved_bytes"] == 9 * 2**20 and j["explicit_reserved_bytes"] == 2**20' \
  || fail "info after snapshot --reserve: $(tp info --json)"
# u is not guaranteed: its snapshot's budget is all that its writes may use on a full pool.
tp create u --size 4M >/dev/null
head -c $((2 * MiB)) /dev/urandom >"$T/u.img"
tp write u "$T/u.img" >/dev/null
tp snapshot u us --writable --reserve 1M >/dev/null
tp info --json | json 'j["reserved_bytes"] == 10 * 2**20 and j["explicit_reserved_bytes"] == 2 * 2**20' \
  || fail "info after the second snapshot --reserve: $(tp info --json)"

tp create filler --size 64M >/dev/null
head -c $((64 * MiB)) /dev/urandom >"$T/big.img"
refused 1 "out of space" tp write filler "$T/big.img"
tp info --json | json 'j["state"] == "full" and j["unreserved_bytes"] == 0 and
  j["reserved_bytes"] == 10 * 2**20 and isinstance(j["low_water_crossings"], int)' \
  || fail "the pool should be full: $(tp info --json)"
refused 1 "out of space" tp create more --size 1M --provision
refused 1 "out of space" tp snapshot base s2 --reserve 64K
refused 1 "out of space" tp snapshot u s3 --reserve 64K
refused 1 "out of space" tp reserve s1 2M
refused 1 "out of space" tp provision u
tp list --json | json 'sorted(v["name"] for v in j) == ["base", "filler", "s1", "u", "us"]' \
  || fail "a refused operation changed the pool: $(tp list --json)"
vol u | json 'j["guaranteed_bytes"] == 0' || fail "a refused provision left a guarantee: $(vol u)"

# us may write exactly its 1 MiB budget of new blocks, then ENOSPC.
head -c $((1 * MiB)) /dev/urandom >"$T/us.img"
tp write us "$T/us.img" >/dev/null || fail "us could not use its reservation"
vol us | json 'j["explicit_reserved_bytes"] == 0' || fail "us's budget not used up: $(vol us)"
{ cat "$T/us.img"; head -c $((64 * KiB)) /dev/urandom; } >"$T/usb.img"
refused 1 "out of space" tp write us "$T/usb.img"
tp write us "$T/us.img" >/dev/null  # (overwrites of its own blocks still work)
{ cat "$T/us.img"; tail -c +$((MiB + 1)) "$T/u.img"; head -c $((2 * MiB)) /dev/zero; } >"$T/us.expect"
[ "$(sha us)" = "$(sha256sum <"$T/us.expect" | cut -d' ' -f1)" ] || fail "us content"
[ "$(sha u)" = "$(sha256sum < <(cat "$T/u.img"; head -c $((2 * MiB)) /dev/zero) | cut -d' ' -f1)" ] \
  || fail "writing us changed its origin"

# s1: a block it copies from base is no longer shared, so base's reserved copy of it is
# released (exact sharing, SEMANTICS.md): beyond its own budget s1 may rewrite base's
# blocks on the full pool, one released copy at a time.
head -c $((2 * MiB)) /dev/urandom >"$T/s1.img"
tp write s1 "$T/s1.img" >/dev/null || fail "s1 could not rewrite blocks base holds copies for"
vol base | json 'j["reserved_bytes"] == 6 * 2**20' || fail "base's copies not released: $(vol base)"
{ cat "$T/s1.img"; tail -c +$((2 * MiB + 1)) "$T/a.img"; } >"$T/s1.expect"
S1=$(sha256sum <"$T/s1.expect" | cut -d' ' -f1)
[ "$(sha s1)" = "$S1" ] || fail "s1 does not hold s1.img over base's old content"
[ "$(sha base)" = "$A" ] || fail "writing s1 changed base"

# The guaranteed volume: the blocks of base still shared with s1 are copied from base's
# reservation, although another volume got ENOSPC (again: filler takes what s1 released).
refused 1 "out of space" tp write filler "$T/big.img"
tp info --json | json 'j["unreserved_bytes"] == 0' || fail "the pool should be full again"
head -c $((8 * MiB)) /dev/urandom >"$T/b.img"
tp write base "$T/b.img" >/dev/null || fail "a write into the provisioned base failed on a full pool"
[ "$(sha base)" = "$(sha256sum <"$T/b.img" | cut -d' ' -f1)" ] || fail "base does not hold b.img"
vol base | json 'j["reserved_bytes"] == 0 and j["exclusive_bytes"] == 8 * 2**20' \
  || fail "base after its copies: $(vol base)"
[ "$(sha s1)" = "$S1" ] || fail "writing base changed its snapshot"

# --- merge (on the full pool) and rollback ---------------------------------------------
tp info --json | json 'j["unreserved_bytes"] == 0' || fail "the pool should still be full"
tp merge s1 --json | json 'j["name"] == "base"' || fail "merge --json reports the origin"
[ "$(sha base)" = "$S1" ] || fail "after merge base does not hold s1's content"
tp list --json | json 'sorted(v["name"] for v in j) == ["base", "filler", "u", "us"]' \
  || fail "s1 not removed"
vol base | json 'j["guaranteed_bytes"] == 8 * 2**20' || fail "merge lost base's guarantee: $(vol base)"
refused 1 "not a snapshot" tp merge base

tp remove filler >/dev/null
tp remove u --recursive >/dev/null
tp snapshot base pre >/dev/null
head -c $((2 * MiB)) /dev/urandom >"$T/garbage.img"
tp write base "$T/garbage.img" >/dev/null
[ "$(sha base)" != "$S1" ] || fail "garbage did not change base"
tp rollback base --to pre --json | json 'j["name"] == "base"' || fail "rollback --json"
[ "$(sha base)" = "$S1" ] || fail "rollback did not restore base"
[ "$(sha pre)" = "$S1" ] || fail "rollback changed the snapshot"
tp list --json | json 'sorted(v["name"] for v in j) == ["base", "pre"]' || fail "rollback kept pre"
vol base | json 'j["reserved_bytes"] == 8 * 2**20' || fail "rollback: base reserves its shared blocks"
refused 1 "nosuch" tp rollback base --to nosuch
refused 1 "nosuch" tp merge nosuch
tp remove pre >/dev/null
vol base | json 'j["reserved_bytes"] == 0' || fail "remove pre releases base's copies: $(vol base)"

# --- the pool is consistent -------------------------------------------------------------
tp check >"$T/check.txt" || fail "check failed: $(cat "$T/check.txt")"
tp check --json | json 'j["ok"] and j["damage"] == [] and j["thin_check"] in ("passed", "not installed")' \
  || fail "check --json: $(tp check --json)"
if command -v thin_check >/dev/null; then
  tp check --json | json 'j["thin_check"] == "passed"' || fail "thin_check did not pass"
fi

echo "cli_space: ok"
