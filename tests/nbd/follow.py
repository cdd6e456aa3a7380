"""A writer and a read-only follower of the same volume, over NBD (libnbd).

Usage: python3 follow.py WRITER_URI FOLLOWER_URI ROUNDS

Each round writes a pair of blocks that belong together (one request
across a chunk boundary) to the writer and flushes, then reads the pair
from the follower, in one request each time, until it shows the round's
tag. A pair whose halves differ, a tag older than one seen, or a write
the follower accepts fails the run. Prints one line per round: the
seconds from the flush to the follower reading it.
"""
import errno
import struct
import sys
import time

import nbd

writer_uri, follower_uri, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
writer = nbd.NBD()
writer.connect_uri(writer_uri)
follower = nbd.NBD()
follower.connect_uri(follower_uri)
assert follower.is_read_only(), "the follower's export is not read-only"
assert not follower.can_trim() and not follower.can_zero(), "the follower offers trims or zeroes"

BLOCK = 4096
PAIR = (1 << 20) - BLOCK  # the last block of chunk 0 and the first of chunk 1


def block(tag):
    return struct.pack("<Q", tag) * (BLOCK // 8)


def tag_of(data):
    tag = struct.unpack_from("<Q", data)[0]
    assert data == block(tag), "a block holds bytes no write wrote"
    return tag


# libnbd refuses writes to a read-only export itself: let them through,
# for the server to refuse.
sender = nbd.NBD()
sender.set_strict_mode(0)
sender.connect_uri(follower_uri)
for what, call in [
    ("write", lambda: sender.pwrite(block(1), 0)),
    ("trim", lambda: sender.trim(BLOCK, 0)),
    ("zeroes", lambda: sender.zero(BLOCK, 0)),
]:
    try:
        call()
        raise AssertionError(f"the follower accepted a {what}")
    except nbd.Error as e:
        assert e.errno in (errno.EPERM, "EPERM"), f"a {what} to the follower: {e}"
assert tag_of(sender.pread(BLOCK, 0)) == 0, "a refused write changed the volume"

newest = 0
for tag in range(1, rounds + 1):
    writer.pwrite(block(tag) * 2, PAIR)
    writer.flush()
    flushed = time.monotonic()
    while True:
        data = follower.pread(2 * BLOCK, PAIR)
        first, second = tag_of(data[:BLOCK]), tag_of(data[BLOCK:])
        assert first == second, f"a torn pair: {first} and {second}"
        assert first >= newest, f"went back from {newest} to {first}"
        newest = first
        if first == tag:
            break
        assert time.monotonic() - flushed < 30, f"round {tag}: not seen in 30 s"
        time.sleep(0.01)
    print(f"{time.monotonic() - flushed:.3f}", flush=True)
