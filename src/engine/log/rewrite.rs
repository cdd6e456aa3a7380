//! In-place rewrites: a write over an extent the open epoch already wrote
//! twice reuses the log space of the older of those two records.
//!
//! A write whose extent (offset and length) the epoch wrote twice before
//! overwrites the older record in place, as long as the newer one hides
//! all of its blocks. The rewrite takes a new sequence number, so in memory
//! and in replay it wins over every record of the epoch before it. A
//! writer that cycles over a region (a database file, fio's sequential
//! job) keeps the log at twice the region instead of growing it with every
//! pass, and commits are no longer forced by log space.
//!
//! Small writes too: 4 KiB random overwrites of 256 MiB appended over a
//! GiB to the log between two commits, which the kernel then had to write
//! back to disk (every sealed epoch is synced), and the writes slowed to
//! the disk's pace. Rewritten in place, they dirty the same pages again:
//! the log stays near twice the region written, for a table entry (tens
//! of bytes) per extent, dropped with the epoch.
//!
//! Why the older copy and never the newer: a crash can cut a rewrite short
//! (`kill -9` stops a large pwrite between two pages). The torn record
//! fails its checksum and replay skips it, and the newer copy, which no
//! rewrite touched, still holds the last acknowledged bytes. So a process
//! crash still loses nothing that was acknowledged.
//!
//! Only the open epoch is rewritten: its records are not synced yet and no
//! flush has promised them. A sealed epoch is left alone from the moment
//! it is sealed (a rewrite holds its epoch open, like any write).
//!
//! This file keeps the table of copies; an epoch hands out the right to
//! rewrite one (`Claim`, in `epoch.rs`).

use dashmap::DashMap;

/// Per extent written in an epoch, its two latest records.
#[derive(Default)]
pub struct Copies {
    extents: DashMap<u64, Extent>,
}

#[derive(Debug, Clone, Copy)]
struct Extent {
    len: u64,
    /// Data position of the latest record of the extent.
    newer: u64,
    /// Data position of the one before (0: none yet).
    older: u64,
    /// A rewrite of `older` is in flight.
    busy: bool,
}

impl Copies {
    /// Notes that a record of `len` bytes at device `offset` was appended
    /// with its data at `data_pos`. An extent being rewritten is left as it
    /// is: the check against the overlay keeps later claims right.
    pub fn appended(&self, offset: u64, len: u64, data_pos: u64) {
        let mut extent = self.extents.entry(offset).or_insert(Extent {
            len,
            newer: data_pos,
            older: 0,
            busy: false,
        });
        if extent.busy || extent.newer == data_pos {
            return;
        }
        *extent = match extent.len == len {
            true => Extent {
                older: extent.newer,
                newer: data_pos,
                ..*extent
            },
            false => Extent {
                len,
                newer: data_pos,
                older: 0,
                busy: false,
            },
        };
    }

    /// Claims the older record of the extent for a rewrite: its data
    /// position and the newer record's. `None` when the extent has no two
    /// records or one is already being rewritten.
    pub fn claim(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        let mut extent = self.extents.get_mut(&offset)?;
        if extent.len != len || extent.older == 0 || extent.busy {
            return None;
        }
        extent.busy = true;
        Some((extent.older, extent.newer))
    }

    /// Ends a claim; after a rewrite, the rewritten record is the newer.
    pub fn release(&self, offset: u64, rewritten: bool) {
        if let Some(mut extent) = self.extents.get_mut(&offset) {
            extent.busy = false;
            if rewritten {
                let Extent { newer, older, .. } = *extent;
                extent.newer = older;
                extent.older = newer;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEN: u64 = 64 << 10;

    #[test]
    fn the_older_of_two_copies_is_claimed_once_at_a_time() {
        let copies = Copies::default();
        copies.appended(0, LEN, 1000);
        assert_eq!(copies.claim(0, LEN), None, "one copy only");
        copies.appended(0, LEN, 9000);
        assert_eq!(copies.claim(0, LEN), Some((1000, 9000)));
        assert_eq!(copies.claim(0, LEN), None, "busy");
        copies.release(0, true);
        assert_eq!(copies.claim(0, LEN), Some((9000, 1000)), "they swapped");
        copies.release(0, false);
        assert_eq!(
            copies.claim(0, LEN),
            Some((9000, 1000)),
            "a failed one did not"
        );
        copies.release(0, false);
        assert_eq!(copies.claim(0, 2 * LEN), None, "another length");
    }

    #[test]
    fn appends_to_an_extent_being_rewritten_leave_it_alone() {
        let copies = Copies::default();
        copies.appended(0, LEN, 1000);
        copies.appended(0, LEN, 9000);
        let _ = copies.claim(0, LEN);
        copies.appended(0, LEN, 20000);
        copies.release(0, true);
        assert_eq!(copies.claim(0, LEN), Some((9000, 1000)));
        copies.release(0, false);
        copies.appended(0, 2 * LEN, 30000);
        assert_eq!(copies.claim(0, 2 * LEN), None, "a new length starts over");
        copies.appended(0, 2 * LEN, 40000);
        assert_eq!(copies.claim(0, 2 * LEN), Some((30000, 40000)));
        copies.release(0, false);
        copies.appended(0, 4096, 50000);
        copies.appended(0, 4096, 60000);
        assert_eq!(
            copies.claim(0, 4096),
            Some((50000, 60000)),
            "a block's own writes are rewritten too"
        );
    }
}
