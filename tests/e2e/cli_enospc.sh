#!/usr/bin/env bash
# cli_enospc: every ENOSPC of the command line names what was needed and what was
# available, in bytes and blocks, and the guarantee or reservation that needed it (issue 13;
# SEMANTICS.md "Errors"): create --provision, provision, snapshot --reserve, reserve,
# resize, rollback, write and update on a full pool, offline and through the daemon's
# control socket; with --json the error document has the same numbers; a refused command
# changes nothing; `plan` answers without changing anything.
# Usage: cli_enospc.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"

KiB=1024
# An amount as the messages print it: "64.00 KiB (1 block)", "0 B (0 blocks)".
AMOUNT='([0-9]+ B|[0-9]+\.[0-9]{2} [KMGTPE]iB) \([0-9]+ blocks?\)'
# enospc WHAT CMD...: CMD exits 1 with one line "out of space: ...: needs AMOUNT <WHAT>...,
# AMOUNT available"; with --json the error document holds the same numbers; nothing changes.
enospc() {
  local what=$1 rc=0 before
  shift
  before=$(tp list --json)
  "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "'$*' exited $rc, expected 1: $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "'$*': not one message line: $(cat "$T/err")"
  grep -qE "out of space: .*: needs $AMOUNT $what.*, $AMOUNT available" "$T/err" \
    || fail "'$*': the message lacks what was needed and available: $(cat "$T/err")"
  rc=0
  "$@" --json >"$T/out.json" 2>/dev/null || rc=$?
  [ "$rc" -eq 1 ] || fail "'$* --json' exited $rc"
  json 'e["code"] == "out of space" and e["needed_blocks"] > e["available_blocks"] and
    e["needed_bytes"] == e["needed_blocks"] * e["unit_bytes"] and
    e["available_bytes"] == e["available_blocks"] * e["unit_bytes"] and
    e["short_blocks"] == e["needed_blocks"] - e["available_blocks"] and e["exit_status"] == 1
    and e["for"] in ("guarantee", "reservation", "write")' <"$T/out.json" \
    || fail "'$* --json': $(cat "$T/out.json")"
  [ "$(tp list --json)" = "$before" ] || fail "'$*' changed the pool"
}
json() { python3 -c "import json,sys; j=json.load(sys.stdin); e=j.get('error', {}) if isinstance(j, dict) else {}; sys.exit(0 if ($1) else 1)"; }

# 64 blocks of 64 KiB. v: 1 MiB of data in 2 MiB, its first 512 KiB guaranteed; x: empty
# (no guarantee); g: provisioned; f fills the rest.
tp init --size 4M >/dev/null
head -c $((1 * MiB)) /dev/urandom >"$T/v.img"
truncate -s 2M "$T/v.img"
tp create v --size 2M >/dev/null
tp write v "$T/v.img" >/dev/null
tp provision v --length 512K >/dev/null
tp create x --size 512K >/dev/null
tp create g --size 512K --provision >/dev/null
# A delta for x: one block changes.
truncate -s 512K "$T/x.img"
cp "$T/x.img" "$T/x2.img"
head -c $((64 * KiB)) /dev/urandom | dd of="$T/x2.img" bs=64K seek=3 conv=notrunc status=none
"$TP" diff --files "$T/x.img" "$T/x2.img" --output "$T/x.delta" >/dev/null
tp create f --size 8M >/dev/null
head -c $((8 * MiB)) /dev/urandom >"$T/f.img"
tp write f "$T/f.img" >/dev/null 2>&1 && fail "8 MiB fit in a 4 MiB pool"
tp info --json | json 'j["unreserved_bytes"] == 0' || fail "the pool should be full"

run_all() {
  enospc "for a write to f outside its guarantee" tp write f "$T/f.img"
  grep -q "needs 64.00 KiB (1 block) for a write to f outside its guarantee, 0 B (0 blocks) available" \
    "$T/err" || fail "write: $(cat "$T/err")"
  enospc "more reserved for the guarantee of big" tp create big --size 1M --provision
  enospc "more reserved for the guarantee of v" tp provision v --offset 1M --length 64K
  # v's guarantee (8 mapped, exclusive blocks) would be shared with a snapshot: 8 more.
  enospc "more reserved for the guarantee of v" tp snapshot v s
  enospc "for the reservation of s" tp snapshot x s --reserve 64K
  grep -q "needs 64.00 KiB (1 block) for the reservation of s, 0 B (0 blocks) available" "$T/err" \
    || fail "snapshot --reserve: $(cat "$T/err")"
  enospc "for the reservation of v" tp reserve v 64K
  enospc "more reserved for the guarantee of g" tp resize g --size 576K
  # v's 8 guaranteed blocks would be shared with x: v reserves 8 more, the rollback frees
  # nothing (x is empty).
  enospc "more reserved for the guarantee of v \(shared with x\)" tp rollback x --to v
  grep -q "needs 512.00 KiB (8 blocks) more reserved for the guarantee of v (shared with x), 0 B (0 blocks) available" \
    "$T/err" || fail "rollback: $(cat "$T/err")"
  { tp rollback x --to v --json 2>/dev/null || true; } | json 'e["volume"] == "v" and e["shared_with"] == "x" and
    e["needed_bytes"] == 8 * 65536 and e["freed_bytes"] == 0 and e["for"] == "guarantee"' \
    || fail "rollback --json: $(tp rollback x --to v --json)"
  enospc "for the reservation of x.next" tp update x --delta "$T/x.delta"
  # plan: the same verdict, changing nothing (exit 1 and OP's own message for a refusal).
  rc=0
  tp plan rollback x --to v >"$T/plan" 2>"$T/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "plan of a refused rollback exited $rc"
  grep -q "^rollback does not fit: .*512.00 KiB (8 blocks) short" "$T/plan" || fail "plan: $(cat "$T/plan")"
  grep -q "thinpool: rollback: x: out of space" "$T/err" || fail "plan's message: $(cat "$T/err")"
  tp plan reserve v 0 --json | json 'j["fits"] and j["unreserved_after_bytes"] == 0' \
    || fail "plan reserve 0: $(tp plan reserve v 0 --json)"
  tp plan remove g | grep -q "^remove fits: " || fail "plan remove: $(tp plan remove g)"
  tp list --json | json 'sorted(v["name"] for v in j) == ["f", "g", "v", "x"]' \
    || fail "plan remove removed g"
}

run_all
ok "offline"

# Through the daemon's control socket: the same messages and documents.
start_server
[ -S "$P/control.sock" ] || fail "no control socket"
run_all
stop_server
ok "through the control socket"

check_pool "at the end"
echo "cli_enospc: ok"
