#!/usr/bin/env bash
# nbd_clients: `thinpool serve` against real NBD clients, on a Unix socket.
#   qemu-img convert an image in and compare it back; nbdinfo --map shows exactly the mapped
#   ranges; nbdcopy both ways; qemu-io at odd offsets (write, read -v, discard, write -z);
#   libnbd (nbdsh's Python bindings) drives every option and command and checks the error
#   replies (EINVAL past the end and for bad flags, EPERM on a read-only snapshot);
#   thinpool:delta:SNAP via nbdinfo --map; a clean stop (SIGTERM) leaves a pool that checks.
# A client that is not installed is a SKIP line for its part, not a failure.
# Usage: nbd_clients.sh PATH/TO/thinpool
#   THINPOOL_SERVE_CMD="prog args": run "prog args -p POOL serve --socket S" instead of
#   "thinpool -p POOL serve --socket S".
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"
K64=65536
# A client that is not installed skips its own part only.
skip() { echo "$NAME: SKIP: $*"; }
have() { command -v "$1" >/dev/null 2>&1; }
# Every client runs under a time limit: a server bug fails the test instead of hanging it.
run() { timeout 120 "$@"; }

tp init --size 256M >/dev/null
tp create vol --size 64M >/dev/null
tp create copy --size 64M >/dev/null

# The image: 1 MiB of data at 0, 512 KiB at 5 MiB, 64 KiB at 63 MiB; the rest zeros.
truncate -s $((64 * MiB)) "$T/img.raw"
head -c $MiB /dev/urandom | dd of="$T/img.raw" conv=notrunc status=none
head -c $((512 * 1024)) /dev/urandom | dd of="$T/img.raw" bs=$K64 seek=80 conv=notrunc status=none
head -c $K64 /dev/urandom | dd of="$T/img.raw" bs=$K64 seek=1008 conv=notrunc status=none

start_server
grep -q "^serving 2 exports on $S" "$T/server.log" || fail "ready line: $(cat "$T/server.log")"

# --- qemu-img -------------------------------------------------------------------------------
if have qemu-img; then
  run qemu-img convert -n -f raw -O raw "$T/img.raw" "$(uri vol)" || fail "qemu-img convert"
  run qemu-img compare -f raw -F raw "$T/img.raw" "$(uri vol)" >/dev/null \
    || fail "qemu-img compare: the export differs from the image"
  ok "qemu-img convert + compare"
else
  skip "qemu-img not installed"
  tp write vol "$T/img.raw" >/dev/null 2>&1 || true
fi

# --- nbdinfo --map: exactly the mapped ranges ------------------------------------------------
if have nbdinfo; then
  run nbdinfo --map "$(uri vol)" | awk '{print $1, $2, $3}' >"$T/map.txt"
  printf '%s\n' "0 $MiB 0" "$MiB $((4 * MiB)) 3" "$((5 * MiB)) $((512 * 1024)) 0" \
    "$((5 * MiB + 512 * 1024)) $((57 * MiB + 512 * 1024)) 3" "$((63 * MiB)) $K64 0" \
    "$((63 * MiB + K64)) $((MiB - K64)) 3" >"$T/map.want"
  diff -u "$T/map.want" "$T/map.txt" || fail "nbdinfo --map is not the mapped ranges"
  run nbdinfo --json "$(uri vol)" >"$T/info.json"
  grep -q '"can_multi_conn": true' "$T/info.json" || fail "multi-conn not advertised"
  grep -q '"block_size_preferred": 65536' "$T/info.json" || fail "preferred block size"
  ok "nbdinfo --map shows exactly the mapped ranges"
  if have qemu-img; then
    # qemu-img map: the same ranges as data (mapped) and zero holes (unmapped).
    run qemu-img map --output=json -f raw "$(uri vol)" >"$T/qmap.json" || fail "qemu-img map"
    python3 - "$T/qmap.json" "$T/map.want" <<'PYEOF' || fail "qemu-img map: $(cat "$T/qmap.json")"
import json, sys
got = []
for e in json.load(open(sys.argv[1])):
    kind = 0 if e["data"] else 3
    if got and got[-1][2] == kind and got[-1][0] + got[-1][1] == e["start"]:
        got[-1][1] += e["length"]
    else:
        got.append([e["start"], e["length"], kind])
want = [[int(x) for x in l.split()] for l in open(sys.argv[2])]
assert got == want, (got, want)
assert all(e["zero"] for e in json.load(open(sys.argv[1])) if not e["data"])
PYEOF
    ok "qemu-img map shows the same ranges"
  fi
else
  skip "nbdinfo not installed"
fi

# --- nbdcopy both ways -------------------------------------------------------------------------
if have nbdcopy; then
  run nbdcopy "$(uri vol)" "$T/out.raw" || fail "nbdcopy export -> file"
  cmp "$T/img.raw" "$T/out.raw" || fail "nbdcopy export -> file: content differs"
  run nbdcopy "$T/img.raw" "$(uri copy)" || fail "nbdcopy file -> export"
  run nbdcopy "$(uri copy)" "$T/out2.raw" || fail "nbdcopy export -> file (copy)"
  cmp "$T/img.raw" "$T/out2.raw" || fail "nbdcopy file -> export: content differs"
  ok "nbdcopy both directions"
