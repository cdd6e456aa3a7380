#!/usr/bin/env bash
# Read-only attaches over ublk, beside the volume's writer on the same
# host: a snapshot (`attach NAME@SNAP`) and a follower (`attach --read-only
# --follow NAME`). Both devices are read-only and refuse writes; the
# snapshot reads what it pinned, the follower the writer's commits as they
# land; each detaches by its name or its device. The snapshot is read-only
# over the kernel's NBD driver too.
# The host made the store (ZEROBLK_VM_OUT/store): volume data, whose
# snapshot snap holds snap.img at offset 0, and whose newest commit holds
# newest.img there (8 MiB each).
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
out="${ZEROBLK_VM_OUT:?set ZEROBLK_VM_OUT to the directory the host made the store in}"
cp -a "$out/store" "$WORK/store"
modprobe ublk_drv

# The hash of the first 8 MiB of a device, read past the page cache (a
# follower's data changes under it), or of a file.
head8() { dd if="$1" bs=1M count=8 iflag=direct status=none | sha256sum | cut -d' ' -f1; }
hash_of() { sha256sum <"$1" | cut -d' ' -f1; }

step "the writer, a snapshot and a follower of one volume, attached at once"
writer=$("$ZEROBLK" attach data --commit-interval 500ms) || fail "attach data"
snap=$("$ZEROBLK" attach data@snap) || fail "attach data@snap"
follower=$("$ZEROBLK" attach --read-only --follow data) || fail "attach --read-only --follow data"
"$ZEROBLK" list
"$ZEROBLK" list | grep -q "^data  .*read-write" || fail "list does not show the writer"
"$ZEROBLK" list | grep -q "^data@snap .*read-only" || fail "list does not show the snapshot"
"$ZEROBLK" list | grep -q "^data  .*following" || fail "list does not show the follower"
if "$ZEROBLK" attach data@snap 2>"$WORK/twice.err"; then fail "data@snap attached twice"; fi
grep -q "zeroblk detach data@snap" "$WORK/twice.err" || fail "a second attach: $(cat "$WORK/twice.err")"

step "the read-only devices are read-only and refuse writes"
for device in "$snap" "$follower"; do
    [ "$(blockdev --getro "$device")" = 1 ] || fail "$device is not read-only"
    if dd if=/dev/zero of="$device" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
        fail "a write to $device succeeded"
    fi
done
[ "$(blockdev --getro "$writer")" = 0 ] || fail "the writer's device is read-only"

step "each reads what it should"
[ "$(head8 "$snap")" = "$(hash_of "$out/snap.img")" ] || fail "the snapshot reads other data"
[ "$(head8 "$follower")" = "$(hash_of "$out/newest.img")" ] || fail "the follower reads other data"
[ "$(head8 "$writer")" = "$(hash_of "$out/newest.img")" ] || fail "the writer reads other data"

step "a write to the writer's device shows on the follower's"
head -c 8M /dev/urandom >"$WORK/third.img"
dd if="$WORK/third.img" of="$writer" bs=1M oflag=direct conv=fsync status=none
started=$SECONDS
until [ "$(head8 "$follower")" = "$(hash_of "$WORK/third.img")" ]; do
    [ $((SECONDS - started)) -lt 30 ] || fail "the follower did not show the write within 30 s"
    sleep 0.2
done
echo "the follower showed it after about $((SECONDS - started)) s"
[ "$(head8 "$snap")" = "$(hash_of "$out/snap.img")" ] || fail "the snapshot changed"

step "detach the snapshot by name, the follower by its device, the writer last"
"$ZEROBLK" detach data@snap || fail "detach data@snap"
"$ZEROBLK" detach "$follower" || fail "detach $follower"
[ -e "$snap" ] && fail "$snap is still there"
[ -e "$follower" ] && fail "$follower is still there"
[ "$(head8 "$writer")" = "$(hash_of "$WORK/third.img")" ] || fail "the writer lost its write"

step "the snapshot over the kernel's NBD driver is read-only too"
modprobe nbd nbds_max=2
nbd_snap=$("$ZEROBLK" attach data@snap --transport nbd) || fail "attach data@snap --transport nbd"
[ "$(blockdev --getro "$nbd_snap")" = 1 ] || fail "$nbd_snap is not read-only"
if dd if=/dev/zero of="$nbd_snap" bs=4096 count=1 oflag=direct status=none 2>/dev/null; then
    fail "a write to $nbd_snap succeeded"
fi
[ "$(head8 "$nbd_snap")" = "$(hash_of "$out/snap.img")" ] || fail "the snapshot reads other data over NBD"
"$ZEROBLK" detach data@snap || fail "detach data@snap (nbd)"
"$ZEROBLK" detach data || fail "detach data"
[ -e "$writer" ] && fail "$writer is still there"
echo "attach_readers: ok"
