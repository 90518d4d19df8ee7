#!/usr/bin/env bash
# cli_update: delta files and A/B updates from the command line (SEMANTICS.md "A/B updates").
#   diff --files and diff of two volumes (the same delta either way); update staged and not,
#   into a base.next it creates or one reserved ahead of time; every failure (corrupt,
#   truncated, made for another base, larger than the reservation on a full pool) exits 1
#   with one message line, leaves no base.next and base as it was; check passes at the end.
# Usage: cli_update.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

names() { tp list --json | python3 -c "import json,sys; print(' '.join(sorted(v['name'] for v in json.load(sys.stdin))))"; }
fsha() { sha256sum <"$1" | cut -d' ' -f1; }
sha() {
  tp read "$1" "$T/sha.img" >/dev/null
  fsha "$T/sha.img"
}
# patch FILE OFFSET_KIB LENGTH_KIB: overwrites a range with random bytes.
patch() { head -c $(($3 * 1024)) /dev/urandom | dd of="$1" bs=1K seek="$2" conv=notrunc status=none; }
# zero FILE OFFSET_KIB LENGTH_KIB
zero() { head -c $(($3 * 1024)) /dev/zero | dd of="$1" bs=1K seek="$2" conv=notrunc status=none; }
# flip FILE OFFSET: inverts one byte.
flip() {
  local b
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "$(printf '\\%03o' $((b ^ 255)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}
# refused_update DELTA WHAT [SUBJECT]: update base fails (exit 1, one line
# "thinpool: update: SUBJECT: ..." naming WHAT; SUBJECT defaults to base), base.next is gone,
# base unchanged, the pool checks clean.
refused_update() {
  local before st=0 subject=${3:-base}
  before=$(sha base)
  tp update base --delta "$1" >"$T/out" 2>"$T/err" || st=$?
  [ "$st" -eq 1 ] || fail "update with $1 exited $st, expected 1: $(cat "$T/err")"
  [ "$(wc -l <"$T/err")" -eq 1 ] || fail "update with $1: not one message line: $(cat "$T/err")"
  grep -qF "thinpool: update: $subject: " "$T/err" || fail "update with $1: message: $(cat "$T/err")"
  grep -q -- "$2" "$T/err" || fail "update with $1: message lacks '$2': $(cat "$T/err")"
  [ ! -s "$T/out" ] || fail "update with $1 printed on stdout: $(cat "$T/out")"
  case " $(names) " in *" base.next "*) fail "base.next left behind after update with $1" ;; esac
  [ "$(sha base)" = "$before" ] || fail "base changed by the failed update with $1"
  tp check >"$T/check.txt" 2>&1 || fail "check after update with $1: $(cat "$T/check.txt")"
}
MiB=$((1024 * 1024))

# Images of the 16 MiB volume: 6 MiB of data, the rest zeros.
head -c $((6 * MiB)) /dev/urandom >"$T/v1.img"
truncate -s 16M "$T/v1.img"
cp "$T/v1.img" "$T/v2.img"
patch "$T/v2.img" 100 10     # inside one 64K block
patch "$T/v2.img" 1000 200   # across blocks
zero "$T/v2.img" 2048 128    # two whole blocks become zeros
patch "$T/v2.img" 8192 64    # into the zero part
cp "$T/v2.img" "$T/v3.img"
patch "$T/v3.img" 4096 300

tp init --size 64M >/dev/null
tp create base --size 16M --provision >/dev/null
tp write base "$T/v1.img" >/dev/null
[ "$(sha base)" = "$(fsha "$T/v1.img")" ] || fail "base does not hold v1"

# --- diff --files ------------------------------------------------------------------------
"$TP" diff --files "$T/v1.img" "$T/v2.img" --output "$T/v2.delta" --json >"$T/d.json"
# blocks 1, 15-18, 32-33 (zeros), 128: 8 entries of 64 KiB, 2 of them zero.
json 'j["entries"] == 8 and j["data_entries"] == 6 and j["zero_entries"] == 2' <"$T/d.json" \
  || fail "diff --json counts: $(cat "$T/d.json")"
json "j['bytes'] == $(stat -c %s "$T/v2.delta") and j['block_bytes'] == 65536" <"$T/d.json" \
  || fail "diff --json bytes: $(cat "$T/d.json")"
"$TP" diff --files "$T/v1.img" "$T/v2.img" --output "$T/v2-16k.delta" --block-size 16K --json |
  json 'j["block_bytes"] == 16384 and j["entries"] >= 8' || fail "diff --block-size 16K"
"$TP" diff --files "$T/v1.img" "$T/v2.img" --output "$T/x.delta" | grep -q "8 entries" \
  || fail "diff text output"
[ ! -e "$T/x.delta.tmp" ] || fail "diff left its temporary file"

# --- update --stage, then merge ---------------------------------------------------------
tp update base --delta "$T/v2.delta" --stage --json >"$T/u.json"
json 'j["staged"] and not j["merged"] and not j["used_existing_next"] and j["reserved_blocks"] > 0 and
  j["entries_applied"] == 8 and j["next"] == "base.next"' <"$T/u.json" \
  || fail "update --stage --json: $(cat "$T/u.json")"