else
  skip "nbdcopy not installed"
fi

# --- qemu-io at odd offsets --------------------------------------------------------------------
if have qemu-io; then
  qio() { run qemu-io -f raw "$(uri copy)" "$@"; }
  O=$((2 * MiB + 12345))  # inside the image's zero gap, at an odd offset
  qio -c "write -P 0xab $O 777" >/dev/null || fail "qemu-io write"
  qio -c "read -P 0xab $O 777" | grep_q 'read 777/777' || fail "qemu-io read pattern"
  qio -c "read -v $((O - 1)) 3" | grep_q "^$(printf '%08x' $((O - 1))):  00 ab ab" \
    || fail "qemu-io read -v edges"
  qio -c "discard $((3 * MiB)) $((2 * K64))" >/dev/null || fail "qemu-io discard"
  qio -c "read -P 0 $((3 * MiB)) $((2 * K64))" | grep_q 'read ' || fail "discarded range not zero"
  qio -c "write -z $((O + 100)) 301" >/dev/null || fail "qemu-io write -z"
  qio -c "read -P 0 $((O + 100)) 301" | grep_q 'read 301/301' || fail "write -z range not zero"
  qio -c "read -P 0xab $O 100" | grep_q 'read 100/100' || fail "write -z touched bytes before"
  qio -c "read -P 0xab $((O + 401)) 376" | grep_q 'read 376/376' \
    || fail "write -z touched bytes after"
  ok "qemu-io write/read -v/discard/write -z at odd offsets"
else
  skip "qemu-io not installed"
fi

stop_server
tp check >/dev/null || fail "pool check after the first serve: $(tp check 2>&1)"

# --- snapshot, a change, the delta context, read-only snapshot ---------------------------------
tp snapshot vol snap >/dev/null
# This time on TCP too (port 0: the server picks one and prints it in the ready line).
start_server --listen 127.0.0.1:0
[ -n "$PORT" ] || fail "no TCP port in the ready line: $(head -1 "$T/server.log")"
if have nbdinfo; then
  run nbdinfo --size "nbd://127.0.0.1:$PORT/snap" | grep_q -x $((64 * MiB)) || fail "TCP export"
  ok "TCP listener on 127.0.0.1:$PORT"
fi
if have qemu-io; then
  run qemu-io -f raw "$(uri vol)" -c "write -P 0x11 $((8 * MiB)) $K64" >/dev/null \
    || fail "write after snapshot"
fi
if have nbdinfo && have qemu-io; then
  run nbdinfo --map=thinpool:delta:snap "$(uri vol)" | awk '{print $1, $2, $3}' >"$T/delta.txt"
  printf '%s\n' "0 $((8 * MiB)) 0" "$((8 * MiB)) $K64 1" "$((8 * MiB + K64)) $((56 * MiB - K64)) 0" \
    >"$T/delta.want"
  diff -u "$T/delta.want" "$T/delta.txt" || fail "thinpool:delta:snap is not the changed range"
  run nbdinfo --list --json "$(uri "")" >"$T/list.json"
  grep -q '"thinpool:delta:snap"' "$T/list.json" || fail "LIST_META_CONTEXT lacks the delta"
  ok "nbdinfo --map=thinpool:delta:snap"
fi

# --- libnbd: options, commands, error replies ---------------------------------------------------
if [ -n "$PY" ]; then
  SOCK=$S SIZE=$((64 * MiB)) run "$PY" - <<'EOF' || fail "libnbd script"
import errno, os, nbd

sock, size = os.environ["SOCK"], int(os.environ["SIZE"])
uri = lambda name: "nbd+unix:///%s?socket=%s" % (name, sock)

def expect_errno(want, f, *a, **k):
    try:
        f(*a, **k)
    except nbd.Error as e:
        assert e.errnum == want, "%s: errno %s, want %s (%s)" % (f.__name__, e.errnum, want, e.string)
        return
    raise AssertionError("%s succeeded, want errno %d" % (f.__name__, want))

# Option haggling: LIST, INFO, unknown export, LIST_META_CONTEXT, SET_META_CONTEXT + GO.
h = nbd.NBD()
h.set_opt_mode(True)
h.set_full_info(True)
h.connect_uri(uri(""))
names = []
h.opt_list(lambda name, desc: names.append((name, desc)))
assert sorted(n for n, _ in names) == ["copy", "snap", "vol"], names
assert "read-only" in dict(names)["snap"], names
h.set_export_name("snap")
h.opt_info()
assert h.get_size() == size and h.is_read_only() and h.get_canonical_export_name() == "snap"
assert "snapshot of vol" in h.get_export_description()
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1  # any byte range is served
assert h.get_block_size(nbd.SIZE_MAXIMUM) == 32 << 20
h.set_export_name("no-such-volume")
try:
    h.opt_info()
    raise AssertionError("INFO of an unknown export succeeded")
