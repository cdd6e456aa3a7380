"""Writes tagged 4 KiB blocks over NBD, with flushes, until the server dies.

Usage: python3 writer.py URI LOG FIRST_TAG BLOCKS SEED

Each write fills a block with its tag (a u64, little endian, repeated), so
a block read back says which write it holds. Writes go in batches of up to
32 in flight, to distinct blocks; a batch ends when all of it is
acknowledged. Every few
batches, a flush. The log, written before the server can see anything:
  W TAG BLOCK   a write is about to be sent
  D             every write so far is acknowledged
  F TAG         a flush is acknowledged: every write with a smaller tag
                is durable
"""
import os
import random
import struct
import sys

import nbd

uri, log_path, first_tag, blocks, seed = sys.argv[1:6]
blocks = int(blocks)
rng = random.Random(int(seed))
log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)


def say(line):
    os.write(log, (line + "\n").encode())


h = nbd.NBD()
h.connect_uri(uri)
tag = int(first_tag)
try:
    while True:
        cookies = []
        # Distinct blocks: two writes in flight to one block may land in
        # either order, so a batch never has two.
        for block in rng.sample(range(blocks), rng.randint(1, 32)):
            say(f"W {tag} {block}")
            data = nbd.Buffer.from_bytearray(bytearray(struct.pack("<Q", tag) * 512))
            cookies.append(h.aio_pwrite(data, block * 4096))
            tag += 1
        while h.aio_in_flight() > 0:
            h.poll(-1)
        for cookie in cookies:
            h.aio_command_completed(cookie)  # raises if the write failed
        say("D")
        if rng.random() < 0.3:
            h.flush()
            say(f"F {tag}")
except nbd.Error as error:
    print(f"writer stopped at tag {tag}: {error}", file=sys.stderr)
