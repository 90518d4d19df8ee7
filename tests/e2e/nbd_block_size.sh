#!/usr/bin/env bash
# nbd_block_size: the server serves any byte range and says so (issue 13, CLI.md "NBD"):
# nbdinfo shows a minimum block size of 1; nbdsh, with libnbd's default strict mode (which
# refuses requests that break the advertised minimum), reads and writes unaligned ranges,
# inside one block and across blocks, and they read back; the pool checks afterwards.
# Usage: nbd_block_size.sh PATH/TO/thinpool   (THINPOOL_SERVE_CMD: as in nbd_clients.sh)
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"
command -v nbdinfo >/dev/null || skip "nbdinfo (libnbd) not installed"
command -v nbdsh >/dev/null || skip "nbdsh (libnbd) not installed"
[ -n "$PY" ] || skip "libnbd python bindings (python3-libnbd) not installed"

tp init --size 16M >/dev/null
tp create vol --size 1M >/dev/null
start_server

nbdinfo --json "$(uri vol)" >"$T/info.json" || fail "nbdinfo"
json 'j["exports"][0]["block_size_minimum"] == 1 and j["exports"][0]["block_size_maximum"] == 32 << 20' \
  <"$T/info.json" || fail "advertised block sizes: $(cat "$T/info.json")"
ok "minimum block size 1"

# nbdsh is `python3 -m nbd`: run it with the python that has libnbd's bindings (a pyenv
# shim may come first in PATH).
timeout 120 "$PY" -m nbd -u "$(uri vol)" -c '
import nbd
assert h.get_block_size(nbd.SIZE_MINIMUM) == 1
assert h.get_strict_mode() & nbd.STRICT_ALIGN  # libnbd checks alignment: nothing to check
h.pwrite(b"abc", 1000)                              # inside a block
assert h.pread(3, 1000) == b"abc"
data = bytes(range(256)) * 300                      # 76800 bytes: across two 64 KiB blocks
h.pwrite(data, 65536 - 7)
assert h.pread(len(data), 65536 - 7) == data
assert h.pread(1001, 0) == bytes(1000) + b"a"       # the rest of the block reads as zeros
h.trim(3, 65530)                                    # a partial trim changes nothing
assert h.pread(10, 65529) == data[:10]
h.zero(5, 1001)                                     # a partial zero writes zeros
assert h.pread(6, 1000) == b"a" + bytes(5)
h.flush()
h.shutdown()
' || fail "unaligned requests through nbdsh"
ok "unaligned reads and writes"

stop_server
check_pool "after unaligned I/O"
echo "nbd_block_size: ok"
