#!/usr/bin/env bash
# nbd_control: while `thinpool serve` owns the pool, the CLI's commands go through the
# control socket (DIR/control.sock, owner-only) and behave as offline: list shows what is
# exported; snapshot works on an exported volume; remove/resize of an exported volume and
# merge/rollback into a volume exported writable are refused (exit 1) unless --force, and
# with --force the open connection sees the new content; relative paths are the caller's;
# `check` works while serving; `events` reports the pool filling (low, full) and draining.
# Usage: nbd_control.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

. "$(dirname "$0")/lib/nbd.sh"
[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"

EV_PID=
stop_events() {
  if [ -n "$EV_PID" ]; then
    kill -TERM "$EV_PID" 2>/dev/null || true
    wait "$EV_PID" 2>/dev/null || true
    EV_PID=
  fi
  return 0
}
CLEANUP=stop_events
# expect_rc N CMD...: runs CMD, fails unless it exits with N; its stderr is in $T/err.
expect_rc() {
  local want=$1 rc=0
  shift
  "$@" >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq "$want" ] || fail "'$*' exited $rc, want $want: $(cat "$T/err")"
}

# 64 blocks of 64 KiB (4 MiB); vol 1 MiB, fill 8 MiB (more than fits).
tp init --size 4M >/dev/null
tp create vol --size 1M >/dev/null
tp create spare --size 1M >/dev/null
tp create fill --size 8M >/dev/null
head -c $MiB /dev/urandom >"$T/img"
tp write vol "$T/img" >/dev/null

start_server
[ "$(stat -c %a "$P/control.sock")" = 600 ] || fail "control.sock is not 0600"
tp list --json | json 'all(v["exported"] == 0 for v in j)' || fail "nothing is open yet"

# The event stream, collected in the background for the rest of the test.
timeout 120 "$TP" -p "$P" --json events >"$T/events" 2>"$T/events.err" &
EV_PID=$!

# A client holds vol open (writable) while the CLI works on the pool; the python script
# runs the CLI itself at the points where the connection must be open.
SOCK=$S TPBIN=$TP POOL=$P DIR=$T timeout 240 "$PY" - <<'EOF' || fail "control script"
import json, os, subprocess, nbd

S, TP, P, D = os.environ["SOCK"], os.environ["TPBIN"], os.environ["POOL"], os.environ["DIR"]
def tp(*args, cwd=None):
    r = subprocess.run([TP, "-p", P, *args], capture_output=True, text=True, cwd=cwd, timeout=60)
    return r.returncode, r.stdout, r.stderr
def ok(*args, **kw):
    rc, out, err = tp(*args, **kw)
    assert rc == 0, "%s: rc %d: %s" % (args, rc, err)
    return out
def refused(*args):
    rc, out, err = tp(*args)
    assert rc == 1, "%s: want exit 1, got %d: %s%s" % (args, rc, out, err)
    assert "exported" in err, "%s: %s" % (args, err)

img = open(os.path.join(D, "img"), "rb").read()
h = nbd.NBD()
h.connect_uri("nbd+unix:///vol?socket=%s" % S)
assert h.pread(len(img), 0) == img
vols = {v["name"]: v for v in json.loads(ok("--json", "list"))}
assert vols["vol"]["exported"] == 1 and vols["spare"]["exported"] == 0, vols

# A snapshot of an exported volume holds what was flushed before it.
h.pwrite(b"A" * 65536, 0)
h.flush()
ok("snapshot", "vol", "pre")
h.pwrite(b"B" * 65536, 0)
h.flush()
# Refused while exported (the pool is unchanged), whether or not the client wrote.
refused("remove", "vol")
refused("resize", "vol", "--size", "2M")
refused("rollback", "vol", "--to", "pre")
ok("snapshot", "vol", "vol.next", "--writable")
refused("merge", "vol.next")
names = {v["name"] for v in json.loads(ok("--json", "list"))}
assert names == {"vol", "spare", "fill", "pre", "vol.next"}, names
ok("remove", "vol.next")
# Volumes nobody has open are not affected.
ok("resize", "spare", "--size", "2M")
ok("snapshot", "spare", "spare.snap")
ok("rollback", "spare", "--to", "spare.snap")
ok("remove", "spare.snap")

# --force: the open connection sees the snapshot's content at its next request.
ok("rollback", "vol", "--to", "pre", "--force")
assert h.pread(65536, 0) == b"A" * 65536, "rollback --force not visible to the client"
assert h.pread(65536, 65536) == img[65536:131072]
h.pwrite(b"C" * 65536, 65536)
h.flush()
assert h.pread(65536, 65536) == b"C" * 65536

# Relative paths are the caller's directory, not the daemon's.
rc, out, err = tp("read", "vol", "out.img", cwd=D)
assert rc == 0, err
got = open(os.path.join(D, "out.img"), "rb").read()
assert got[:65536] == b"A" * 65536 and got[65536:131072] == b"C" * 65536, "read via daemon"
ok("check")
h.shutdown()

# Closed now: merge without --force.
vols = {v["name"]: v for v in json.loads(ok("--json", "list"))}
assert vols["vol"]["exported"] == 0, vols
ok("snapshot", "vol", "n2", "--writable")
ok("merge", "n2")
EOF

# Fill the pool through NBD until ENOSPC (low, then full), then free it (ok again).
SOCK=$S timeout 120 "$PY" - <<'EOF' || fail "fill script"
import errno, os, nbd
h = nbd.NBD()
h.connect_uri("nbd+unix:///fill?socket=%s" % os.environ["SOCK"])
blk = b"\x5a" * 65536
try:
    for i in range(128):
        h.pwrite(blk, i * 65536)
    raise AssertionError("8 MiB fit in a 4 MiB pool")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, e
h.flush()
h.shutdown()
EOF
tp info --json | json 'j["state"] == "full"' || fail "pool not full: $(tp info)"
expect_rc 0 tp remove fill
tp info --json | json 'j["state"] == "ok"' || fail "pool not ok after remove: $(tp info)"

# The event stream saw low, full and ok, in that order.
for _ in $(seq 50); do
  grep -q '"ok"' "$T/events" && break
  sleep 0.1
done
python3 - "$T/events" <<'EOF' || fail "events: $(cat "$T/events" "$T/events.err")"
import json, sys
states = [json.loads(l)["state"] for l in open(sys.argv[1]) if l.strip()]
want = ["low", "full", "ok"]
it = iter(states)
assert all(w in it for w in want), states
EOF

# Commands that cannot go through the daemon say so; serve refuses a served pool.
expect_rc 1 "$TP" -p "$P" serve --socket "$T/other.sock"

stop_server
stop_events
[ ! -e "$P/control.sock" ] || fail "control.sock left behind after a clean stop"
tp read vol "$T/final.img" >/dev/null
cmp -n 65536 "$T/final.img" <(head -c 65536 /dev/zero | tr '\0' A) ||
  fail "vol lost the rolled-back content"
tp check >/dev/null || fail "pool check: $(tp check 2>&1)"
thin_check "$P/metadata" >/dev/null 2>&1 || fail "thin_check"
ok "CLI through the control socket, export guards, --force, events"
