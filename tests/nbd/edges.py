"""Edge cases of zeroblk's NBD server, driven by libnbd (nbdsh's library).

Usage: python3 edges.py URI
Exits non-zero with a message on the first surprise.
"""
import errno
import sys

import nbd

uri = sys.argv[1]
h = nbd.NBD()
h.set_strict_mode(0)  # let malformed requests reach the server
h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
h.connect_uri(uri)
size = h.get_size()
assert h.can_meta_context(nbd.CONTEXT_BASE_ALLOCATION), "base:allocation was not negotiated"
assert h.get_structured_replies_negotiated(), "structured replies were not negotiated"


def expect_errno(code, what, call):
    try:
        call()
    except nbd.Error as e:
        # libnbd's Python binding gives the errno as a number or its name.
        wanted = (code, errno.errorcode[code])
        assert e.errno in wanted, f"{what}: errno {e.errno}, wanted {wanted[1]} ({e})"
        return
    raise AssertionError(f"{what}: succeeded, wanted errno {code}")


def extents(offset, count, flags=0):
    found = []

    def callback(context, off, entries, err):
        assert context == nbd.CONTEXT_BASE_ALLOCATION
        found.extend(zip(entries[0::2], entries[1::2]))
        return 0

    h.block_status(count, offset, callback, flags)
    return found


# Unaligned and out-of-range requests fail cleanly and touch nothing.
expect_errno(errno.EINVAL, "unaligned read", lambda: h.pread(100, 1))
expect_errno(errno.EINVAL, "unaligned write", lambda: h.pwrite(b"x" * 100, 4096))
expect_errno(errno.EINVAL, "read past the end", lambda: h.pread(8192, size - 4096))
expect_errno(errno.ENOSPC, "write past the end", lambda: h.pwrite(b"x" * 4096, size))
expect_errno(errno.EINVAL, "read over the maximum", lambda: h.pread(64 << 20, 0))
expect_errno(errno.EINVAL, "trim past the end", lambda: h.trim(8192, size - 4096))
assert h.pread(4096, 0) == bytes(4096), "a refused write changed the volume"

# A fresh volume is one hole.
fresh = extents(0, min(size, 1 << 30))
assert fresh == [(min(size, 1 << 30), 3)], f"fresh volume block status: {fresh}"

# Written data is data; the rest stays a hole.
chunk = 1 << 20
h.pwrite(b"\xab" * (2 * chunk), chunk)
h.flush()
status = extents(0, 4 * chunk)
assert status == [(chunk, 3), (2 * chunk, 0), (chunk, 3)], f"after a write: {status}"
one = extents(0, 4 * chunk, nbd.CMD_FLAG_REQ_ONE)
assert len(one) == 1, f"REQ_ONE gave {one}"

# Reads: data, holes come back as holes (structured), DF in one piece.
assert h.pread(chunk, chunk) == b"\xab" * chunk
assert h.pread(4 * chunk, 0) == bytes(chunk) + b"\xab" * (2 * chunk) + bytes(chunk)
assert h.pread(4 * chunk, 0, nbd.CMD_FLAG_DF) == bytes(chunk) + b"\xab" * (2 * chunk) + bytes(chunk)

# Trim and zero, partial and whole chunks, then read zeroes.
h.trim(chunk, chunk)
assert h.pread(chunk, chunk) == bytes(chunk), "trimmed chunk does not read as zeroes"
h.zero(8192, 2 * chunk + 4096)
assert h.pread(8192, 2 * chunk + 4096) == bytes(8192)
assert h.pread(4096, 2 * chunk) == b"\xab" * 4096
assert h.pread(4096, 2 * chunk + 12288) == b"\xab" * 4096
h.zero(4096, 2 * chunk, nbd.CMD_FLAG_FAST_ZERO | nbd.CMD_FLAG_FUA)
h.zero(chunk - 12288, 2 * chunk + 12288, nbd.CMD_FLAG_FAST_ZERO)
h.zero(chunk, 3 * chunk, nbd.CMD_FLAG_NO_HOLE)
assert extents(0, 4 * chunk) == [(4 * chunk, 3)], f"after trim and zero: {extents(0, 4 * chunk)}"

# FUA writes, flush, cache.
h.pwrite(b"\x01" * 4096, 0, nbd.CMD_FLAG_FUA)
h.flush()
h.cache(4 * chunk, 0)
assert h.pread(4096, 0) == b"\x01" * 4096

# Many requests in flight on one connection, completed in any order.
for i in range(64):
    h.aio_pwrite(nbd.Buffer.from_bytearray(bytearray([i + 1]) * 65536), (8 + i) * 65536)
while h.aio_in_flight() > 0:
    h.poll(-1)
for i in range(64):
    assert h.pread(65536, (8 + i) * 65536) == bytes([i + 1]) * 65536, f"pipelined write {i}"

h.shutdown()
print("edges: ok")
