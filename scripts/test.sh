#!/usr/bin/env bash
# Installs what zeroblk's test suite needs on a fresh Debian machine, then
# runs all of it: formatting, lints, unit, integration and property tests.
#
#   ZEROBLK_MODEL_CASES=N   cases per property test (default: the test's own)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_cargo
# CI builds everything once on a fresh clone: incremental caches (gigabytes)
# buy nothing there, and line tables keep backtraces' file:line at a
# fraction of full debug info's size. A developer's own settings win.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"
say "free space: $(df -h --output=avail . | tail -1 | tr -d ' ') here, $(df -h --output=avail "${TMPDIR:-/tmp}" | tail -1 | tr -d ' ') in ${TMPDIR:-/tmp}"
# Real NBD clients: nbdinfo/nbdcopy (libnbd-bin), libnbd's Python module
# (python3-libnbd), qemu-img (qemu-utils) and fio.
# libublk generates its kernel bindings with bindgen, which needs libclang;
# jemalloc (the binary's allocator) builds with make. NBD's TLS links
# OpenSSL (libssl-dev); the TLS tests make their certificates with the
# openssl CLI.
need_apt pkg-config libclang-dev make libssl-dev openssl
# Backups are age files: the crypto tests check that the real age and
# age-keygen read what zeroblk writes, and the other way round.
need_apt age
need_qemu
need_apt python3-pip libnbd-bin python3-libnbd fio
need_pip moto_server 'moto[server]'
# The metrics tests parse zeroblk's exposition with Prometheus's own
# Python client.
need_pip_module prometheus_client prometheus_client
# A real kernel for the device tests: Debian's 6.12 (ublk_drv, nbd, btrfs,
# nfsd as modules), booted under QEMU by virtme-ng (scripts/vm-run.sh).
need_apt busybox-static linux-image-6.12-amd64 nbd-client e2fsprogs
# Provisioning: btrfs (tests/provision.rs on the host's loop devices, and
# in the VM) and the kernel NFS server.
need_apt btrfs-progs nfs-kernel-server
need_pip vng virtme-ng

say "cargo fmt --check"
cargo fmt --check
say "cargo clippy --all-targets -- -D warnings"
cargo clippy --quiet --all-targets -- -D warnings
say "no import cycles among the engine's modules"
python3 scripts/module_cycles.py src/engine
say "benchmarks, once each (cargo test --benches)"
cargo test --benches --quiet
say "cargo test"
cargo test --lib --bins --tests --no-fail-fast
say "a bounded soak: the reliability tests again, with other seeds"
ZEROBLK_SOAK_PROFILE=dev bash scripts/soak.sh 3
