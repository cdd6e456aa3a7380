#!/usr/bin/env bash
# Backups of a provisioned volume's btrfs snapshots, end to end on ublk:
# an age-encrypted full push, files changed, an incremental push (its
# upload counted against `btrfs send -p`), a push killed with -9 and
# resumed, the local snapshots deleted except the next parent, the chain
# restored into a fresh volume and compared with `diff -r` and `btrfs
# check`; without the identity, verify and restore fail in one line; a
# flipped byte is named by verify; a prune keeps the chain restorable.
. "$(dirname "$0")/lib.sh"
export ZEROBLK_RUNTIME_DIR="$WORK/run"
modprobe ublk_drv
modprobe btrfs
mnt=/tmp/zeroblk-backup/vol
fresh=/tmp/zeroblk-backup/fresh
backups="file://$WORK/backups"
# A field of the JSON object on stdin (python3 is the host's, over 9p).
json_field() { /usr/bin/python3 -c "import json, sys; print(json.load(sys.stdin)[sys.argv[1]])" "$1"; }
# The names of the snapshots `backup list` shows, oldest first.
listed() { "$ZEROBLK" backup list "$backups" --json | /usr/bin/python3 -c "import json, sys; print('\n'.join(s['name'] for s in json.load(sys.stdin)['snapshots']))"; }

step "attach and provision; write files into @home"
"$ZEROBLK" attach vol --size 2G --cache-size 64M --mount-point "$mnt" >/dev/null
mkdir -p "$mnt/@home/docs"
head -c 4M /dev/urandom > "$mnt/@home/data"
for i in $(seq 1 50); do seq 1 "$((i * 100))" > "$mnt/@home/docs/file$i"; done
age-keygen -o "$WORK/identity" 2>/dev/null
age-keygen -o "$WORK/other" 2>/dev/null
recipient=$(age-keygen -y "$WORK/identity")

step "a full push, encrypted"
out=$("$ZEROBLK" backup push vol --subvolume @home --to "$backups" --age-recipient "$recipient")
echo "$out"
echo "$out" | grep -q "a full stream" || fail "the first push was not full"
first=$(listed)
[ -n "$first" ] || fail "nothing listed after the first push"

step "change files; an incremental push uploads about what btrfs send -p sends"
head -c 1M /dev/urandom | dd of="$mnt/@home/data" bs=1M seek=3 conv=notrunc status=none
echo changed >> "$mnt/@home/docs/file7"
rm "$mnt/@home/docs/file9"
head -c 2M /dev/urandom > "$mnt/@home/new"
out=$("$ZEROBLK" backup push vol --subvolume @home --to "$backups" --age-recipient "$recipient" --json)
second=$(echo "$out" | json_field snapshot)
[ "$(echo "$out" | json_field parent)" = "$first" ] || fail "the second push was not against $first: $out"
uploaded=$(echo "$out" | json_field uploaded_bytes)
sent=$(btrfs send -q -p "$mnt/@snapshots/$first" "$mnt/@snapshots/$second" | wc -c)
echo "uploaded $uploaded bytes for a btrfs send -p stream of $sent bytes"
[ "$uploaded" -le $((sent * 12 / 10)) ] || fail "uploaded $uploaded > 1.2 x $sent"

step "a push killed with -9 resumes without sending its stored chunks again"
head -c 8M /dev/urandom > "$mnt/@home/big"
"$ZEROBLK" backup push vol --subvolume @home --to "$backups" --age-recipient "$recipient" \
    --chunk-size 1M --full-every 2 > "$WORK/killed.out" 2>&1 &
pusher=$!
chunks() { find "$WORK/backups/data" -type f | wc -l; }
before=$(chunks)
for _ in $(seq 1 600); do
    [ "$(chunks)" -ge $((before + 3)) ] && break
    kill -0 "$pusher" 2>/dev/null || { cat "$WORK/killed.out"; fail "the push ended before it could be killed"; }
    sleep 0.1
done
kill -9 "$pusher"; wait "$pusher" || true
[ "$(listed | wc -l)" = 2 ] || fail "a killed push is listed"
out=$("$ZEROBLK" backup push vol --subvolume @home --to "$backups" --age-recipient "$recipient" --chunk-size 1M --full-every 2)
echo "$out"
echo "$out" | grep -q "resuming an interrupted push" || fail "the push did not resume"
third=$(listed | tail -n 1)