except nbd.Error:
    pass
h.set_export_name("vol")
ctx = []
h.opt_list_meta_context(lambda c: ctx.append(c))
assert "base:allocation" in ctx and "thinpool:delta:snap" in ctx, ctx
h.add_meta_context("base:allocation")
h.add_meta_context("thinpool:delta:snap")
h.opt_go()
assert h.can_meta_context("base:allocation") and h.can_meta_context("thinpool:delta:snap")
assert not h.is_read_only() and h.can_flush() and h.can_fua() and h.can_trim()
assert h.can_zero() and h.can_cache() and h.can_df() and h.can_multi_conn()
assert not h.is_rotational() and not h.can_fast_zero()

# Commands. The server advertises a minimum block size of 1: libnbd's own alignment check
# lets unaligned requests through.
b = 2 << 20  # inside the image's zero gap
h.pwrite(b"\x5a" * 1000, b + 3 * 65536 + 7, nbd.CMD_FLAG_FUA)
assert h.pread(1000, b + 3 * 65536 + 7) == b"\x5a" * 1000
chunks = []
h.pread_structured(70000, b + 3 * 65536 - 1000,
                   lambda buf, off, st, err: chunks.append((off, st)), nbd.CMD_FLAG_DF)
assert chunks == [(b + 3 * 65536 - 1000, nbd.READ_DATA)], chunks  # DF: one data chunk
chunks.clear()
h.pread_structured(3 * 65536, b + 2 * 65536, lambda buf, off, st, err: chunks.append((off, st)))
assert chunks == [(b + 2 * 65536, nbd.READ_HOLE), (b + 3 * 65536, nbd.READ_DATA),
                  (b + 4 * 65536, nbd.READ_HOLE)], chunks  # unmapped ranges are holes
h.flush()
h.cache(65536, 0)
h.trim(3 * 65536, b + 65536)
assert h.pread(65536, b + 3 * 65536) == bytes(65536)
h.pwrite(b"\x77" * 65536, 40 << 20)
h.zero(65536, 40 << 20, nbd.CMD_FLAG_NO_HOLE)  # provision: stays allocated, reads zeros
assert h.pread(65536, 40 << 20) == bytes(65536)
seen = {}
def extent(ctxname, offset, entries, err):
    seen.setdefault(ctxname, []).append((offset, list(entries)))
h.block_status(2 * 65536, 40 << 20, extent)
alloc = seen["base:allocation"][0][1]
assert alloc[:2] == [65536, 0], alloc  # the provisioned block: allocated data
seen.clear()
h.block_status(10 << 20, 0, extent, nbd.CMD_FLAG_REQ_ONE)
assert len(seen["base:allocation"][0][1]) == 2, seen  # one (length, flags) pair
h.zero(65536, 40 << 20)  # without NO_HOLE: unmapped again
seen.clear()
h.block_status(65536, 40 << 20, extent)
assert seen["base:allocation"][0][1] == [65536, 3], seen

# Error replies: the client's own checks off, so the server has to refuse.
h.set_strict_mode(0)
expect_errno(errno.EINVAL, h.pread, 1024, size - 512)
expect_errno(errno.EINVAL, h.pwrite, b"x" * 1024, size - 512)
expect_errno(errno.EINVAL, h.pread, 512, 0, nbd.CMD_FLAG_REQ_ONE)
expect_errno(errno.EINVAL, h.zero, 512, 0, nbd.CMD_FLAG_FAST_ZERO)
assert h.pread(512, size - 512) == bytes(512)  # the connection is still good
h.shutdown()

# A read-only snapshot refuses writes, trims and zeroes with EPERM.
r = nbd.NBD()
r.connect_uri(uri("snap"))
assert r.is_read_only()
r.set_strict_mode(0)
expect_errno(errno.EPERM, r.pwrite, b"x" * 512, 0)
expect_errno(errno.EPERM, r.trim, 65536, 0)
expect_errno(errno.EPERM, r.zero, 65536, 0)
assert len(r.pread(4096, 0)) == 4096
r.shutdown()

# NBD_OPT_ABORT ends a handshake cleanly.
a = nbd.NBD()
a.set_opt_mode(True)
a.connect_uri(uri("vol"))
a.opt_abort()
EOF
  ok "libnbd: options, commands, EINVAL/EPERM replies"
else
  skip "libnbd python bindings (python3-libnbd, nbdsh) not installed"
fi

# The server is still healthy after all that.
if have nbdinfo; then
  run nbdinfo --size "$(uri vol)" | grep_q -x $((64 * MiB)) || fail "server unhealthy at the end"
fi
stop_server
tp check >/dev/null || fail "pool check after the second serve: $(tp check 2>&1)"
grep -qi 'error' "$T/server.log" && fail "server logged errors"
ok "clean stop; pool checks"
