#!/usr/bin/env bash
# One suite of block-device checks, run unchanged over every way zeroblk
# reaches the kernel, as object_store runs one suite over every backend.
# TRANSPORT picks the way:
#   ublk        zeroblk attach --transport ublk  (/dev/ublkbN)
#   nbd         zeroblk attach --transport nbd   (/dev/nbdN, a socket pair)
#   nbd-client  zeroblk serve, and the kernel's nbd-client over TCP
# What only one transport has (recovery, --nbd-listen, TLS, a busy detach)
# is in that transport's own script.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
TRANSPORT="${TRANSPORT:?set TRANSPORT to ublk, nbd or nbd-client}"
SIZE=$((1 << 30))
MIB=$((1 << 20))

case "$TRANSPORT" in
    ublk) modprobe ublk_drv ;;
    nbd | nbd-client) modprobe nbd nbds_max=2 ;;
    *) fail "no transport '$TRANSPORT'" ;;
esac

# Brings the volume up as a block device; sets DEVICE.
connect() {
    case "$TRANSPORT" in
        ublk | nbd) DEVICE=$("$ZEROBLK" attach vol --transport "$TRANSPORT") || fail "attach" ;;
        nbd-client)
            start_serve 10809 vol
            nbd-client 127.0.0.1 10809 /dev/nbd0 -N vol -b 4096 -t 300 >/dev/null \
                || fail "nbd-client could not connect"
            DEVICE=/dev/nbd0
            ;;
    esac
}

# Takes the device down; everything acknowledged is committed after.
disconnect() {
    case "$TRANSPORT" in
        ublk | nbd) "$ZEROBLK" detach vol || fail "detach" ;;
        nbd-client) nbd-client -d /dev/nbd0 >/dev/null; stop_serve ;;
    esac
}

# The sha256 of LEN MiB of the device at OFFSET MiB, read past the page cache.
sum_of() {
    dd if="$DEVICE" bs=1M skip="$1" count="$2" iflag=direct status=none | sha256sum | cut -d' ' -f1
}
zero_sum=$(head -c $((4 * MIB)) /dev/zero | sha256sum | cut -d' ' -f1)

"$ZEROBLK" volume create vol --size 1G >/dev/null
connect
step "$TRANSPORT: $DEVICE is the volume's size"
[ "$(blockdev --getsize64 "$DEVICE")" = "$SIZE" ] || fail "size $(blockdev --getsize64 "$DEVICE")"

step "$TRANSPORT: fio writes and verifies, with flushes"
(cd "$WORK" && fio --name=verify --filename="$DEVICE" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size=16M --iodepth=16 --fsync=32 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >/dev/null) || fail "fio verify"

step "$TRANSPORT: a synchronous (FUA) write reads back"
head -c $((4 * MIB)) /dev/urandom >"$WORK/pattern"
dd if="$WORK/pattern" of="$DEVICE" bs=1M seek=100 oflag=direct,dsync status=none || fail "dsync write"
[ "$(sum_of 100 4)" = "$(sha256sum <"$WORK/pattern" | cut -d' ' -f1)" ] || fail "dsync write read back"

step "$TRANSPORT: write-zeroes and discard read back as zeroes"
blkdiscard -z -o $((100 * MIB)) -l $((4 * MIB)) "$DEVICE" || fail "blkdiscard -z"
[ "$(sum_of 100 4)" = "$zero_sum" ] || fail "write-zeroes left data"
dd if="$WORK/pattern" of="$DEVICE" bs=1M seek=200 oflag=direct status=none
blkdiscard -o $((200 * MIB)) -l $((4 * MIB)) "$DEVICE" || fail "blkdiscard"
[ "$(sum_of 200 4)" = "$zero_sum" ] || fail "discard left data"

step "$TRANSPORT: a whole-device discard, mkfs.ext4, a file, fsck"
blkdiscard "$DEVICE" || fail "whole-device discard"
mkfs.ext4 -q -F "$DEVICE"
mkdir -p /tmp/mnt && mount "$DEVICE" /tmp/mnt
head -c 8M /dev/urandom >/tmp/mnt/file
sha256sum /tmp/mnt/file | cut -d' ' -f1 >"$WORK/file.sum"
sync
umount /tmp/mnt
e2fsck -fn "$DEVICE" >/dev/null || fail "e2fsck"

step "$TRANSPORT: down, the cache dir wiped, up again: all from the store"
disconnect
rm -rf "$ZEROBLK_CACHE_DIR"
connect
e2fsck -fn "$DEVICE" >/dev/null || fail "e2fsck after the cache was wiped"
mount "$DEVICE" /tmp/mnt
[ "$(sha256sum /tmp/mnt/file | cut -d' ' -f1)" = "$(cat "$WORK/file.sum")" ] || fail "the file changed"
umount /tmp/mnt
disconnect
echo "transport_suite: ok"
