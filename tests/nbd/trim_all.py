"""Trims a whole export in 2 GiB requests and prints the seconds it took.

Usage: python3 trim_all.py URI
"""
import sys
import time

import nbd

h = nbd.NBD()
h.set_strict_mode(0)
h.connect_uri(sys.argv[1])
size = h.get_size()
step = 2 << 30
started = time.monotonic()
offset = 0
while offset < size:
    count = min(step, size - offset)
    h.aio_trim(count, offset)
    offset += count
    while h.aio_in_flight() >= 64:
        h.poll(-1)
while h.aio_in_flight() > 0:
    h.poll(-1)
h.flush()
elapsed = time.monotonic() - started
assert h.pread(4096, 0) == bytes(4096)
assert h.pread(4096, size - 4096) == bytes(4096)
h.shutdown()
print(f"{elapsed:.3f}")
