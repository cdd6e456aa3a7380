#!/usr/bin/env bash
# `zeroblk attach` over ublk: /dev/ublkbN appears, fio verifies, mkfs.ext4
# and fsck are clean, a whole-device discard works, detach commits, and a
# re-attach with the cache dir wiped reads everything back from the store.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"

modprobe ublk_drv
step "attach picks ublk"
device=$("$ZEROBLK" attach vol --size 1G)
case "$device" in /dev/ublkb*) ;; *) fail "attach printed '$device'";; esac
[ "$(blockdev --getsize64 "$device")" = 1073741824 ] || fail "wrong size"
"$ZEROBLK" list | grep -q "^vol .*ublk" || { "$ZEROBLK" list; fail "list does not show ublk"; }

step "fio write and verify, flushes included"
(cd "$WORK" && fio --name=verify --filename="$device" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size=16M --iodepth=16 --fsync=32 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >/dev/null) || fail "fio verify"

step "whole-device discard, mkfs.ext4, files, fsck"
blkdiscard "$device" || fail "blkdiscard"
mkfs.ext4 -q -F "$device"
mkdir -p /tmp/mnt && mount "$device" /tmp/mnt
head -c 8M /dev/urandom > /tmp/mnt/file
sha256sum /tmp/mnt/file | cut -d' ' -f1 > "$WORK/file.sum"
sync
umount /tmp/mnt
e2fsck -fn "$device" || fail "e2fsck"

step "detach, wipe the cache, attach again"
"$ZEROBLK" detach vol
[ -e "$device" ] && fail "device still there after detach"
rm -rf "$ZEROBLK_CACHE_DIR"
device=$("$ZEROBLK" attach vol --nbd-listen 127.0.0.1:10811)
e2fsck -fn "$device" || fail "e2fsck after re-attach"
mount "$device" /tmp/mnt
[ "$(sha256sum /tmp/mnt/file | cut -d' ' -f1)" = "$(cat "$WORK/file.sum")" ] || fail "file changed"
umount /tmp/mnt

step "--nbd-listen serves the same volume from the same daemon"
uri=nbd://127.0.0.1:10811/vol
from_device=$(dd if="$device" bs=1M count=8 iflag=direct status=none | sha256sum)
from_nbd=$(nbdsh -u "$uri" -c 'import sys; sys.stdout.buffer.write(h.pread(8 << 20, 0))' | sha256sum)
[ "$from_device" = "$from_nbd" ] || fail "NBD and the device disagree"
nbdsh -u "$uri" -c 'h.pwrite(b"n" * 4096, 900 << 20); h.flush()'
[ "$(dd if="$device" bs=4096 skip=$((900 * 256)) count=1 iflag=direct status=none | tr -d n | wc -c)" = 0 ] \
    || fail "a write over NBD is not seen on the device"

step "kill -9 of the daemon under load, then attach --recover: no I/O error"
(cd "$WORK" && fio --name=crash --filename="$device" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --offset=512M --size=32M --iodepth=16 --verify=crc32c \
    --verify_fatal=1 --do_verify=1 --output-format=terse >"$WORK/fio-crash.out" 2>&1) &
fio_pid=$!
sleep 4
daemon=$(daemon_pid)
[ -n "$daemon" ] || fail "no daemon pid"
kill -9 "$daemon"
sleep 1
"$ZEROBLK" list | grep -q "^vol .*dead" || { "$ZEROBLK" list; fail "list does not show the dead daemon"; }
recovered=$("$ZEROBLK" attach vol --recover)
[ "$recovered" = "$device" ] || fail "recovered '$recovered', not $device"
wait "$fio_pid" || { cat "$WORK/fio-crash.out"; fail "fio saw an error across the crash"; }
"$ZEROBLK" detach "$device"
echo "attach_ublk: ok"