step "the newest pushed snapshot stays; the others are deleted here"
"$ZEROBLK" snapshot delete vol "$third" 2>"$WORK/refused" && fail "the next parent was deleted"
grep -q -- "--force" "$WORK/refused" || fail "no --force in: $(cat "$WORK/refused")"
"$ZEROBLK" snapshot delete vol "$first" "$second"

step "without the identity, verify and restore fail in one line"
"$ZEROBLK" backup verify "$backups" 2>"$WORK/err" && fail "verify without the identity"
grep -q -- "--age-identity" "$WORK/err" || fail "verify said: $(cat "$WORK/err")"
"$ZEROBLK" backup restore "$backups" --snapshot "$second" --to "$fresh/x" --age-identity "$WORK/other" 2>"$WORK/err" \
    && fail "restore with another identity"
[ "$(wc -l < "$WORK/err")" -le 2 ] || fail "more than a line: $(cat "$WORK/err")"
"$ZEROBLK" backup verify "$backups" --age-identity "$WORK/identity" || fail "verify"

step "restore the chain into a fresh volume"
"$ZEROBLK" attach fresh --size 2G --cache-size 64M --mount-point "$fresh" >/dev/null
"$ZEROBLK" backup restore "$backups" --snapshot "$second" --to "$fresh/@/restored" --age-identity "$WORK/identity"
# The source's copy of $second is gone: compare with the files as they are
# now, less what the third push added.
mkdir -p "$WORK/expected"
cp -a "$mnt/@home/." "$WORK/expected/"; rm "$WORK/expected/big"
diff -r "$WORK/expected" "$fresh/@/restored/$second" || fail "the restored tree differs"
"$ZEROBLK" backup restore "$backups" --snapshot "$third" --to "$fresh/@/third" --age-identity "$WORK/identity"
diff -r "$mnt/@snapshots/$third" "$fresh/@/third/$third" || fail "the third restore differs"

df -h "$WORK" | tail -n 1
step "a flipped byte is named by verify"
victim=$(find "$WORK/backups/data" -path "*/$third/*" -type f | sort | sed -n 2p)
cp "$victim" "$WORK/victim.orig"
printf '\x5a' | dd of="$victim" bs=1 seek=100 conv=notrunc status=none
cmp -s "$victim" "$WORK/victim.orig" && printf '\x5b' | dd of="$victim" bs=1 seek=100 conv=notrunc status=none
"$ZEROBLK" backup verify "$backups" --snapshot "$third" --age-identity "$WORK/identity" > "$WORK/verify.out" 2>&1 \
    && fail "verify missed a flipped byte"
grep -q "bad ${victim#"$WORK/backups/"}" "$WORK/verify.out" || fail "verify did not name it: $(cat "$WORK/verify.out")"
cp "$WORK/victim.orig" "$victim"

step "a prune drops the old chain and keeps the newest restorable"
"$ZEROBLK" backup prune "$backups" --keep-daily 1
[ "$(listed)" = "$third" ] || fail "prune kept the old chain: $(listed)"
"$ZEROBLK" backup restore "$backups" --snapshot "$third" --to "$fresh/@/after-prune" --age-identity "$WORK/identity"
diff -r "$mnt/@snapshots/$third" "$fresh/@/after-prune/$third" || fail "the restore after prune differs"

step "the fresh volume's filesystem checks clean"
df -h "$WORK" | tail -n 1
timeout 300 "$ZEROBLK" detach fresh || fail "detach fresh"
step "clone"
timeout 120 "$ZEROBLK" volume clone fresh fresh-check >/dev/null || fail "clone"
step "attach the clone"
device=$(timeout 120 "$ZEROBLK" attach fresh-check) || fail "attach fresh-check"
btrfs check --readonly "$device" > "$WORK/check.out" 2>&1 || { cat "$WORK/check.out"; fail "btrfs check"; }
"$ZEROBLK" detach fresh-check
"$ZEROBLK" detach vol
echo "backup: ok"
