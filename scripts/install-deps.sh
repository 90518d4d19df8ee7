#!/usr/bin/env bash
# Installs every Debian package thinpool needs to build, test and demo.
# Idempotent: installs only what is missing. Run as root (CI and dev machines are root).
set -euo pipefail

PKGS=(
  # build
  cmake ninja-build g++ clang libclang-rt-14-dev pkg-config
  # libraries
  libgtest-dev libgmock-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libfmt-dev
  nettle-dev libgnutls28-dev liburing-dev
  # the independent oracle for the on-disk format
  thin-provisioning-tools
  # real NBD clients and peers for the end-to-end tests
  libnbd-bin python3-libnbd nbdkit qemu-utils fio fuse3   # libnbd-bin ships nbdsh, nbdinfo, nbdcopy, nbdfuse
  gnutls-bin   # certtool and psktool: the TLS end-to-end test makes its own CA, certificate and PSK
  mount procps util-linux   # losetup and mount (nbdfuse + loop test), pgrep (server PID), setpriv
  # benchmarks: system calls per FLUSH (bench/flush_syscalls.sh)
  strace
  # demo: image tools
  erofs-utils squashfs-tools e2fsprogs
)

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$p")
  fi
done

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
if ! $SUDO apt-get install -y --no-install-recommends "${missing[@]}"; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi
