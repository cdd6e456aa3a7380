"""Writes tagged 4 KiB blocks, with flushes, until the server dies.

Usage: python3 writer.py TARGET LOG FIRST_TAG BLOCKS SEED

TARGET is an NBD URI (libnbd, with up to 32 writes in flight) or a block
device path such as /dev/ublkb0 (O_DIRECT writes from 16 threads, and
fsync, which the kernel sends to the device as a FLUSH).

Each block written is filled with its tag (a u64, little endian,
repeated), so a block read back says which write it holds. Writes go in
batches, to distinct blocks; a batch ends when all of it is acknowledged.
A batch is either up to 32 single blocks, or one or two 64 KiB extents out
of a few (each block of an extent gets its own tag): extents written over
and over within one epoch are what the server rewrites in place. Every few
batches, a flush. The log, written before the server can see anything:
  W TAG BLOCK   a block is about to be sent
  D             every write so far is acknowledged
  F TAG         a flush is acknowledged: every write with a smaller tag
                is durable
"""
import mmap
import os
import random
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

BLOCK = 4096
# Extents of 16 blocks (64 KiB, the least the server rewrites in place),
# few of them, so that one epoch often writes one three times or more.
EXTENT = 16
EXTENTS = 4


def tagged(first_tag, blocks=1):
    return b"".join(struct.pack("<Q", first_tag + i) * (BLOCK // 8) for i in range(blocks))


class NbdTarget:
    """Writes in flight at once through libnbd's asynchronous calls."""

    def __init__(self, uri):
        import nbd

        self.nbd = nbd
        self.errors = (nbd.Error,)
        self.h = nbd.NBD()
        self.h.connect_uri(uri)

    def write_batch(self, writes):
        cookies = []
        for tag, block, blocks in writes:
            data = self.nbd.Buffer.from_bytearray(bytearray(tagged(tag, blocks)))
            cookies.append(self.h.aio_pwrite(data, block * BLOCK))
        while self.h.aio_in_flight() > 0:
            self.h.poll(-1)
        for cookie in cookies:
            self.h.aio_command_completed(cookie)  # raises if the write failed

    def flush(self):
        self.h.flush()


class DeviceTarget:
    """Direct writes to a block device, several threads at a time."""

    errors = (OSError,)

    def __init__(self, path):
        self.fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self.pool = ThreadPoolExecutor(max_workers=16)

    def write_one(self, tag, block, blocks):
        buffer = mmap.mmap(-1, blocks * BLOCK)  # page aligned, as O_DIRECT needs
        buffer.write(tagged(tag, blocks))
        if os.pwritev(self.fd, [buffer], block * BLOCK) != blocks * BLOCK:
            raise OSError("short write")

    def write_batch(self, writes):
        for done in [self.pool.submit(self.write_one, *w) for w in writes]:
            done.result()  # raises if the write failed

    def flush(self):
        os.fsync(self.fd)


def main():
    target_name, log_path, first_tag, blocks, seed = sys.argv[1:6]
    blocks = int(blocks)
    rng = random.Random(int(seed))
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

    def say(line):
        os.write(log, (line + "\n").encode())

    target = DeviceTarget(target_name) if target_name.startswith("/") else NbdTarget(target_name)
    tag = int(first_tag)
    try:
        while True:
            # Distinct blocks: two writes in flight to one block may land in
            # either order, so a batch never has two.
            writes = []
            if rng.random() < 0.4:
                starts = [e * EXTENT for e in rng.sample(range(EXTENTS), rng.randint(1, 2))]
                size = EXTENT
            else:
                starts = rng.sample(range(blocks), rng.randint(1, 32))
                size = 1
            for start in starts:
                for i in range(size):
                    say(f"W {tag + i} {start + i}")
                writes.append((tag, start, size))
                tag += size
            target.write_batch(writes)
            say("D")
            if rng.random() < 0.3:
                target.flush()
                say(f"F {tag}")
    except target.errors as error:
        print(f"writer stopped at tag {tag}: {error}", file=sys.stderr)


main()
