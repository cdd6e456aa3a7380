#!/usr/bin/env bash
# Installs the peers and runs the comparison (scripts/compare.py): results,
# tables and plots in docs/benchmarks/. Needs root (FUSE, page cache drops,
# the VM). About 20 minutes.
#
#   scripts/compare.sh [--runtime 10] [--size 256M] [--out DIR] [--skip-vm]
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
need_qemu
need_apt fio libnbd-bin python3-libnbd nbdkit s3backer python3-matplotlib
need_apt busybox-static linux-image-6.12-amd64 btrfs-progs
need_pip moto_server 'moto[server]'
need_pip vng virtme-ng
say "building zeroblk (release)"
cargo build --release --quiet
exec /usr/bin/python3 scripts/compare.py "$@"
