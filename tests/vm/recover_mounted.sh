#!/usr/bin/env bash
# Recovery of a mounted volume over ublk (issue 21, item 7): a provisioned
# volume (btrfs mounted at its mount point) under a file workload with
# fsyncs; `kill -9` of its daemon; `attach --recover`. The recovered daemon
# must hold no mount of its own device in its private mount namespace (its
# exit would wait on the filesystem, which waits on the device it served),
# and `detach` must return. Attached again, the volume mounts again, every
# fsynced file reads back, a daemon of another volume started meanwhile
# holds no mount of it either, and `btrfs check` is clean.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
modprobe ublk_drv
modprobe btrfs
mnt=/tmp/zeroblk-recover/vol
synced="$WORK/synced"

note() { echo "[${SECONDS}s] $*"; }
synced_files() { if [ -f "$synced" ]; then wc -l < "$synced"; else echo 0; fi; }
# The lines of mountinfo file $1 that mount device $2: by its source, or by
# its device number (btrfs shows an anonymous one, other filesystems its own).
mounts_of() {
    local numbers
    numbers=$(cat "/sys/class/block/$(basename "$2")/dev")
    awk -v device="$2" -v numbers="$numbers" '
        { for (i = 7; i < NF; i++) if ($i == "-") break }
        $(i + 2) == device || $3 == numbers' "$1"
}

step "attach with a mount point: btrfs made and mounted"
device=$("$ZEROBLK" attach vol --size 1G --mount-point "$mnt" --commit-interval 500ms)
case "$device" in /dev/ublkb*) ;; *) fail "attach printed '$device'";; esac
grep -q " $mnt btrfs" /proc/mounts || fail "$mnt is not mounted"

step "a file workload with fsyncs, then kill -9 of the daemon"
# Each file is written from a copy outside the volume and fsynced; only
# then is its checksum logged, so every logged file must survive.
(
    i=0
    while [ ! -e "$WORK/stop" ]; do
        head -c $(( (RANDOM % 32 + 1) * 64 * 1024 )) /dev/urandom > "$WORK/source"
        dd if="$WORK/source" of="$mnt/@home/f$i" bs=64k conv=fsync status=none || exit 1
        echo "$(sha256sum < "$WORK/source" | cut -d' ' -f1) f$i" >> "$synced"
        i=$((i + 1))
    done
) &
load=$!
for _ in $(seq 1 300); do
    [ "$(synced_files)" -ge 10 ] && break
    sleep 0.1
done
[ -s "$synced" ] || fail "the workload wrote nothing"
sleep 2
kill -9 "$(daemon_pid)"
note "killed the daemon after $(synced_files) fsynced files"
sleep 1

step "attach --recover takes the device back; the workload goes on"
recovered=$("$ZEROBLK" attach vol --recover --commit-interval 500ms)
[ "$recovered" = "$device" ] || fail "recovered '$recovered', not $device"
before=$(synced_files)
sleep 3
[ "$(synced_files)" -gt "$before" ] || fail "the workload made no progress after the recovery"
touch "$WORK/stop"
wait "$load" || fail "the workload failed"
note "$(synced_files) fsynced files"

step "the recovered daemon holds no mount of $device"
pid=$(daemon_pid)
held=$(mounts_of "/proc/$pid/mountinfo" "$device")
[ -n "$(mounts_of /proc/self/mountinfo "$device")" ] || fail "the host lost its mount of $device"
[ -z "$held" ] || echo "the recovered daemon's mount namespace holds:"$'\n'"$held"
grep "daemon's mount namespace" "$ZEROBLK_RUNTIME_DIR/vol.log" || true

step "detach returns"
timeout 120 "$ZEROBLK" detach vol || fail "detach after the recovery failed or hung (exit $?)"
[ -z "$held" ] || fail "the recovered daemon held a mount of $device"
grep -q " $mnt " /proc/mounts && fail "still mounted after detach"
[ -e "$device" ] && fail "$device is still there after detach"

step "attach again: mounted again, every fsynced file is there"
device=$("$ZEROBLK" attach vol)
grep -q " $mnt btrfs" /proc/mounts || fail "not mounted again"
while read -r sum file; do
    [ "$(sha256sum < "$mnt/@home/$file" | cut -d' ' -f1)" = "$sum" ] || fail "$file changed or was lost"
done < "$synced"
echo "$(synced_files) files read back"

step "a daemon started while the volume is mounted holds no mount of it"
"$ZEROBLK" attach other --size 64M >/dev/null
other_pid=$("$ZEROBLK" list --json | /usr/bin/python3 -c \
    'import json, sys; print(next(r["pid"] for r in json.load(sys.stdin) if r["name"] == "other"))')
held=$(mounts_of "/proc/$other_pid/mountinfo" "$device")
[ -z "$held" ] || fail "the daemon of another volume holds a mount of $device:"$'\n'"$held"

step "btrfs check is clean"
umount "$mnt"
btrfs check --readonly "$device" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "btrfs check"; }
timeout 120 "$ZEROBLK" detach vol || fail "the last detach failed or hung (exit $?)"
timeout 120 "$ZEROBLK" detach other || fail "the detach of the other volume failed or hung (exit $?)"
echo "recover_mounted: ok"
