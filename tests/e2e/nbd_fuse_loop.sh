#!/usr/bin/env bash
# nbd_fuse_loop: a real filesystem on a thinpool volume, through the whole stack:
#   thinpool serve -> nbdfuse (a FUSE file, 4 connections: multi-conn) -> losetup -> ext4.
# mkfs.ext4 (which discards the whole device: NBD TRIM), mount, copy files in, umount,
# e2fsck -f -n clean, detach, unmount, stop the server, check the pool; then serve again and
# mount read-only: every file's checksum matches and the filesystem is still clean.
# Needs root, /dev/fuse, loop devices and mount permission: without them it prints
# "SKIP: ..." and exits 0. Everything it sets up is torn down on every path.
# Usage: nbd_fuse_loop.sh PATH/TO/thinpool
. "$(dirname "$0")/lib/common.sh" "$@"
. "$(dirname "$0")/lib/nbd.sh"

for c in nbdfuse fusermount3 losetup mkfs.ext4 e2fsck mount umount mountpoint sha256sum; do
  command -v "$c" >/dev/null 2>&1 || skip "$c not installed"
done
[ "$(id -u)" -eq 0 ] || skip "needs root (losetup, mount)"
[ -c /dev/fuse ] || skip "no /dev/fuse"
{ : <>/dev/fuse; } 2>/dev/null || skip "cannot open /dev/fuse"
[ -e /dev/loop-control ] || skip "no /dev/loop-control (loop devices)"
mkdir "$T/probe"
mount -t tmpfs -o size=1M tp-probe "$T/probe" 2>/dev/null || skip "mount is not permitted here"
umount "$T/probe"

FUSE=$T/fuse  # nbdfuse's mount point; the export is the file $FUSE/nbd
MNT=$T/mnt    # the ext4 filesystem
mkdir "$FUSE" "$MNT"
LOOP=
FUSE_PID=
teardown() {
  if mountpoint -q "$MNT"; then umount "$MNT" || umount -l "$MNT"; fi
  if [ -n "$LOOP" ]; then losetup -d "$LOOP"; fi
  LOOP=
  if [ -n "$FUSE_PID" ]; then
    mountpoint -q "$FUSE" && fusermount3 -u "$FUSE"
    for _ in $(seq 100); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$FUSE_PID" 2>/dev/null; then
      fusermount3 -u -z "$FUSE"
      kill -KILL "$FUSE_PID"
    fi
    wait "$FUSE_PID" 2>/dev/null
  fi
  FUSE_PID=
}
CLEANUP=teardown

# fuse_up [-r]: nbdfuse on the export, waits (10 s at most) for its PID file.
fuse_up() {
  rm -f "$T/nbdfuse.pid"
  timeout -s KILL 600 nbdfuse "$@" -P "$T/nbdfuse.pid" "$FUSE" "$(uri vol)" 2>"$T/nbdfuse.log" &
  FUSE_PID=$!
  for _ in $(seq 100); do
    [ -s "$T/nbdfuse.pid" ] && break
    kill -0 "$FUSE_PID" 2>/dev/null || fail "nbdfuse exited: $(cat "$T/nbdfuse.log")"
    sleep 0.1
  done
  [ -s "$T/nbdfuse.pid" ] || fail "nbdfuse not ready after 10 s"
  [ "$(stat -c %s "$FUSE/nbd")" -eq $((128 * MiB)) ] || fail "nbdfuse file size $(stat -c %s "$FUSE/nbd")"
}
# fuse_down: unmount (nbdfuse then exits by itself, flushing), bounded.
fuse_down() {
  fusermount3 -u "$FUSE" || fail "fusermount3 -u"
  local rc=0
  for _ in $(seq 300); do kill -0 "$FUSE_PID" 2>/dev/null || break; sleep 0.1; done
  kill -0 "$FUSE_PID" 2>/dev/null && fail "nbdfuse still running 30 s after unmount"
  wait "$FUSE_PID" || rc=$?
  FUSE_PID=
  [ "$rc" -eq 0 ] || fail "nbdfuse exited with $rc: $(cat "$T/nbdfuse.log")"
}
# loop_up [-r]: a free loop device on the FUSE file.
loop_up() {
  LOOP=$(losetup -f --show "$@" "$FUSE/nbd" 2>"$T/losetup.log") || {
    LOOP=
    fail "losetup: $(cat "$T/losetup.log")"
  }
}
loop_down() {
  losetup -d "$LOOP" || fail "losetup -d $LOOP"
  LOOP=
}

tp init --size 512M >/dev/null
tp create vol --size 128M >/dev/null

# Files to copy: a spread of sizes, a sparse one, a deep directory.
SRC=$T/src
mkdir -p "$SRC/a/b/c"
for i in $(seq 12); do head -c $((i * i * 37 * 1024 + i)) /dev/urandom >"$SRC/f$i"; done
head -c 3000000 /dev/urandom >"$SRC/a/b/c/deep"
truncate -s 20M "$SRC/sparse"
head -c 4096 /dev/urandom | dd of="$SRC/sparse" bs=1M seek=10 conv=notrunc status=none
: >"$SRC/empty"
(cd "$SRC" && find . -type f -print0 | sort -z | xargs -0 sha256sum) >"$T/sums"

start_server
fuse_up
loop_up
mkfs.ext4 -q -F "$LOOP" >"$T/mkfs.log" 2>&1 || fail "mkfs.ext4: $(cat "$T/mkfs.log")"
mount "$LOOP" "$MNT" || fail "mount $LOOP"
cp -a "$SRC/." "$MNT/"
(cd "$MNT" && sha256sum -c --quiet "$T/sums") || fail "checksums in the mounted filesystem"
umount "$MNT"
e2fsck -f -n "$LOOP" >"$T/fsck.log" 2>&1 || fail "e2fsck -f -n: $(cat "$T/fsck.log")"
loop_down
fuse_down
# The data reached the pool: the volume maps blocks now (through the daemon's control socket).
mapped=$(tp list --json | python3 -c \
  'import json,sys; print([v for v in json.load(sys.stdin) if v["name"]=="vol"][0]["mapped_bytes"])')
[ "$mapped" -gt $((20 * MiB)) ] || fail "only $mapped bytes mapped after copying the files"
stop_server
check_pool "after the filesystem was written"
ok "mkfs.ext4, mount, copy $(wc -l <"$T/sums") files, umount, e2fsck clean ($mapped bytes mapped)"

# Again from a fresh server: read-only all the way down, the same files.
start_server
fuse_up -r
loop_up -r
e2fsck -f -n "$LOOP" >"$T/fsck.log" 2>&1 || fail "e2fsck -f -n after restart: $(cat "$T/fsck.log")"
mount -o ro "$LOOP" "$MNT" || fail "mount -o ro $LOOP"
(cd "$MNT" && sha256sum -c --quiet "$T/sums") || fail "checksums after a restart"
umount "$MNT"
loop_down
fuse_down
stop_server
check_pool "at the end"
ok "after a restart: e2fsck clean, every checksum matches"
