#!/usr/bin/env bash
# Builds zeroblk and runs its main job on the embedded default store
# (file:///var/lib/zeroblk/store for root, ~/.local/share/zeroblk/store
# otherwise): a 100G volume named "default", served to this machine over
# NBD at nbd://127.0.0.1:10809/default until Ctrl-C (which commits
# everything to the store first).
#
# Until `zeroblk attach` (the ublk device) lands, NBD is how a volume is
# used: `nbdinfo`, `nbdcopy`, `qemu-img`, `fio --ioengine=nbd`, or the
# kernel's `nbd-client 127.0.0.1 10809 -N default -b 4096 /dev/nbd0`.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_cargo
# libublk generates its kernel bindings with bindgen, which needs libclang.
need_apt pkg-config libclang-dev
say "building zeroblk (release)"
cargo build --release --quiet
zeroblk=target/release/zeroblk

if ! "$zeroblk" volume info default >/dev/null 2>&1; then
    "$zeroblk" volume create default --size 100G
fi
"$zeroblk" volume info default
say "serving volume default at nbd://127.0.0.1:10809/default (Ctrl-C to stop)"
exec "$zeroblk" serve default "$@"
