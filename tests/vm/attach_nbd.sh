#!/usr/bin/env bash
# What only `zeroblk attach` over the kernel NBD transport has (the checks
# every transport shares are in transport_suite.sh): auto picks nbd when
# ublk is not loaded, list shows it, a second attach and the detach of a
# mounted device are refused, and detach disconnects the device.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"

modprobe nbd nbds_max=4
step "attach creates the volume and prints the device"
device=$("$ZEROBLK" attach vol --size 1G --transport auto)
case "$device" in /dev/nbd*) ;; *) fail "attach printed '$device'";; esac
"$ZEROBLK" list | grep -q "vol .*$device .*attached" || { "$ZEROBLK" list; fail "list does not show it"; }
"$ZEROBLK" list --json | grep -q '"transport": "nbd"' || fail "list --json"
if "$ZEROBLK" attach vol 2>"$WORK/err"; then fail "a second attach succeeded"; fi
grep -q "already attached" "$WORK/err" || fail "second attach: $(cat "$WORK/err")"

step "a mounted device is not detached"
mkfs.ext4 -q -F "$device"
mkdir -p /tmp/mnt && mount "$device" /tmp/mnt
if "$ZEROBLK" detach vol 2>"$WORK/err"; then fail "detached a mounted device"; fi
grep -q "mounted" "$WORK/err" || fail "busy detach: $(cat "$WORK/err")"
umount /tmp/mnt

step "detach commits and disconnects the device"
"$ZEROBLK" detach "$device"
"$ZEROBLK" list | grep -q "^vol " && fail "still listed after detach"
[ "$(cat /sys/block/${device#/dev/}/size)" = 0 ] || fail "device still connected"
echo "attach_nbd: ok"
