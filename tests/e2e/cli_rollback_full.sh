#!/usr/bin/env bash
# cli_rollback_full: rollback protection works on a full pool (issue 13). A 512 MiB pool,
# `base` 64 MiB provisioned and written, `snapshot base base.next --writable --reserve 16M`,
# `snapshot base pre`, another volume fills the pool, `write base` (guaranteed overwrites)
# works, then `rollback base --to pre` frees exactly what it needs reserved: `plan` says it
# fits with 0 bytes to spare, the rollback succeeds, base reads back as pre, and the pool
# checks (thin_check too).
# Usage: cli_rollback_full.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

sha() {
  tp read "$1" "$T/sha.img" >/dev/null
  sha256sum <"$T/sha.img" | cut -d' ' -f1
}

tp init --size 512M >/dev/null
tp create base --size 64M --provision >/dev/null
head -c $((64 * MiB)) /dev/urandom >"$T/base.img"
tp write base "$T/base.img" >/dev/null
tp snapshot base base.next --writable --reserve 16M >/dev/null
tp snapshot base pre >/dev/null
PRE=$(sha pre)

# Another volume fills the pool: its write ends with ENOSPC, which says what it needed.
tp create other --size 512M >/dev/null
head -c $((512 * MiB)) < <(yes thinpool) >"$T/fill.img"
rc=0
tp write other "$T/fill.img" >/dev/null 2>"$T/err" || rc=$?
[ "$rc" -eq 1 ] || fail "filling the pool: exit $rc: $(cat "$T/err")"
grep -q 'needs 64.00 KiB (1 block) for a write to other outside its guarantee, 0 B (0 blocks) available' \
  "$T/err" || fail "the ENOSPC of the fill lacks its numbers: $(cat "$T/err")"
tp info --json | json 'j["unreserved_bytes"] == 0 and j["state"] == "full"' \
  || fail "the pool should be full: $(tp info --json)"

# A guaranteed overwrite of 52 MiB works on the full pool.
head -c $((52 * MiB)) /dev/urandom >"$T/change.img"
tp write base "$T/change.img" >/dev/null || fail "write base on the full pool"
[ "$(sha base)" != "$PRE" ] || fail "the write did not change base"

# The rollback frees base's 52 MiB of own blocks and needs exactly 52 MiB more reserved.
tp plan rollback base --to pre >"$T/plan" || fail "plan says the rollback does not fit: $(cat "$T/plan")"
grep -q '^rollback fits: .*0 B (0 blocks) to spare' "$T/plan" || fail "plan: $(cat "$T/plan")"
tp plan rollback base --to pre --json | json 'j["fits"] and j["spare_bytes"] == 0 and
  j["needed_bytes"] == 52 * 2**20 and j["freed_bytes"] == 52 * 2**20 and
  j["unreserved_bytes"] == 0 and j["volume"] == "base" and j["shared_with"] == "pre"' \
  || fail "plan --json: $(tp plan rollback base --to pre --json)"
[ "$(sha base)" != "$PRE" ] || fail "plan changed base"

tp rollback base --to pre >/dev/null || fail "rollback on the full pool"
[ "$(sha base)" = "$PRE" ] || fail "base does not read back as pre"
[ "$(sha pre)" = "$PRE" ] || fail "the rollback changed pre"
tp info --json | json 'j["unreserved_bytes"] == 0' || fail "after the rollback: $(tp info --json)"

tp check >"$T/check" || fail "check: $(cat "$T/check")"
if command -v thin_check >/dev/null; then
  thin_check "$P/metadata" >"$T/check" 2>&1 || fail "thin_check: $(cat "$T/check")"
fi
echo "cli_rollback_full: ok"
