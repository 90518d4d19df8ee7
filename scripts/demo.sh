#!/usr/bin/env bash
# demo.sh: a walkthrough of thinpool's A/B updates of a read-only image (docs/SEMANTICS.md
# "A/B updates, end to end"), run by `make demo`. Everything happens in a temporary
# directory that is removed at the end. Each step prints a heading, the commands it runs
# and the pool's space afterwards (`thinpool info`).
#
#   1. build an erofs image (squashfs when mkfs.erofs is missing) of a small directory tree
#   2. a 64 MiB pool of 64 KiB blocks; a fully provisioned 16 MiB volume `base` holding it
#   3. set aside the space for the next update: a writable snapshot base.next with a budget
#   4. fill the pool from another volume until it reports ENOSPC
#   5. build v2 of the image and a delta file; update base with it: works on the full pool
#   6. read base back and check the file system (and mount it, when root and loop work)
#   7. reserve again for the next update (after making room)
#   8. failed updates (a corrupt delta, a delta for another base): base stays as it was
#   9. rollback protection: snapshot, damage the volume, roll back
#  10. a full consistency check
#
# Usage: demo.sh PATH/TO/thinpool. Exits non-zero if any step does not behave as shown.
set -euo pipefail

TP=$(realpath "${1:?usage: $0 PATH/TO/thinpool}")
W=$(mktemp -d "${TMPDIR:-/tmp}/thinpool-demo.XXXXXX")
MNT=
cleanup() {
  if [ -n "$MNT" ] && mountpoint -q "$MNT" 2>/dev/null; then umount "$MNT" || true; fi
  rm -rf "$W"
}
trap cleanup EXIT
trap 'echo "demo: FAILED (line $LINENO: $BASH_COMMAND)" >&2' ERR
unset THINPOOL_POOL
P=$W/pool
cd "$W"

