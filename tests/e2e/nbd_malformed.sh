#!/usr/bin/env bash
# nbd_malformed: hostile and broken NBD clients against `thinpool serve` (lib/nbd_malformed.py,
# raw Unix sockets): every byte-offset truncation of a whole session; unknown client flags and
# options; invalid, oversized and endless options; bad option and request magic; oversized
# reads and writes (EOVERFLOW; a write too large to skip disconnects); requests past the end
# or wrapping 2^64, zero lengths, wrong and unknown flags, unknown commands (EINVAL); writes to
# a read-only snapshot (EPERM); a client that stops reading its replies; clients stalled in
# the handshake for the whole run. Both simple and structured replies. After every case a
# separate good client (libnbd, and nbdinfo after each group) still works, the volume the bad
# requests aimed at is unchanged, the server stops cleanly and the pool checks.
# (tests/nbd/*_test.cc check the same rules on the codec and session in-process; this runs
# them against the real binary and socket.)
# Usage: nbd_malformed.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"

[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"
command -v nbdinfo >/dev/null 2>&1 || skip "nbdinfo not installed"

tp init --size 128M >/dev/null
tp create vol --size 8M >/dev/null
tp create scratch --size 8M >/dev/null
head -c $((8 * MiB)) /dev/urandom >"$T/vol.img"
tp write vol "$T/vol.img" >/dev/null
tp snapshot vol snap >/dev/null

start_server
timeout 300 "$PY" "$LIB/nbd_malformed.py" "$S" >"$T/out.txt" 2>&1 \
  || fail "$(cat "$T/out.txt")"
sed "s/^/$NAME: ok: /" "$T/out.txt"
kill -0 "$SRV_PID" 2>/dev/null || fail "the server died"
stop_server
check_pool "after the malformed clients"
# Bad clients are warnings; an error line would mean the pool itself had trouble.
if grep -i '\berror\b' "$T/server.log" | grep -v -i 'warn' >"$T/errors.txt"; then
  fail "server logged errors: $(head -n 5 "$T/errors.txt")"
fi
# Offline too: vol holds exactly what was written before the server started.
tp read vol "$T/vol.back" >/dev/null || fail "thinpool read vol"
cmp "$T/vol.img" "$T/vol.back" || fail "vol changed"
ok "server clean after every malformed client"
