#!/usr/bin/env bash
# One-command provisioning on ublk: btrfs with @, @home and @snapshots,
# mounted with the btrfs options of ZeroFS's guide, snapshots, rollback,
# prune, an NFS export read over loopback, detach, and a re-attach with the
# cache wiped that brings it all back from the store with `zeroblk attach
# vol` alone (the mount options too), except the NFS export, which a host
# applies only when its own flags repeat it; btrfs scrub finds no error;
# other mount options replace the remembered ones.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
modprobe ublk_drv
modprobe btrfs
modprobe nfsd
mnt=/tmp/zeroblk-provision/vol
nfs=/tmp/zeroblk-provision/nfs

# Fails unless the btrfs mounted at $mnt has every option given.
mounted_with() {
    local options
    options=$(findmnt -no OPTIONS "$mnt") || fail "nothing is mounted at $mnt"
    for wanted in "$@"; do
        case ",$options," in *,"$wanted",*) ;; *) fail "mount options '$options' lack $wanted";; esac
    done
}

# Fails if the btrfs mounted at $mnt has any option given.
mounted_without() {
    local options
    options=$(findmnt -no OPTIONS "$mnt") || fail "nothing is mounted at $mnt"
    for unwanted in "$@"; do
        case ",$options," in *,"$unwanted",*) fail "mount options '$options' have $unwanted";; esac
    done
}

step "attach, provision and share in one command, with the guide's btrfs options"
export_options="rw,sync,no_subtree_check,no_root_squash,127.0.0.1"
# btrfs may show ssd and space_cache=v2 by itself (a non-rotational device,
# mkfs's free space tree); commit=120 only when asked.
guide_options="ssd,commit=120,space_cache=v2"
device=$("$ZEROBLK" attach vol --size 2G --mount-point "$mnt" --nfs-options "$export_options" \
    --mount-options "$guide_options")
case "$device" in /dev/ublkb*) ;; *) fail "attach printed '$device'";; esac
mounted_with noatime compress=zstd:3 discard=async nosuid nodev ssd commit=120 space_cache=v2
[ "$(blkid -o value -s LABEL "$device")" = vol ] || fail "not labelled vol"
for subvolume in @ @home @snapshots; do
    btrfs subvolume show "$mnt/$subvolume" >/dev/null || fail "no subvolume $subvolume"
done
"$ZEROBLK" list | grep -q "^vol .*$mnt" || { "$ZEROBLK" list; fail "list shows no mount point"; }

step "files in @ and @home, snapshots of both"
echo "version 1" > "$mnt/@/etc-release"
head -c 6M /dev/urandom > "$mnt/@home/data"
sum1=$(sha256sum < "$mnt/@home/data")
home_snapshot=$("$ZEROBLK" snapshot create vol --subvolume @home --name one)
"$ZEROBLK" snapshot create "$mnt" >/dev/null
"$ZEROBLK" snapshot list | grep -q "one" || fail "snapshot list"
echo "version 2" > "$mnt/@/etc-release"
head -c 6M /dev/urandom > "$mnt/@home/data"
sum2=$(sha256sum < "$mnt/@home/data")
[ "$(sha256sum < "$home_snapshot/data")" = "$sum1" ] || fail "the snapshot changed"
touch "$home_snapshot/x" 2>/dev/null && fail "a snapshot is writable"

step "rollback keeps what it replaces"
"$ZEROBLK" snapshot rollback vol "$(basename "$home_snapshot")"
[ "$(sha256sum < "$mnt/@home/data")" = "$sum1" ] || fail "rollback did not restore @home"
kept=$(ls -d "$mnt"/@snapshots/@home.*.pre-rollback)
[ "$(sha256sum < "$kept/data")" = "$sum2" ] || fail "the pre-rollback snapshot lost data"