STEP=0
heading() {
  STEP=$((STEP + 1))
  printf '\n==== %d. %s\n' "$STEP" "$*"
}
say() { printf '%s\n' "$*"; }
die() {
  echo "demo: FAILED: $*" >&2
  exit 1
}
indent() { sed 's/^/    /'; }
tp() { "$TP" -p "$P" "$@"; }
# run ARGS...: shows `thinpool ARGS` and its output; fails the demo when it fails.
run() {
  say "\$ thinpool $*"
  tp "$@" 2>&1 | indent
}
# refused ARGS...: shows `thinpool ARGS`, which must fail (exit 1) with one message line.
refused() {
  say "\$ thinpool $*"
  local st=0
  tp "$@" >"$W/out" 2>"$W/err" || st=$?
  indent <"$W/err"
  [ "$st" -eq 1 ] || die "'thinpool $*' exited $st, expected 1"
  [ "$(wc -l <"$W/err")" -eq 1 ] || die "'thinpool $*' did not print one message line"
  say "    (exit status $st, as expected)"
}
# The pool's space after a step: the lines of `thinpool info` that change in this demo.
info() {
  say "\$ thinpool info   (space lines)"
  tp info | grep -E '^(used|reserved|unreserved|state) |^(SPACE|meta|explicit) |^data  ' | indent
}
# sha256 of a volume's whole content.
volume_sha() {
  tp read "$1" "$W/vol.img" >/dev/null
  sha256sum <"$W/vol.img" | cut -d' ' -f1
}
# flip_byte FILE OFFSET: inverts one byte in place.
flip_byte() {
  local b
  b=$(od -An -tu1 -j "$2" -N1 "$1" | tr -d ' ')
  # shellcheck disable=SC2059
  printf "$(printf '\\%03o' $((b ^ 255)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

VOL_SIZE=16M
VOL_BYTES=$((16 * 1024 * 1024))
UUID=6a1bd0c4-2f37-4ae8-9c1a-3f5b0d7a9e10
if command -v mkfs.erofs >/dev/null; then
  FS=erofs
elif command -v mksquashfs >/dev/null; then
  FS=squashfs
else
  die "neither mkfs.erofs (erofs-utils) nor mksquashfs (squashfs-tools) is installed"
fi
# mkimage DIR IMAGE: a reproducible read-only image of DIR, padded with zeros to the volume
# size (a delta describes whole volumes: its base is all of `base`, not just the image).
mkimage() {
  rm -f "$2"
  if [ "$FS" = erofs ]; then
    mkfs.erofs -T0 -U "$UUID" --all-root --quiet "$2" "$1" >/dev/null
  else
    mksquashfs "$1" "$2" -noappend -quiet -no-progress -all-root -mkfs-time 0 -all-time 0 \
      >/dev/null
  fi
  local size
  size=$(stat -c %s "$2")
  [ "$size" -le "$VOL_BYTES" ] || die "image $2 ($size bytes) is larger than the volume"
  truncate -s "$VOL_SIZE" "$2"
}
# fscheck IMAGE: the file system's own checker (or a listing for squashfs).
fscheck() {
  if [ "$FS" = erofs ]; then
    if command -v fsck.erofs >/dev/null; then
      say "\$ fsck.erofs $(basename "$1")"
      fsck.erofs "$1" 2>&1 | indent
      say "    (no errors)"
    else
      say "(fsck.erofs is not installed: file system check skipped)"
    fi
  else
    say "\$ unsquashfs -l $(basename "$1") | head"
    unsquashfs -l "$1" | head -n 8 | indent
  fi
}

# --------------------------------------------------------------------------------------
heading "Build a read-only $FS image of a small directory tree (version 1)"
mkdir -p tree/etc tree/usr/bin tree/usr/share/doc
for i in $(seq 1 12); do head -c $((600 * 1024 + i * 1000)) /dev/urandom >"tree/usr/bin/tool$i"; done
for i in $(seq 1 40); do seq 1 $((i * 200)) | sed 's/^/line /' >"tree/usr/share/doc/README.$i"; done
echo "version=1" >tree/etc/release
echo "welcome to version 1" >tree/etc/motd
mkimage tree base.img
say "tree: $(find tree -type f | wc -l) files, $(du -sh tree | cut -f1); base.img padded to $VOL_SIZE"
say "base.img sha256 $(sha256sum <base.img | cut -c1-16)…"

heading "Create a 64 MiB pool with 64 KiB blocks"
run init --size 64M --block-size 64K
info

heading "Create volume base, fully provisioned, and write the image into it"
say "(--provision guarantees every block of base: its writes can never fail for lack of space)"
run create base --size "$VOL_SIZE" --provision
run write base base.img
[ "$(volume_sha base)" = "$(sha256sum <base.img | cut -d' ' -f1)" ] || die "base does not hold base.img"
run list
say "(write leaves the image's zero blocks unmapped: base's guarantee keeps a block reserved"
say " for each of them instead)"
info

heading "Set aside the space for the next update, now, while the pool has room"
say "A snapshot shares all of base's blocks, so base's guarantee now reserves a copy of"
say "each of them; --reserve adds a budget for the writes of the update itself."
run snapshot base base.next --writable --reserve 2M
run list
info

heading "Fill the pool from another volume until it runs out of space"
run create filler --size 64M
head -c $((40 * 1024 * 1024)) /dev/urandom >big.img
refused write filler big.img
say "The pool is full for unguaranteed writes, but base and base.next keep their space:"
info
tp info --json | grep -q '"state": "full"' || die "the pool should be full now"

heading "Build version 2 of the image and a delta file"
cp -a tree tree2
echo "version=2" >tree2/etc/release
echo "welcome to version 2" >tree2/etc/motd
head -c 100000 /dev/urandom | dd of=tree2/usr/bin/tool5 bs=1 seek=50000 conv=notrunc status=none
# (No new files: erofs numbers inodes in tree order, so a new file would move many small
# inodes and grow the delta.)
mkimage tree2 v2.img
say "\$ thinpool diff --files base.img v2.img --output v2.delta"
"$TP" diff --files base.img v2.img --output v2.delta | indent
[ "$(stat -c %s v2.delta)" -le $((2 * 1024 * 1024)) ] || say "(the delta is larger than the 2M reserved: the update will fail)"

heading "Update base with the delta: on the full pool, into the reserved base.next"
run update base --delta v2.delta
run list
info
[ "$(volume_sha base)" = "$(sha256sum <v2.img | cut -d' ' -f1)" ] || die "base does not hold v2.img"

heading "Read base back and check the file system"
# shellcheck disable=SC2162  # (thinpool read, not the shell builtin)
run read base out.img
cmp out.img v2.img || die "out.img differs from v2.img"
say "out.img is byte for byte v2.img"
fscheck out.img
if [ "$(id -u)" -ne 0 ]; then
  say "(mount skipped: mounting a loop device needs root)"
else
  MNT=$W/mnt
  mkdir -p "$MNT"
  if mount -t "$FS" -o loop,ro out.img "$MNT" 2>"$W/mount.err"; then
    say "\$ mount -t $FS -o loop,ro out.img mnt; cat mnt/etc/release mnt/etc/motd"
    cat "$MNT/etc/release" "$MNT/etc/motd" | indent
    grep -q version=2 "$MNT/etc/release" || die "the mounted image is not version 2"
    umount "$MNT"
  else
    say "(mount skipped: mount -o loop failed here: $(head -n1 "$W/mount.err"))"
  fi
fi

heading "Reserve again for the next update"
say "\$ thinpool snapshot base base.next --writable --reserve 2M"
if tp snapshot base base.next --writable --reserve 2M >"$W/out" 2>"$W/err"; then
  indent <"$W/out"
  say "It fits although the pool was full: the merge gave back exactly what the update had"
  say "set aside (the old copies of the changed blocks and the unused part of the budget)."
else
  indent <"$W/err"
  say "The pool is still full: the snapshot must reserve a copy of each of base's"
  say "guaranteed blocks. Make room first by removing filler, then reserve."
  run remove filler
  run snapshot base base.next --writable --reserve 2M
fi
info

heading "A failed update leaves base as it was"
cp -a tree2 tree3
echo "version=3" >tree3/etc/release
mkimage tree3 v3.img
"$TP" diff --files v2.img v3.img --output v3.delta >/dev/null
cp v3.delta bad.delta
flip_byte bad.delta $(($(stat -c %s bad.delta) / 2))
say "bad.delta: v3.delta with one byte flipped in the middle"
BEFORE=$(volume_sha base)
refused update base --delta bad.delta
[ "$(volume_sha base)" = "$BEFORE" ] || die "base changed after a failed update"
say "v2.delta again: made for base.img, but base now holds v2"
refused update base --delta v2.delta
[ "$(volume_sha base)" = "$BEFORE" ] || die "base changed after a failed update"
say "base is unchanged (sha256 $(cut -c1-16 <<<"$BEFORE")…)."
if tp list --json | grep -q '"name": "base.next"'; then
  say "base.next, the reservation, is still there: nothing was applied."
else
  say "base.next was dropped with the failed update: reserve again."
  run snapshot base base.next --writable --reserve 2M
fi
say "The intact delta applies:"
run update base --delta v3.delta
[ "$(volume_sha base)" = "$(sha256sum <v3.img | cut -d' ' -f1)" ] || die "base does not hold v3.img"
info

heading "Rollback protection: snapshot, damage, roll back"
GOOD=$(volume_sha base)
run snapshot base pre
head -c $((1024 * 1024)) /dev/urandom >garbage.img
run write base garbage.img
AFTER=$(volume_sha base)
[ "$AFTER" != "$GOOD" ] || die "writing garbage did not change base"
say "base now holds garbage (sha256 $(cut -c1-16 <<<"$AFTER")…)"
run rollback base --to pre
[ "$(volume_sha base)" = "$GOOD" ] || die "rollback did not restore base"
say "base is back (sha256 $(cut -c1-16 <<<"$GOOD")…)"
run remove pre
info

heading "Check the pool"
run check
run list

printf '\ndemo: all steps behaved as described\n'
