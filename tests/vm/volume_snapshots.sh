#!/usr/bin/env bash
# Volume snapshots of a provisioned btrfs over ublk: `volume snapshot
# create` freezes the mounted filesystem around the pin, and `snapshot
# create --volume-snapshot` pins the volume beside a btrfs snapshot; a
# clone of each, attached as a raw device, passes `btrfs check` and holds
# the files as they were; a rollback of the detached volume brings them
# back.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
modprobe ublk_drv
modprobe btrfs
mnt=/tmp/zeroblk-volume-snapshots/vol
seen=/tmp/zeroblk-volume-snapshots/clone

step "attach and provision, write files"
"$ZEROBLK" attach vol --size 2G --mount-point "$mnt" >/dev/null
head -c 8M /dev/urandom > "$mnt/@home/data"
echo one > "$mnt/@/version"
sum1=$(sha256sum < "$mnt/@home/data")

step "a volume snapshot of the mounted filesystem (frozen meanwhile)"
taken=$("$ZEROBLK" volume snapshot create vol --name first)
[ "$taken" = first ] || fail "snapshot create printed '$taken'"
# Writes go on after the thaw.
head -c 8M /dev/urandom > "$mnt/@home/data"
sum2=$(sha256sum < "$mnt/@home/data")

step "a btrfs snapshot with a volume snapshot beside it"
out=$("$ZEROBLK" snapshot create vol --subvolume @home --name nightly --volume-snapshot)
btrfs_snapshot=$(echo "$out" | head -n 1)
pinned=$(echo "$out" | tail -n 1)
case "$pinned" in vol@home.*.nightly) ;; *) fail "--volume-snapshot printed '$out'";; esac
echo two > "$mnt/@/version"
"$ZEROBLK" volume snapshot list vol | grep -q "^first " || fail "first not listed"

check_clone() { # NAME SNAPSHOT EXPECTED_SUM EXPECTED_VERSION
    "$ZEROBLK" volume clone "vol@$2" "$1" >/dev/null
    device=$("$ZEROBLK" attach "$1")
    btrfs check --readonly "$device" > "$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "btrfs check of clone $1"; }
    mkdir -p "$seen"
    mount -o ro "$device" "$seen" || fail "mount clone $1"
    [ "$(sha256sum < "$seen/@home/data")" = "$3" ] || fail "clone $1: @home/data"
    [ "$(cat "$seen/@/version")" = "$4" ] || fail "clone $1: @/version"
    umount "$seen"
    "$ZEROBLK" detach "$1"
}

step "detach; clones of both snapshots pass btrfs check and hold their files"
"$ZEROBLK" detach vol
check_clone at-first first "$sum1" one
check_clone at-nightly "${pinned#vol@}" "$sum2" one
mkdir -p "$seen"
device=$("$ZEROBLK" attach at-nightly)
mount -o ro "$device" "$seen"
[ -d "$seen/@snapshots/$(basename "$btrfs_snapshot")" ] || fail "the btrfs snapshot is not in the volume snapshot"
umount "$seen"
"$ZEROBLK" detach at-nightly

step "roll the volume back to the first snapshot"
"$ZEROBLK" volume rollback vol first | grep -q pre-rollback || fail "rollback"
"$ZEROBLK" attach vol >/dev/null
[ "$(sha256sum < "$mnt/@home/data")" = "$sum1" ] || fail "rollback: @home/data"
[ "$(cat "$mnt/@/version")" = one ] || fail "rollback: @/version"
btrfs scrub start -B "$mnt" > "$WORK/scrub.out" || { cat "$WORK/scrub.out"; fail "scrub"; }
"$ZEROBLK" detach vol
echo "volume_snapshots: ok"
