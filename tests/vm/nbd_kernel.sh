#!/usr/bin/env bash
# The kernel's NBD client against `zeroblk serve`: fio verify on the raw
# device, mkfs.ext4 (with its whole-device discard), files that survive a
# server restart and a wiped cache dir, and a clean fsck.
. "$(dirname "$0")/lib.sh"

modprobe nbd nbds_max=2
"$ZEROBLK" volume create k --size 2G
start_serve 10809 k
nbd-client 127.0.0.1 10809 /dev/nbd0 -N k -b 4096 -t 300 || fail "nbd-client could not connect"
[ "$(blockdev --getsize64 /dev/nbd0)" = 2147483648 ] || fail "wrong device size"

step "fio write and verify on /dev/nbd0"
(cd "$WORK" && fio --name=verify --filename=/dev/nbd0 --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size=16M --iodepth=16 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >/dev/null) || fail "fio verify"

step "mkfs.ext4 with a whole-device discard, then files"
start=$(date +%s)
mkfs.ext4 -q -F -E discard /dev/nbd0
echo "mkfs.ext4 took $(( $(date +%s) - start )) s"
mkdir -p /tmp/mnt
mount /dev/nbd0 /tmp/mnt
head -c 20M /dev/urandom > /tmp/mnt/blob
sha256sum /tmp/mnt/blob | cut -d' ' -f1 > "$WORK/blob.sum"
sync
umount /tmp/mnt
nbd-client -d /dev/nbd0
stop_serve

step "after a restart with the cache dir wiped: fsck clean, files intact"
rm -rf "$ZEROBLK_CACHE_DIR"
start_serve 10809 k
nbd-client 127.0.0.1 10809 /dev/nbd0 -N k -b 4096 -t 300 || fail "nbd-client could not reconnect"
e2fsck -fn /dev/nbd0 || fail "e2fsck found errors"
mount /dev/nbd0 /tmp/mnt
[ "$(sha256sum /tmp/mnt/blob | cut -d' ' -f1)" = "$(cat "$WORK/blob.sum")" ] || fail "blob changed"
umount /tmp/mnt
nbd-client -d /dev/nbd0
stop_serve
echo "nbd_kernel: ok"
