#!/usr/bin/env bash
# Online growth: `zeroblk volume resize` of an attached volume, over ublk
# and the kernel NBD transport, raw and with btrfs. The volume always grows
# (committed, so the next attach has the new size); the device grows in
# place where the kernel can (NBD_SET_SIZE_BLOCKS; ublk's UPDATE_SIZE,
# Linux 6.16 on), else the one line of the answer says so. The data written
# before survives, btrfs fills the device (at once, or at the next attach),
# and shrinking is refused.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
modprobe ublk_drv
modprobe nbd
modprobe btrfs
small=$((256 << 20))
large=$((512 << 20))

size_of() { blockdev --getsize64 "$1"; }

# The one-line answer of `volume resize NAME --size 512M` while attached at
# DEVICE, in ANSWER; sets GREW_ONLINE to yes or no, checking the answer says
# which.
grow_attached() {
    local name="$1" device="$2" answer
    answer=$("$ZEROBLK" volume resize "$name" --size 512M) || fail "resize of attached $name failed"
    echo "answer: $answer"
    ANSWER=$answer
    [ "$(printf '%s\n' "$answer" | wc -l)" = 1 ] || fail "the answer is not one line"
    case "$(size_of "$device")" in
    "$large")
        GREW_ONLINE=yes
        case "$answer" in *"and $device grew from 256M to 512M"*) ;; *) fail "the answer does not say $device grew";; esac
        ;;
    "$small")
        GREW_ONLINE=no
        case "$answer" in
        *"grew from 256M to 512M (committed); $device keeps 256M until the volume is detached and attached again"*"Linux 6.16"*) ;;
        *) fail "$device kept its size, and the answer does not say why and until when";;
        esac
        ;;
    *) fail "$device is $(size_of "$device") bytes";;
    esac
    "$ZEROBLK" volume info "$name" | grep -q "^size: *512M" || { "$ZEROBLK" volume info "$name"; fail "$name is not 512M in the store"; }
}

# Checks shrinking NAME is refused, with the reason.
shrink_refused() {
    local refusal
    if refusal=$("$ZEROBLK" volume resize "$1" --size 128M 2>&1); then fail "shrinking $1 was accepted"; fi
    case "$refusal" in *"can only grow"*) ;; *) fail "shrinking $1 refused for another reason: $refusal";; esac
}

# The same checks of a raw device over TRANSPORT, on volume NAME.
raw_device() {
    local transport="$1" name="$2" device tail_sum=""
    step "$transport: attach $name at 256M, write, grow it to 512M while attached"
    device=$("$ZEROBLK" attach "$name" --size 256M --cache-size 64M --transport "$transport")
    head -c 4M /dev/urandom >"$WORK/$name.head"
    dd if="$WORK/$name.head" of="$device" bs=1M seek=200 oflag=direct conv=fsync status=none
    grow_attached "$name" "$device"
    if [ "$GREW_ONLINE" = yes ]; then
        step "$transport: the new space takes writes at once"
        head -c 1M /dev/urandom >"$WORK/$name.tail"
        dd if="$WORK/$name.tail" of="$device" bs=1M seek=400 oflag=direct conv=fsync status=none
        tail_sum=$(sha256sum <"$WORK/$name.tail")
        [ "$(dd if="$device" bs=1M skip=400 count=1 iflag=direct status=none | sha256sum)" = "$tail_sum" ] \
            || fail "the write past the old end reads back wrong"
    fi
    [ "$(dd if="$device" bs=1M skip=200 count=4 iflag=direct status=none | sha256sum)" = "$(sha256sum <"$WORK/$name.head")" ] \
        || fail "the data written before the resize changed"
    shrink_refused "$name"
    [ "$(size_of "$device")" -ge "$small" ] || fail "a refused shrink changed $device"

    step "$transport: detach and attach again: 512M, the data intact"
    "$ZEROBLK" detach "$name"
    device=$("$ZEROBLK" attach "$name" --cache-size 64M --transport "$transport")
    [ "$(size_of "$device")" = "$large" ] || fail "attached again, $device is $(size_of "$device") bytes"
    [ "$(dd if="$device" bs=1M skip=200 count=4 iflag=direct status=none | sha256sum)" = "$(sha256sum <"$WORK/$name.head")" ] \
        || fail "the data written before the resize changed across the re-attach"
    if [ -n "$tail_sum" ]; then
        [ "$(dd if="$device" bs=1M skip=400 count=1 iflag=direct status=none | sha256sum)" = "$tail_sum" ] \
            || fail "the write past the old end was lost across the re-attach"
    fi
    "$ZEROBLK" detach "$name"
    echo "$transport: grew online: $GREW_ONLINE"
}

raw_device ublk overublk
UBLK_ONLINE=$GREW_ONLINE
raw_device nbd overnbd
[ "$GREW_ONLINE" = yes ] || fail "the kernel NBD device did not grow while connected"

step "the volume not attached: the offline path grows it"
"$ZEROBLK" volume create offline --size 256M >/dev/null
"$ZEROBLK" volume resize offline --size 512M | grep -q "offline: 256M -> 512M" || fail "the offline resize"
shrink_refused offline

# The same with btrfs mounted on the device, over TRANSPORT, on volume NAME:
# the filesystem fills the grown device at once, or at the next attach.
provisioned() {
    local transport="$1" name="$2" device data_sum
    local mnt="/tmp/zeroblk-resize/$name"
    fs_size() { btrfs filesystem show --raw "$mnt" | awk '$1 == "devid" { print $4 }'; }
    step "$transport, btrfs: attach with a mount point at 256M, grow to 512M while mounted"
    device=$("$ZEROBLK" attach "$name" --size 256M --cache-size 64M --transport "$transport" --mount-point "$mnt")
    head -c 8M /dev/urandom >"$mnt/@home/data"
    sync
    data_sum=$(sha256sum <"$mnt/@home/data")
    [ "$(fs_size)" = "$small" ] || fail "btrfs is $(fs_size) bytes, not 256M"
    grow_attached "$name" "$device"
    if [ "$GREW_ONLINE" = yes ]; then
        [ "$(fs_size)" = "$large" ] || fail "the device grew, btrfs did not: $(fs_size) bytes"
        case "$(tail -n 1 <<<"$ANSWER")" in *", and so did the filesystem at $mnt") ;; *) fail "the answer does not say btrfs grew";; esac
    else
        [ "$(fs_size)" = "$small" ] || fail "btrfs grew past its device: $(fs_size) bytes"
    fi
    df -B1 "$mnt"

    step "$transport, btrfs: detach and attach again: the filesystem fills 512M, the data intact"
    "$ZEROBLK" detach "$name"
    device=$("$ZEROBLK" attach "$name" --cache-size 64M --transport "$transport")
    [ "$(size_of "$device")" = "$large" ] || fail "attached again, $device is $(size_of "$device") bytes"
    [ "$(fs_size)" = "$large" ] || fail "attached again, btrfs is $(fs_size) bytes, not 512M"
    df -B1 "$mnt"
    [ "$(sha256sum <"$mnt/@home/data")" = "$data_sum" ] || fail "the file changed"
    btrfs scrub start -B "$mnt" >/dev/null || fail "btrfs scrub found errors"
    "$ZEROBLK" detach "$name"
}

provisioned ublk fsublk
provisioned nbd fsnbd
[ "$GREW_ONLINE" = yes ] || fail "the kernel NBD device did not grow while connected"
echo "ublk grew online: $UBLK_ONLINE (this kernel: $(uname -r))"
echo "resize: ok"
