#!/usr/bin/env bash
# Installs the peers and runs the comparison (scripts/compare.py): results,
# tables and plots in docs/benchmarks/. Needs root (FUSE, page cache drops,
# the VM). About 45 minutes, and 15 more the first time (ZeroFS builds).
#
#   scripts/compare.sh [--runtime 10] [--size 256M] [--out DIR] [--skip-vm] [--s3 garage|moto]
#   scripts/compare.sh --tls-only [--runtime 10]   # TLS against plaintext only: a few minutes
#   scripts/compare.sh --encryption-only [--runtime 10]   # encrypted against clear and s3backer: about 10 minutes
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_cargo
if [[ " $* " == *" --tls-only "* ]]; then
    need_apt fio libnbd-bin openssl
    say "building zeroblk (release)"
    cargo build --release --quiet
    exec /usr/bin/python3 scripts/compare.py "$@"
fi
if [[ " $* " == *" --encryption-only "* ]]; then
    need_apt fio libnbd-bin nbdkit s3backer
    need_pip moto_server 'moto[server]'
    say "building zeroblk (release)"
    cargo build --release --quiet
    exec /usr/bin/python3 scripts/compare.py "$@"
fi
need_qemu
need_apt fio libnbd-bin python3-libnbd nbdkit s3backer python3-matplotlib libnfs-utils
need_apt busybox-static linux-image-6.12-amd64 btrfs-progs
need_pip moto_server 'moto[server]'
need_pip vng virtme-ng
# ZeroFS, the peer on S3 with an NBD server: 0.19.1 is the newest on
# crates.io (about 15 minutes to build here, once).
need_crate zerofs zerofs 0.19.1
# rublk, the reference ublk daemon, as the VM's ublk peer (its loop target).
need_crate rublk rublk 0.2.15
# Garage, a real object store in Rust, for --s3 garage (about 15 minutes
# to build here, once).
if [[ " $* " == *" --s3 garage "* ]]; then need_crate garage garage 2.5.0; fi
say "building zeroblk (release)"
cargo build --release --quiet
exec /usr/bin/python3 scripts/compare.py "$@"