[ "$(sha base)" = "$(fsha "$T/v1.img")" ] || fail "a staged update changed base"
[ "$(sha base.next)" = "$(fsha "$T/v2.img")" ] || fail "base.next does not hold v2"
tp merge base.next >/dev/null
[ "$(sha base)" = "$(fsha "$T/v2.img")" ] || fail "merging the staged update"
[ "$(names)" = "base" ] || fail "volumes after merge: $(names)"

# --- update (created base.next, merged) ---------------------------------------------------
"$TP" diff --files "$T/v2.img" "$T/v3.img" --output "$T/v3.delta" >/dev/null
tp snapshot base v2snap >/dev/null
tp update base --delta "$T/v3.delta" >"$T/u.txt"
grep -q "created base.next" "$T/u.txt" || fail "update text: $(cat "$T/u.txt")"
grep -q "merged base.next into base" "$T/u.txt" || fail "update text: $(cat "$T/u.txt")"
[ "$(sha base)" = "$(fsha "$T/v3.img")" ] || fail "base does not hold v3"
[ "$(names)" = "base v2snap" ] || fail "volumes after update: $(names)"

# --- diff of two volumes: the same delta as from the files; it applies ------------------
tp diff v2snap base --output "$T/vol.delta" --json >"$T/vd.json"
"$TP" diff --files "$T/v2.img" "$T/v3.img" --output "$T/v3b.delta" --json >"$T/fd.json"
cmp -s "$T/vol.delta" "$T/v3b.delta" || fail "volume diff differs from file diff: $(cat "$T/vd.json" "$T/fd.json")"
tp rollback base --to v2snap >/dev/null
[ "$(sha base)" = "$(fsha "$T/v2.img")" ] || fail "rollback to v2"
# base.next reserved ahead of time
tp snapshot base base.next --writable --reserve 2M >/dev/null
tp update base --delta "$T/vol.delta" --json >"$T/u.json"
json 'j["used_existing_next"] and j["merged"] and not j["staged"]' <"$T/u.json" \
  || fail "update with a reserved base.next: $(cat "$T/u.json")"
[ "$(sha base)" = "$(fsha "$T/v3.img")" ] || fail "base does not hold v3 after the volume delta"
tp remove v2snap >/dev/null
tp check >/dev/null || fail "check after the updates"

# --- failures ---------------------------------------------------------------------------
cp "$T/v3.img" "$T/v4.img"
patch "$T/v4.img" 512 256
"$TP" diff --files "$T/v3.img" "$T/v4.img" --output "$T/v4.delta" >/dev/null

cp "$T/v4.delta" "$T/corrupt.delta"
flip "$T/corrupt.delta" $(($(stat -c %s "$T/corrupt.delta") / 2))
refused_update "$T/corrupt.delta" "corrupt"

head -c $(($(stat -c %s "$T/v4.delta") - 100)) "$T/v4.delta" >"$T/truncated.delta"
refused_update "$T/truncated.delta" "truncated"
head -c 100 "$T/v4.delta" >"$T/short.delta"
refused_update "$T/short.delta" "truncated"

head -c $((16 * MiB)) /dev/urandom >"$T/other.img"
cp "$T/other.img" "$T/other2.img"
patch "$T/other2.img" 512 256
"$TP" diff --files "$T/other.img" "$T/other2.img" --output "$T/other.delta" >/dev/null
refused_update "$T/other.delta" "base checksum differs"
head -c $((8 * MiB)) "$T/other.img" >"$T/small.img"
"$TP" diff --files "$T/small.img" "$T/v4.img" --output "$T/small.delta" >/dev/null
refused_update "$T/small.delta" "size"
refused_update "$T/v2.delta" "base checksum differs"  # made for v1: base holds v3
refused_update "$T/nonexistent.delta" "No such file" "$T/nonexistent.delta"

# Larger than the reservation, on a full pool: base.next reserves one block, the delta
# writes 16 blocks where base is unmapped (zeros), so no copy base reserved is released.
cp "$T/v3.img" "$T/v5.img"
patch "$T/v5.img" $((12 * 1024)) 1024
"$TP" diff --files "$T/v3.img" "$T/v5.img" --output "$T/v5.delta" --json |
  json 'j["data_entries"] == 16' || fail "v5.delta should have 16 data entries"
tp snapshot base base.next --writable --reserve 64K >/dev/null
tp create filler --size 64M >/dev/null
head -c $((64 * MiB)) /dev/urandom >"$T/big.img"
st=0
tp write filler "$T/big.img" >/dev/null 2>&1 || st=$?
[ "$st" -eq 1 ] || fail "filling the pool: write exited $st"
tp info --json | json 'j["state"] == "full"' || fail "the pool should be full"
refused_update "$T/v5.delta" "out of space"
[ "$(names)" = "base filler" ] || fail "volumes after the failed update: $(names)"

# Room again: the same delta applies.
tp remove filler >/dev/null
tp update base --delta "$T/v5.delta" --json | json 'j["merged"] and not j["used_existing_next"]' \
  || fail "update after making room"
[ "$(sha base)" = "$(fsha "$T/v5.img")" ] || fail "base does not hold v5"

tp check >"$T/check.txt" || fail "check failed: $(cat "$T/check.txt")"
tp check --json | json 'j["ok"] and j["thin_check"] in ("passed", "not installed")' \
  || fail "check --json: $(tp check --json)"

echo "cli_update: ok"
