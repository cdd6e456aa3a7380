#!/usr/bin/env bash
# Builds zeroblk and runs its main job on the embedded default store
# (file:///var/lib/zeroblk/store for root, ~/.local/share/zeroblk/store
# otherwise): `zeroblk attach --size 100G`, a 100G volume named "default"
# as a block device (/dev/ublkbN, or /dev/nbdN on kernels without ublk).
#
# On a kernel with neither driver (such as these build machines), it says
# so and serves the volume over NBD at nbd://127.0.0.1:10809/default
# instead, until Ctrl-C (which commits everything to the store first).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_cargo
# libublk generates its kernel bindings with bindgen, which needs libclang;
# jemalloc (the binary's allocator) builds with make.
need_apt pkg-config libclang-dev make libssl-dev
say "building zeroblk (release)"
cargo build --release --quiet
zeroblk=target/release/zeroblk

modprobe ublk_drv 2>/dev/null || modprobe nbd 2>/dev/null || true
if [ -e /dev/ublk-control ] || [ -e /dev/nbd0 ]; then
    if "$zeroblk" list | grep -q "^default "; then
        "$zeroblk" list
    else
        device=$("$zeroblk" attach --size 100G "$@")
        say "volume default is attached at $device; \`$zeroblk detach default\` commits and removes it"
    fi
    exit 0
fi
if ! "$zeroblk" volume info default >/dev/null 2>&1; then
    "$zeroblk" volume create default --size 100G
fi
"$zeroblk" volume info default
say "this kernel has neither ublk nor nbd: serving volume default at nbd://127.0.0.1:10809/default (Ctrl-C to stop)"
exec "$zeroblk" serve default
