#!/usr/bin/env bash
# `zeroblk attach` over the kernel NBD transport: the device appears, fio
# verifies, list shows it, a second attach and a busy detach are refused,
# detach commits; attached again with the cache dir wiped, data is intact.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"

modprobe nbd nbds_max=4
step "attach creates the volume and prints the device"
device=$("$ZEROBLK" attach vol --size 1G --transport auto)
case "$device" in /dev/nbd*) ;; *) fail "attach printed '$device'";; esac
[ "$(blockdev --getsize64 "$device")" = 1073741824 ] || fail "wrong size"
"$ZEROBLK" list | grep -q "vol .*$device .*attached" || { "$ZEROBLK" list; fail "list does not show it"; }
"$ZEROBLK" list --json | grep -q '"transport": "nbd"' || fail "list --json"
if "$ZEROBLK" attach vol 2>"$WORK/err"; then fail "a second attach succeeded"; fi
grep -q "already attached" "$WORK/err" || fail "second attach: $(cat "$WORK/err")"

step "fio write and verify"
(cd "$WORK" && fio --name=verify --filename="$device" --ioengine=libaio --direct=1 \
    --rw=randwrite --bs=4k --size=16M --iodepth=16 --verify=crc32c --verify_fatal=1 \
    --do_verify=1 --output-format=terse >/dev/null) || fail "fio verify"

step "a mounted device is not detached"
mkfs.ext4 -q -F "$device"
mkdir -p /tmp/mnt && mount "$device" /tmp/mnt
if "$ZEROBLK" detach vol 2>"$WORK/err"; then fail "detached a mounted device"; fi
grep -q "mounted" "$WORK/err" || fail "busy detach: $(cat "$WORK/err")"
head -c 8M /dev/urandom > /tmp/mnt/file
sha256sum /tmp/mnt/file | cut -d' ' -f1 > "$WORK/file.sum"
umount /tmp/mnt

step "detach commits and removes the device"
"$ZEROBLK" detach "$device"
"$ZEROBLK" list | grep -q "^vol " && fail "still listed after detach"
[ "$(cat /sys/block/${device#/dev/}/size)" = 0 ] || fail "device still connected"

step "attach again with the cache dir wiped: served from the store"
rm -rf "$ZEROBLK_CACHE_DIR"
device=$("$ZEROBLK" attach vol)
e2fsck -fn "$device" || fail "e2fsck found errors"
mount "$device" /tmp/mnt
[ "$(sha256sum /tmp/mnt/file | cut -d' ' -f1)" = "$(cat "$WORK/file.sum")" ] || fail "file changed"
umount /tmp/mnt
"$ZEROBLK" detach vol
echo "attach_nbd: ok"
