#!/usr/bin/env bash
# The write-back log on a filesystem that refuses renameat2's
# RENAME_NOREPLACE (issue 21, item 6): 9p answers it with EINVAL, as NFS
# does. The engine test that recycles log segments
# (tests/durability.rs, the_log_reuses_segments_where_rename_noreplace_is_refused)
# runs here with its cache dir on the host directory shared over 9p, and
# with the kernel's own refusal instead of an injected one.
#   DURABILITY_TEST   the durability test binary
. "$(dirname "$0")/lib.sh"
test_binary="${DURABILITY_TEST:?set DURABILITY_TEST to the durability test binary}"
out="${ZEROBLK_VM_OUT:?set ZEROBLK_VM_OUT to a directory shared with the host}"
grep -q " $out 9p " /proc/mounts || fail "$out is not on 9p here: $(grep " $out " /proc/mounts)"

step "the log on 9p recycles its segments"
cp "$test_binary" "$WORK/durability"
TMPDIR="$out" ZEROBLK_REAL_RENAME=1 "$WORK/durability" --exact \
    the_log_reuses_segments_where_rename_noreplace_is_refused --test-threads 1 \
    || fail "the log failed on 9p"
echo "log_on_9p: ok"
