#!/usr/bin/env bash
# The VM half of scripts/compare.py, run inside the VM by scripts/vm-run.sh:
# zeroblk over ublk, zeroblk over the kernel NBD client, rublk's loop target
# (the reference ublk daemon, crates.io) and the kernel loop device, the
# last two on files in the guest's memory, each filled with the same bytes,
# then the profiles of fio-profiles/ interleaved; then mkfs.btrfs and a
# whole-device discard on a 2 TiB ublk volume. Prints one line per result:
# RESULT {json}.
#
#   ZEROBLK=... RUBLK=... FIO_SIZE=256M FIO_RUNTIME=10 scripts/compare-vm.sh
#
# Without RUBLK (rublk 0.2.15, `cargo install rublk`), rublk is left out.
#
# COMPARE_PROFILES="randread-4k-qd32 seqread-1m" runs only those profiles
# (for a quick look at one change; the published run takes them all).
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROBLK="${ZEROBLK:?}"
export PATH="/usr/sbin:/sbin:$PATH" FIO_SIZE FIO_RUNTIME
work="$(mktemp -d /tmp/zeroblk-compare.XXXXXX)"
export ZEROBLK_STORE="file://$work/store" ZEROBLK_CACHE_DIR="$work/cache" ZEROBLK_RUNTIME_DIR="$work/run"
# Run a copy in the VM's memory: the host's files come over 9p, uncached.
cp "$ZEROBLK" "$work/zeroblk"
ZEROBLK="$work/zeroblk"
RUBLK="${RUBLK:-}"
if [[ -n "$RUBLK" ]]; then cp "$RUBLK" "$work/rublk" && RUBLK="$work/rublk"; fi
all_profiles="randread-4k-qd1 randread-4k-qd32 randwrite-4k-qd32 seqread-1m seqwrite-1m randrw-70-30-4k-qd32 fdatasync-4k"
read -r -a profiles <<<"${COMPARE_PROFILES:-$all_profiles}"

modprobe ublk_drv
modprobe nbd
modprobe btrfs
modprobe loop

python3 - "$work/fill.img" "$FIO_SIZE" <<'EOF'
import os, sys
units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
size = sys.argv[2]
size = int(size[:-1]) * units[size[-1]] if size[-1] in units else int(size)
block = 64 << 10
pattern = bytes(j % 251 + 1 for j in range(block // 2 + 251))
with open(sys.argv[1], "wb") as f:
    for i in range(size // block):
        f.write(os.urandom(block // 2) + pattern[i % 251:i % 251 + block // 2])
EOF

# Everything lives in the guest's memory (/tmp is a tmpfs there): bound
# each volume's log and disk cache so that both fit beside the loop file.
engine=(--max-dirty 256M --cache-size 512M)
declare -A device
device[zeroblk ublk]=$("$ZEROBLK" attach vu --size 2G --transport ublk "${engine[@]}")
device[zeroblk kernel NBD]=$("$ZEROBLK" attach vn --size 2G --transport nbd "${engine[@]}")
truncate -s 2G "$work/loop.img"
device[kernel loop (file)]=$(losetup -f --show "$work/loop.img")
targets=("zeroblk ublk" "zeroblk kernel NBD" "kernel loop (file)")
# rublk's loop target as its users run it on a file, with buffered I/O like
# the kernel loop device (the file is on the guest's tmpfs). Its default
# queue (one queue, depth 128, 512 KiB buffers) matches zeroblk's ublk.
if [[ -n "$RUBLK" ]]; then
    truncate -s 2G "$work/rublk.img"
    before=$(ls /dev/ublkb* 2>/dev/null || true)
    "$RUBLK" add loop --file "$work/rublk.img" --buffered-io --quiet >&2
    for _ in $(seq 50); do
        rublk_dev=$(comm -13 <(echo "$before") <(ls /dev/ublkb* 2>/dev/null) | head -n 1)
        [[ -n "$rublk_dev" ]] && break
        sleep 0.1
    done
    if [[ -n "$rublk_dev" ]]; then
        device[rublk loop (file)]=$rublk_dev
        targets+=("rublk loop (file)")
    else
        echo "rublk add loop made no device; rublk left out" >&2
    fi
fi
for target in "${targets[@]}"; do
    dd if="$work/fill.img" of="${device[$target]}" bs=1M oflag=direct status=none
done

for profile in "${profiles[@]}"; do
  # The profiles with targets run three passes, interleaved; compare.py
  # keeps each target's median.
  passes=1
  [[ "$profile" =~ ^(randread-4k-qd32|seqread-1m|seqwrite-1m)$ ]] && passes=3
  for pass in $(seq "$passes"); do
    for target in "${targets[@]}"; do
        echo "$profile, pass $pass of $passes: $target" >&2
        if ! FIO_TARGET="${device[$target]}" fio --section=device --output-format=json \
            --output="$work/fio.json" "fio-profiles/$profile.fio" >"$work/fio.err" 2>&1; then
            # Say why, and go on: one failed profile must not cost the rest.
            echo "fio failed on $target ($profile):" >&2
            tail -n 5 "$work/fio.err" >&2
            dmesg | tail -n 5 >&2
            continue
        fi
        if ! summary=$(python3 scripts/compare.py summarize "$work/fio.json"); then
            echo "no fio report from $target ($profile); space left: $(df -h "$work" | tail -n 1)" >&2
            continue
        fi
        printf 'RESULT {"where": "vm", "target": "%s", "profile": "%s", "cache": "warm", "result": %s}\n' \
            "$target" "$profile" "$summary"
    done
  done
    # Overwrites leave old chunks in the store: free them between profiles.
    # The grace must exceed the longest commit (src/engine/gc.rs): gc
    # refuses less than 10m while volumes are attached.
    "$ZEROBLK" gc --grace 10m >/dev/null || echo "zeroblk gc failed" >&2
done
"$ZEROBLK" detach vu >&2
"$ZEROBLK" detach vn >&2
losetup -d "${device[kernel loop (file)]}"
if [[ -n "${device[rublk loop (file)]:-}" ]]; then
    "$RUBLK" del --number "${device[rublk loop (file)]#/dev/ublkb}" >&2 || echo "rublk del failed" >&2
fi

# The guest's tmpfs holds everything: give the 2 TiB volume the room the
# profiles' volumes and files took (their disk caches and free log files
# stay after a detach, and the tmpfs is half the guest's memory).
"$ZEROBLK" volume delete vu >&2
"$ZEROBLK" volume delete vn >&2
rm -rf "$work/cache" "$work/loop.img" "$work/rublk.img" "$work/fill.img"
echo "room for the 2 TiB volume: $(df -h "$work" | tail -n 1)" >&2

# mkfs.btrfs as users run it, full-device discard included, on 2 TiB.
big=$("$ZEROBLK" attach big --size 2T --transport ublk)
seconds_since() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
start=$(date +%s%N)
mkfs.btrfs -q -f "$big" >/dev/null || echo "mkfs.btrfs on 2 TiB failed" >&2
mkfs=$(seconds_since "$start")
start=$(date +%s%N)
blkdiscard -f "$big" || echo "blkdiscard on 2 TiB failed" >&2
discard=$(seconds_since "$start")
"$ZEROBLK" detach big >&2
printf 'RESULT {"mkfs_btrfs_2t_seconds": %s, "blkdiscard_2t_seconds": %s}\n' "$mkfs" "$discard"
