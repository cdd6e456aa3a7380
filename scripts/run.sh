#!/usr/bin/env bash
# Builds zeroblk and runs its main job on the embedded default store
# (file:///var/lib/zeroblk/store for root, ~/.local/share/zeroblk/store
# otherwise): a 100G volume named "default".
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

need_cargo
say "building zeroblk (release)"
cargo build --release --quiet
zeroblk=target/release/zeroblk

if ! "$zeroblk" volume info default >/dev/null 2>&1; then
    "$zeroblk" volume create default --size 100G
fi
"$zeroblk" volume info default
