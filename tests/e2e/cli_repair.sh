#!/usr/bin/env bash
# cli_repair: a metadata leaf overwritten with dd makes `check` fail with status 3;
# `check --repair` rebuilds the metadata (the damaged volume is reported lost, the other
# one is intact byte for byte), thin_check passes, `check` passes, a second repair has
# nothing to do, and a repair is refused while `thinpool serve` runs.
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"

tp init --size 64M >/dev/null
tp create a --size 8M >/dev/null
tp create b --size 4M >/dev/null
head -c $((6 * MiB)) /dev/urandom >"$T/a.img"
head -c $((2 * MiB)) /dev/urandom >"$T/b.img"
truncate -s 8M "$T/a.img"
truncate -s 4M "$T/b.img"
tp write a "$T/a.img" >/dev/null
tp write b "$T/b.img" >/dev/null
tp check >/dev/null || fail "fresh pool does not check"

# b's mapping tree is one leaf (32 mappings): find it from the superblock's top-level tree.
dev_b=$(tp list --json | python3 -c 'import json,sys; print([v["dev_id"] for v in json.load(sys.stdin) if v["name"]=="b"][0])')
leaf=$(python3 - "$P/metadata" "$dev_b" <<'EOF'
import struct, sys
f = open(sys.argv[1], "rb"); dev = int(sys.argv[2])
def block(n): f.seek(n * 4096); return f.read(4096)
node = struct.unpack_from("<Q", block(0), 0x140)[0]
while True:
    b = block(node)
    flags, nr, mx = struct.unpack_from("<I", b, 4)[0], *struct.unpack_from("<II", b, 16)
    keys = struct.unpack_from("<%dQ" % nr, b, 32)
    vals = struct.unpack_from("<%dQ" % nr, b, 32 + 8 * mx)
    i = max(j for j in range(nr) if keys[j] <= dev)
    if flags == 2:
        assert keys[i] == dev
        root = vals[i]
        break
    node = vals[i]
rb = block(root)
assert struct.unpack_from("<I", rb, 4)[0] == 2, "b's tree should be a single leaf"
print(root)
EOF
)
[ -n "$leaf" ] || fail "could not find b's leaf"
dd if=/dev/urandom of="$P/metadata" bs=4096 seek="$leaf" count=1 conv=notrunc status=none

rc=0
tp check >"$T/check.out" 2>"$T/check.err" || rc=$?
[ "$rc" -eq 3 ] || fail "check of damaged metadata exited $rc, want 3: $(cat "$T/check.err")"
grep -q "check --repair" "$T/check.err" || fail "check does not point at --repair: $(cat "$T/check.err")"

# Refused while the daemon serves the pool (not start_server: serve may refuse this pool).
timeout -s TERM 120 "$TP" -p "$P" serve --socket "$S" 2>"$T/server.log" &
SRV_PID=$!
for _ in $(seq 100); do
  grep '^serving ' "$T/server.log" >/dev/null && break
  kill -0 "$SRV_PID" 2>/dev/null || break
  sleep 0.1
done
if kill -0 "$SRV_PID" 2>/dev/null; then
  rc=0
  tp check --repair >/dev/null 2>"$T/busy.err" || rc=$?
  [ "$rc" -eq 1 ] || fail "repair while served exited $rc, want 1"
  grep -q "serve" "$T/busy.err" || fail "repair while served: $(cat "$T/busy.err")"
  kill -TERM "$SRV_PID"
  wait "$SRV_PID" || true
else
  # b's tree is unreadable, so serve may refuse the pool: then there is no daemon to refuse.
  wait "$SRV_PID" || true
fi
SRV_PID=
ls "$P"/metadata.damaged-* >/dev/null 2>&1 && fail "a refused repair left a damaged copy"

tp --json check --repair >"$T/repair.json" || fail "check --repair failed: $(cat "$T/repair.json")"
json 'j["repaired"] and j["ok"] and j["volumes_lost"] == ["b"] and j["devices_recovered"] == 1 and j["mappings_recovered"] == 96 and j["mappings_lost"] == 32 and j["thin_check"] in ("passed", "not installed")' <"$T/repair.json" ||
  fail "repair report: $(cat "$T/repair.json")"
ls "$P"/metadata.damaged-* >/dev/null || fail "no copy of the damaged metadata"
if command -v thin_check >/dev/null; then
  thin_check "$P/metadata" >/dev/null 2>&1 || fail "thin_check fails after repair"
fi
tp check >/dev/null || fail "check fails after repair: $(tp check 2>&1)"
tp read a "$T/a.out" >/dev/null
cmp "$T/a.img" "$T/a.out" || fail "volume a changed"
tp list --json | json '[v["name"] for v in j] == ["a"]' || fail "list after repair: $(tp list)"
tp check --repair >"$T/again.out" || fail "second repair failed"
grep -q "nothing to repair" "$T/again.out" || fail "second repair: $(cat "$T/again.out")"
tp --json check --repair --force | json 'j["repaired"] and j["ok"] and j["mappings_lost"] == 0' ||
  fail "forced repair of a clean pool"
tp read a "$T/a.out2" >/dev/null
cmp "$T/a.img" "$T/a.out2" || fail "volume a changed by the forced repair"
ok "leaf damage fails check (3), repair keeps a, drops b, thin_check and check pass"
