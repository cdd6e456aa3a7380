#!/usr/bin/env bash
# Crashes over ublk: `kill -9` of the attach daemon at a random moment under
# load, three ways.
#   kept   a tagged writer (tests/crash/writer.py) on /dev/ublkbN; the
#          daemon is killed, `attach --recover` takes the device back, and
#          the device's blocks are dumped with the writer's log
#   lost   the same, then `zeroblk detach` removes the dead daemon's device,
#          the cache dir is deleted, an attach is refused (its log is lost),
#          and the volume attached again with --force is dumped
#   fs     btrfs under a file workload with fsyncs; after the kill, the
#          device is removed and the cache dir deleted, and the volume
#          attached again (--force) must pass `btrfs check` and mount
# The logs and dumps go to $ZEROBLK_VM_OUT, where tests/vm.rs checks every
# block against the flush model (tests/common/crash_model.rs).
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
out="${ZEROBLK_VM_OUT:?set ZEROBLK_VM_OUT to a directory shared with the host}"
writer="$(dirname "$0")/../crash/writer.py"
blocks=4096
modprobe ublk_drv
modprobe btrfs

pause() { sleep "$(( $1 + RANDOM % $2 )).$(( RANDOM % 10 ))"; }
# Waits until the writer's log ($1) has $2 writes: Python starts slowly here.
writer_running() {
    for _ in $(seq 1 600); do
        [ "$(cat "$1" 2>/dev/null | grep -c '^W')" -ge "$2" ] && return 0
        sleep 0.1
    done
    fail "the writer did not start"
}
note() { echo "[${SECONDS}s] $*"; }
dump() { dd if="$1" of="$2" bs=1M iflag=direct status=none || fail "cannot read $1"; }

step "kept: kill -9 under a tagged writer, attach --recover, twice"
"$ZEROBLK" volume create kept --size $((blocks * 4096)) --chunk-size 64K >/dev/null
device=$("$ZEROBLK" attach kept --commit-interval 300ms)
for round in 0 1; do
    /usr/bin/python3 "$writer" "$device" "$out/kept-$round.log" $((1 + round * 10000000)) $blocks $round \
        2>>"$WORK/writer.err" &
    writer_pid=$!
    writer_running "$out/kept-$round.log" 100
    note "writer running"
    pause 1 3
    kill -9 "$(daemon_pid)"
    pause 0 2
    note "killed"
    recovered=$("$ZEROBLK" attach kept --recover --commit-interval 300ms)
    [ "$recovered" = "$device" ] || fail "recovered '$recovered', not $device"
    sleep 1
    note "recovered"
    kill "$writer_pid"; wait "$writer_pid" || true
    dump "$device" "$out/kept-$round.img"
    echo "round $round: $(grep -c '^W' "$out/kept-$round.log") writes, $(grep -c '^F' "$out/kept-$round.log") flushes"
done
"$ZEROBLK" detach kept >/dev/null

step "lost: kill -9 under a tagged writer, detach the dead device, delete the cache dir"
"$ZEROBLK" volume create lost --size $((blocks * 4096)) --chunk-size 64K >/dev/null
device=$("$ZEROBLK" attach lost --commit-interval 300ms)
/usr/bin/python3 "$writer" "$device" "$out/lost.log" 1 $blocks 7 2>>"$WORK/writer.err" &
writer_pid=$!
writer_running "$out/lost.log" 100
pause 1 3
kill -9 "$(daemon_pid)"
"$ZEROBLK" detach lost || fail "detach of a dead daemon"
[ -e "$device" ] && fail "$device is still there after detach"
wait "$writer_pid" || true
tail -n 1 "$WORK/writer.err" | grep -q "writer stopped" || fail "the writer saw no error"
rm -rf "$ZEROBLK_CACHE_DIR"
# zeroblk cannot tell a lost log from one elsewhere: only --force opens it.
if "$ZEROBLK" attach lost >"$WORK/refused.out" 2>&1; then fail "the dead writer's lost log was taken over from without --force"; fi
grep -q -- "--force takes the volume over" "$WORK/refused.out" || { cat "$WORK/refused.out"; fail "the refusal does not name --force"; }
device=$("$ZEROBLK" attach lost --force)
dump "$device" "$out/lost.img"
"$ZEROBLK" detach lost >/dev/null
echo "$(grep -c '^W' "$out/lost.log") writes before the crash"

step "fs: btrfs under load, kill -9, the cache dir lost: btrfs check is clean"
mnt=/tmp/zeroblk-crash
mkdir -p "$mnt"
device=$("$ZEROBLK" attach fs --size 1G --commit-interval 500ms)
mkfs.btrfs -q -f "$device" 2>/dev/null
note "mkfs done"
mount -o compress=zstd "$device" "$mnt"
(
    i=0
    while :; do
        dd if=/dev/urandom of="$mnt/f$((i % 40))" bs=64k count=$((RANDOM % 32 + 1)) conv=fsync status=none || break
        rm -f "$mnt/f$(((i + 20) % 40))"
        [ $((i % 8)) = 0 ] && { btrfs subvolume snapshot -r "$mnt" "$mnt/s$((i / 8 % 4))" >/dev/null 2>&1 || true; }
        i=$((i + 1))
    done
) &
load=$!
pause 4 4
kill -9 "$(daemon_pid)"
"$ZEROBLK" detach fs >/dev/null || fail "detach of a dead daemon"
wait "$load" || true
umount "$mnt" 2>/dev/null || umount -l "$mnt"
rm -rf "$ZEROBLK_CACHE_DIR"
note "killed and detached"
device=$("$ZEROBLK" attach fs --force)
btrfs check --readonly "$device" >"$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "btrfs check after the crash"; }
mount "$device" "$mnt" || fail "mount after the crash"
find "$mnt" -type f | head -n 1000 | xargs -r cat >/dev/null || fail "reading the files back"
echo "$(find "$mnt" -maxdepth 1 -name 'f*' | wc -l) files survive"
umount "$mnt"
"$ZEROBLK" detach fs >/dev/null
echo "crash_ublk: ok"
