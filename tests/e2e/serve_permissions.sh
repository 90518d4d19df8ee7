#!/usr/bin/env bash
# serve_permissions: only the pool's owner may drive a serving daemon. Run as root, with the
# clients as `nobody` (setpriv), in a temp dir that nobody may traverse (0711), so every
# refusal below comes from the sockets themselves:
#   - control.sock and nbd.sock are mode 0600, owned by the daemon's user: nobody's connect
#     is refused by the mode (EACCES), for the CLI, `thinpool events` and an NBD client;
#   - with control.sock chmod'ed 0666 the connect succeeds and the daemon's SO_PEERCRED
#     check refuses nobody: the CLI says "not the pool's owner", a raw {"op":"status"}
#     gets an error line and nothing about the daemon (no pid, no pool path);
#   - nothing nobody tried changed the pool; root still drives it; the pool checks clean.
# Skipped (not failed) when not root or without nobody/setpriv.
# Usage: serve_permissions.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"

if [ "$(id -u)" -ne 0 ] || ! id nobody >/dev/null 2>&1 || ! command -v setpriv >/dev/null; then
  echo "$NAME: SKIP: needs root, a 'nobody' user and setpriv"
  exit 0
fi

. "$(dirname "$0")/lib/nbd.sh"
NOBODY_UID=$(id -u nobody)
NOBODY_GID=$(id -g nobody)
# The system python: a pyenv shim under root's home would not run as nobody.
PY=/usr/bin/python3
[ -x "$PY" ] || PY=python3
as_nobody() { timeout 60 setpriv --reuid="$NOBODY_UID" --regid="$NOBODY_GID" --clear-groups "$@"; }

# The binary may live under a directory nobody cannot enter (a build tree in root's home):
# nobody runs a copy.
chmod 0711 "$T"
mkdir -m 0755 "$T/bin"
cp "$TP" "$T/bin/thinpool"
chmod 0755 "$T/bin/thinpool"
as_nobody "$T/bin/thinpool" --help >/dev/null 2>&1 || fail "nobody cannot run the thinpool copy"

tp init --size 64M >/dev/null
tp create vol --size 4M >/dev/null
chmod 0711 "$P"

# The umask must not matter: a permissive one would leave sockets world-writable.
S=$P/nbd.sock  # the default place
old_umask=$(umask)
umask 0000
start_server
umask "$old_umask"

for s in control.sock nbd.sock; do
  [ -S "$P/$s" ] || fail "$P/$s is not a socket"
  [ "$(stat -c %a "$P/$s")" = 600 ] || fail "$s has mode $(stat -c %a "$P/$s"), expected 600"
  [ "$(stat -c %u "$P/$s")" = 0 ] || fail "$s is not owned by the daemon's user"
done
ok "control.sock and nbd.sock are 0600 and the daemon's, even under umask 0000"

# volumes: the names in the pool, one per line.
volumes() { tp list --json | python3 -c 'import json,sys; print("\n".join(sorted(v["name"] for v in json.load(sys.stdin))))'; }
BEFORE=$(volumes)
[ "$BEFORE" = vol ] || fail "unexpected volumes before: $BEFORE"

# --- the mode refuses ----------------------------------------------------------------------
rc=0
as_nobody "$T/bin/thinpool" -p "$P" create evil --size 1M >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" -ne 0 ] || fail "nobody created a volume through a 0600 control socket"
grep -qi 'permission denied' "$T/err" || fail "refusal does not say permission denied: $(cat "$T/err")"
rc=0
as_nobody "$T/bin/thinpool" -p "$P" events --count 1 --timeout 5 >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" -ne 0 ] || fail "nobody followed the event stream"
if command -v nbdinfo >/dev/null; then
  as_nobody nbdinfo "nbd+unix:///vol?socket=$P/nbd.sock" >"$T/out" 2>&1 \
    && fail "nobody read an export through a 0600 NBD socket"
  grep -qi 'permission denied' "$T/out" || fail "NBD refusal is not EACCES: $(cat "$T/out")"
fi
ok "nobody is refused by the sockets' mode (CLI, events, NBD)"

# --- the peer uid check refuses, even with the mode opened up -------------------------------------
chmod 0666 "$P/control.sock"
# Several times: the daemon may hang up before the client has sent its request, and the
# client must still show the daemon's reason, not EPIPE (a bug this test found).
for i in 1 2 3 4 5 6 7 8; do
  rc=0
  as_nobody "$T/bin/thinpool" -p "$P" create evil --size 1M >"$T/out" 2>"$T/err" || rc=$?
  [ "$rc" -eq 1 ] || fail "nobody's create #$i through a 0666 socket exited $rc, expected 1: $(cat "$T/err")"
  grep -q "not the pool's owner" "$T/err" || fail "refusal #$i does not name the owner check: $(cat "$T/err")"
done
rc=0
as_nobody "$T/bin/thinpool" -p "$P" events --count 1 --timeout 5 >"$T/out" 2>"$T/err" || rc=$?
[ "$rc" -ne 0 ] || fail "nobody followed the event stream through a 0666 socket"
as_nobody "$PY" - "$P/control.sock" >"$T/raw.out" 2>&1 <<'EOF' || fail "raw status client: $(cat "$T/raw.out")"
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(30)
s.connect(sys.argv[1])
try:
    s.sendall(b'{"op":"status"}\n{"op":"run","argv":["remove","vol"]}\n')
except OSError:
    pass  # the daemon may hang up first; its answer is already on the way
data = b""
while True:
    try:
        chunk = s.recv(65536)
    except ConnectionResetError:
        break  # the daemon closed with our request unread: the reset follows its answer
    if not chunk:
        break
    data += chunk
lines = data.decode().splitlines()
assert len(lines) == 1, lines
reply = json.loads(lines[0])
assert set(reply) == {"error"}, reply
assert "owner" in reply["error"], reply
print(reply["error"])
EOF
chmod 0600 "$P/control.sock"
ok "with control.sock 0666 the SO_PEERCRED check refuses nobody and tells nothing"

# --- nothing changed; the owner still drives the daemon -------------------------------------------
[ "$(volumes)" = "$BEFORE" ] || fail "volumes changed by nobody: $(volumes)"
tp create mine --size 1M >/dev/null || fail "root cannot create through the daemon"
tp remove mine >/dev/null || fail "root cannot remove through the daemon"
stop_server
[ ! -e "$P/control.sock" ] || fail "control.sock left behind"
tp check >"$T/check.out" 2>&1 || fail "pool check: $(cat "$T/check.out")"
ok "the pool is unchanged by nobody, root still drives it, the pool checks clean"
