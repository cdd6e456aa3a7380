#!/usr/bin/env bash
# How btrfs's compression and zeroblk's chunk compression work together:
# the same files (binaries, headers, gzipped man pages) are copied into
# btrfs with and without compress=zstd:3, and each image is then written to
# a zeroblk volume with and without chunk compression. For each of the four
# pairs it reports the bytes stored and the CPU each layer spent.
# Results and the choice they led to: docs/compression.md.
#
#   scripts/compression-study.sh [OUT.md]     needs root (loop devices)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
need_apt btrfs-progs libnbd-bin time

out="${1:-/dev/stdout}"
cargo build --release --quiet
zeroblk="$PWD/target/release/zeroblk"
work="$(mktemp -d /var/tmp/zeroblk-compression.XXXXXX)"
trap 'umount "$work/mnt" 2>/dev/null || true; rm -rf "$work"' EXIT
mkdir -p "$work/mnt"
corpus=(/usr/bin /usr/include /usr/share/man)
export ZEROBLK_STORE="file://$work/store" ZEROBLK_CACHE_DIR="$work/cache"

# busy_jiffies: CPU time every core spent on anything, from /proc/stat.
# btrfs compresses in kernel writeback threads, not in the copying
# process, so the machine-wide count is the one that sees it.
busy_jiffies() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }

mib() { awk -v b="$1" 'BEGIN { printf "%.0f", b / 1048576 }'; }

printf '| btrfs compress | chunk compression | stored in the store (MiB) | btrfs copy, machine CPU (s) | zeroblk CPU (s) |\n' >"$work/table"
printf '|---|---|---:|---:|---:|\n' >>"$work/table"
input=$(du -scb "${corpus[@]}" | tail -n 1 | cut -f1)
port=10890
for btrfs in zstd:3 no; do
    image="$work/btrfs-${btrfs%%:*}.img"
    truncate -s 4G "$image"
    mkfs.btrfs -q -K "$image" >/dev/null
    mount -o "loop,noatime,compress=$btrfs" "$image" "$work/mnt"
    # The kernel compresses in writeback: the copy and the sync pay for it.
    before=$(busy_jiffies)
    cp -a "${corpus[@]}" "$work/mnt/"
    sync -f "$work/mnt"
    btrfs_cpu=$(awk -v j=$(( $(busy_jiffies) - before )) -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.1f", j / hz }')
    umount "$work/mnt"
    for chunks in zstd:3 none; do
        name="v-${btrfs%%:*}-${chunks%%:*}"
        "$zeroblk" volume create "$name" --size 4G --compression "$chunks" >/dev/null
        port=$((port + 1))
        /usr/bin/time -f '%U %S' -o "$work/serve.time" \
            "$zeroblk" serve --listen "127.0.0.1:$port" "$name" 2>"$work/serve.log" &
        serve=$!
        for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
        nbdcopy "$image" "nbd://127.0.0.1:$port/$name"
        # SIGTERM to zeroblk itself (not to time): it commits, then exits.
        kill -TERM "$(pgrep -P "$serve" -f 'zeroblk serve')"
        wait "$serve" || true
        zeroblk_cpu=$(awk '{ printf "%.1f", $1 + $2 }' "$work/serve.time")
        stored=$("$zeroblk" volume info "$name" --json | sed -n 's/.*"stored_bytes": \([0-9]*\).*/\1/p')
        printf '| %s | %s | %s | %s | %s |\n' "$btrfs" "$chunks" "$(mib "$stored")" "$btrfs_cpu" "$zeroblk_cpu" >>"$work/table"
    done
    rm -f "$image"
done
{
    echo "Input: $(mib "$input") MiB of files (${corpus[*]}), $(nproc) cores, $(date -u +%Y-%m-%d)."
    echo
    cat "$work/table"
} >"$out"
