#!/usr/bin/env bash
# nbd_enospc: a full pool reaches the NBD client as ENOSPC, at once and without hanging,
# while a provisioned (guaranteed) volume still takes writes; after a TRIM frees blocks,
# writes work again; the server stops cleanly and the pool checks.
# Usage: nbd_enospc.sh PATH/TO/thinpool   (THINPOOL_SERVE_CMD: as in nbd_clients.sh)
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"
[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"

# 32 blocks of 64 KiB; 4 of them guaranteed to g; vol is 16 MiB, far more than fits.
tp init --size 2M >/dev/null
tp create g --size 256K --provision >/dev/null
tp create vol --size 16M >/dev/null

start_server

SOCK=$S timeout 120 "$PY" - <<'EOF' || fail "libnbd script"
import errno, os, nbd

uri = lambda name: "nbd+unix:///%s?socket=%s" % (name, os.environ["SOCK"])
vol = nbd.NBD()
vol.connect_uri(uri("vol"))
blk = b"\xa5" * 65536
written = 0
try:
    for i in range(64):  # 4 MiB: twice the pool
        vol.pwrite(blk, i * 65536)
        written += 1
    raise AssertionError("a 4 MiB write into a 2 MiB pool succeeded")
except nbd.Error as e:
    assert e.errnum == errno.ENOSPC, "want ENOSPC, got %s (%s)" % (e.errnum, e.string)
assert 0 < written <= 28, written
assert vol.pread(65536, 0) == blk  # what was written before the pool filled reads back
# Guaranteed space: g's writes cannot fail for lack of space, even now.
g = nbd.NBD()
g.connect_uri(uri("g"))
g.pwrite(b"\x3c" * (256 << 10), 0)
g.flush()
assert g.pread(256 << 10, 0) == b"\x3c" * (256 << 10)
# TRIM gives blocks back: writes work again.
vol.trim(4 * 65536, 0)
vol.flush()
vol.pwrite(blk, 40 * 65536)
vol.flush()
vol.shutdown()
g.shutdown()
EOF

stop_server
check_pool "after the run"
ok "full pool is ENOSPC, guaranteed volume still writable, trim frees"