step "prune keeps what the policy says"
[ "$(ls "$mnt/@snapshots" | wc -l)" = 3 ] || fail "expected 3 snapshots"
"$ZEROBLK" snapshot prune vol --keep-hourly 1 --keep-daily 1
# All were taken this hour: the newest of each subvolume stays.
[ "$(ls "$mnt/@snapshots" | wc -l)" = 2 ] || { ls "$mnt/@snapshots"; fail "prune kept the wrong number"; }
[ -d "$kept" ] || fail "prune deleted the newest @home snapshot"

step "read the files and the snapshots over NFS (loopback)"
mkdir -p "$nfs"
mount -t nfs -o vers=3,nolock,soft,timeo=100 "127.0.0.1:$mnt" "$nfs" || fail "NFS mount"
[ "$(cat "$nfs/@/etc-release")" = "version 2" ] || fail "NFS: @"
[ "$(sha256sum < "$nfs/@home/data")" = "$sum1" ] || fail "NFS: @home"
[ "$(sha256sum < "$nfs/@snapshots/$(basename "$kept")/data")" = "$sum2" ] || fail "NFS: snapshot"
umount "$nfs"

step "a busy mount is not detached"
(cd "$mnt/@home" && sleep 60) &
holder=$!
sleep 0.5
"$ZEROBLK" detach vol 2>"$WORK/busy.err" && fail "detach succeeded on a busy mount"
grep -q busy "$WORK/busy.err" || { cat "$WORK/busy.err"; fail "no busy message"; }
[ -e "$device" ] || fail "device gone after a refused detach"
grep -q " $mnt btrfs" /proc/mounts || fail "unmounted after a refused detach"
kill "$holder"; wait "$holder" 2>/dev/null || true

step "detach, wipe the cache, attach by name alone"
"$ZEROBLK" detach vol
grep -q " $mnt " /proc/mounts && fail "still mounted after detach"
exportfs | grep -q "$mnt" && fail "still exported after detach"
[ -e "$device" ] && fail "device still there after detach"
rm -rf "$ZEROBLK_CACHE_DIR"
"$ZEROBLK" attach vol >/dev/null
grep -q " $mnt btrfs" /proc/mounts || fail "not mounted again"
mounted_with noatime compress=zstd:3 nosuid nodev ssd commit=120 space_cache=v2
exportfs | grep -q "$mnt" && fail "exported by what the volume remembers alone"
"$ZEROBLK" detach vol
"$ZEROBLK" attach vol --nfs-options "$export_options" >/dev/null
exportfs | grep -q "$mnt" || fail "not exported again with the flag repeated"
[ "$(sha256sum < "$mnt/@home/data")" = "$sum1" ] || fail "@home changed across the re-attach"
[ "$(sha256sum < "$kept/data")" = "$sum2" ] || fail "snapshot changed across the re-attach"
btrfs scrub start -B "$mnt" > "$WORK/scrub.out" || { cat "$WORK/scrub.out"; fail "scrub"; }
grep -q "no errors found" "$WORK/scrub.out" || { cat "$WORK/scrub.out"; fail "scrub found errors"; }
"$ZEROBLK" detach vol

step "other mount options replace the remembered ones; refused ones mount nothing"
"$ZEROBLK" attach vol --mount-options nossd,commit=60,relatime >/dev/null
mounted_with nossd commit=60 relatime
mounted_without ssd commit=120 noatime
"$ZEROBLK" detach vol
"$ZEROBLK" attach vol >/dev/null
mounted_with nossd commit=60 relatime
"$ZEROBLK" detach vol
"$ZEROBLK" attach vol --mount-options subvol=@home 2>"$WORK/refused.err" && fail "subvol= accepted"
grep -q "is refused: zeroblk mounts the top of the filesystem" "$WORK/refused.err" \
    || { cat "$WORK/refused.err"; fail "no reason for refusing subvol="; }
grep -q " $mnt " /proc/mounts && fail "mounted after a refused option"
echo "provision: ok"
