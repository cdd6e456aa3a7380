#!/usr/bin/env bash
# What only `zeroblk attach` over ublk has (the checks every transport
# shares are in transport_suite.sh): auto picks ublk, --nbd-listen serves
# the same volume from the same daemon, `zeroblk status` and the metrics
# show the ublk device and its NBD server, and after a kill -9 of the daemon
# under load, attach --recover takes the device back without an I/O error.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"

modprobe ublk_drv
step "attach picks ublk, and serves NBD beside it"
device=$("$ZEROBLK" attach vol --size 1G --nbd-listen 127.0.0.1:10811 --metrics-listen 127.0.0.1:9109)
case "$device" in /dev/ublkb*) ;; *) fail "attach printed '$device'";; esac
"$ZEROBLK" list | grep -q "^vol .*ublk" || { "$ZEROBLK" list; fail "list does not show ublk"; }

step "--nbd-listen serves the same volume from the same daemon"
head -c 8M /dev/urandom | dd of="$device" bs=1M oflag=direct status=none
uri=nbd://127.0.0.1:10811/vol
from_device=$(dd if="$device" bs=1M count=8 iflag=direct status=none | sha256sum)
from_nbd=$(nbdsh -u "$uri" -c 'import sys; sys.stdout.buffer.write(h.pread(8 << 20, 0))' | sha256sum)
[ "$from_device" = "$from_nbd" ] || fail "NBD and the device disagree"
nbdsh -u "$uri" -c 'h.pwrite(b"n" * 4096, 900 << 20); h.flush()'
[ "$(dd if="$device" bs=4096 skip=$((900 * 256)) count=1 iflag=direct status=none | tr -d n | wc -c)" = 0 ] \
    || fail "a write over NBD is not seen on the device"

step "zeroblk status and the metrics show the ublk device and its writes"
status=$("$ZEROBLK" status --json vol)
echo "$status" | jq -e '.[0].transport == "ublk" and .[0].device == "'"$device"'"
    and .[0].ublk_queues >= 1 and .[0].ublk_depth >= 1 and .[0].nbd_clients != null
    and .[0].volumes[0].requests.bytes_written >= 8388608
    and (.[0].volumes[0].lease.holder | startswith("pid "))' >/dev/null \
    || { echo "$status"; fail "status does not show the ublk device and its writes"; }
"$ZEROBLK" status vol | grep -q "attached at $device (ublk, " || { "$ZEROBLK" status vol; fail "status does not say how vol is attached"; }
metrics=$(curl -sf http://127.0.0.1:9109/metrics) || fail "no metrics at 127.0.0.1:9109"
echo "$metrics" | grep -q "^zeroblk_ublk_queues{device=\"$device\"} [1-9]" || fail "metrics lack the ublk queues"
echo "$metrics" | grep -q '^zeroblk_volume_written_bytes_total{volume="vol"} [1-9]' || fail "metrics lack vol's writes"

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
[ -e "$device" ] && fail "device still there after detach"
echo "attach_ublk: ok"
