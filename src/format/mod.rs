//! The on-store format, version 5 ([`FORMAT_VERSION`]). The volume's data
//! and map are defined here; the few small records beside them are
//! defined where they are used, and the table below says where. Nothing
//! else decides what a byte in the bucket means.
//!
//! Version 2 added packs: map pages say where each chunk object is, and
//! roots, pages and chunks carry their version, so an older zeroblk refuses
//! such a volume with "upgrade zeroblk" instead of misreading it. Version 3
//! objects are what this build writes ([`OBJECT_VERSION`]); version 4 marks
//! the superblock of an encrypted volume, whose objects are sealed
//! ([`codec`]); version 5 marks the superblock of a volume with snapshots
//! or of a clone, whose objects are referenced from outside its roots, so
//! that no older zeroblk's gc touches the store. Older objects are still
//! read, and an older volume goes on in the current version at its next
//! commit.
//!
//! # Objects
//!
//! | key | what | mutability |
//! | --- | --- | --- |
//! | `volumes/NAME/superblock.json` | [`Superblock`]: format version, uuid, chunk size, compression | written once, with create-if-absent |
//! | `volumes/NAME/roots/GEN` (20 digits) | [`Root`]: one committed generation of the chunk map | written once, with create-if-absent: the commit point |
//! | `volumes/NAME/head` | the newest generation a writer knows of (a hint) | overwritten |
//! | `volumes/NAME/snapshots/SNAP` | a snapshot: a [`Root`] of kind `Snapshot`, pinned until deleted (`engine/snapshot.rs`) | written once, with create-if-absent; deleted |
//! | `pages/XX/ID` | [`MapPage`]: [`PAGE_ENTRIES`] chunk references | immutable, content addressed |
//! | `packs/XX/ID` | chunk objects of one commit, back to back ([`pack`]) | immutable, content addressed |
//! | `chunks/XX/ID` | a chunk object of its own | immutable, content addressed |
//! | `volumes/NAME/lease` | the writer's lease (JSON, `LeaseRecord` in `engine/lease/record.rs`) | replaced only by conditional writes |
//! | `gc/lease` | gc's lease, the same record ([`keys::GC_LEASE`], `engine/gc.rs`) | replaced only by conditional writes |
//! | `volumes/NAME/provision.json` | what `--provision` set up on the volume (`provision/mod.rs`) | overwritten |
//! | `probes/fencing-UUID` | a probe of whether the store enforces conditional writes (`store/mod.rs`) | written, then deleted |
//!
//! gc's barrier is a root like any other (`RootKind::GcBarrier`).
//!
//! `ID` is the lowercase hex BLAKE3 hash of the object's plaintext (of a
//! pack: of its bytes) and `XX` its first two characters, which spreads
//! keys over S3's partitions.
//!
//! # Chunks
//!
//! A volume is cut into chunks of its chunk size (a power of two, 64 KiB to
//! 16 MiB, fixed at creation). A chunk object is a 16-byte header (see
//! [`chunk`]) followed by the chunk's bytes, zstd-compressed unless that
//! does not pay. Its name is the BLAKE3 hash of the uncompressed bytes, so
//! a reader always verifies what it got. A commit stores its new chunk
//! objects in packs of about 8 MiB, in volume order (one PUT per pack, and
//! one ranged GET for a run of neighbours), even a commit's only new chunk.
//! A chunk is an object of its own, `chunks/XX/ID`, only where `zeroblk gc`
//! took it out of a pack that was mostly garbage (older volumes also wrote
//! them). A chunk unchanged by a commit keeps its object. A
//! chunk of zeroes is never stored: its map entry is [`ChunkRef::ZERO`].
//!
//! # The map and its commit point
//!
//! The chunk map (chunk index -> [`ChunkRef`]) is cut into pages of
//! [`PAGE_ENTRIES`] entries; an entry names the chunk and where its object
//! is ([`Place`]). A root lists the page ids of one generation
//! (an all-zero page is not stored and listed as absent). A commit uploads
//! new chunks, then changed pages, then the root `GEN + 1` with
//! create-if-absent: the root is the single atomic commit point, and a second
//! writer that tries to commit the same generation is refused (fenced).
//! Opening a volume reads the superblock, the head hint and the roots after
//! it: a few requests, never a listing of chunks.

pub mod chunk;
pub mod codec;
pub mod keys;
pub mod pack;
pub mod page;
pub mod root;
pub mod superblock;

pub use chunk::{Compression, EncodedChunk};
pub use codec::Codec;
pub use page::{MapPage, PAGE_ENTRIES};
pub use root::{PageSlot, Root, RootKind};
pub use superblock::Superblock;

use std::fmt;

/// The newest format version this build reads. An encrypted volume's
/// superblock says version 4, so that a zeroblk without encryption refuses
/// it with "upgrade zeroblk"; one with snapshots, or a clone, version 5.
pub const FORMAT_VERSION: u32 = 5;
/// The version of chunk objects and roots this build writes (sealed or
/// not, their layout in the clear is that of version 3).
pub const OBJECT_VERSION: u32 = 3;
/// The superblock version of a volume in the clear.
pub const CLEAR_VOLUME_VERSION: u32 = 3;

/// Smallest and largest chunk sizes a volume may be created with.
pub const MIN_CHUNK_SIZE: u64 = 64 << 10;
pub const MAX_CHUNK_SIZE: u64 = 16 << 20;
pub const DEFAULT_CHUNK_SIZE: u64 = 1 << 20;

/// The unit of I/O: every read and write is aligned to it.
pub const BLOCK_SIZE: u64 = 4096;

/// The BLAKE3 hash of an object's plaintext, which is also its name.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ObjectId(pub [u8; 32]);

impl ObjectId {
    pub const NONE: ObjectId = ObjectId([0; 32]);

    pub fn of(data: &[u8]) -> ObjectId {
        ObjectId(*blake3::hash(data).as_bytes())
    }

    pub fn is_none(&self) -> bool {
        *self == Self::NONE
    }

    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl fmt::Display for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ObjectId({})", &self.to_hex()[..12])
    }
}

/// One entry of the chunk map: which object holds a chunk, where that
/// object is stored, and how many bytes it takes in the store (for
/// accounting and garbage collection). [`ChunkRef::ZERO`] means the chunk
/// reads as zeroes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub struct ChunkRef {
    pub id: ObjectId,
    pub stored_len: u32,
    pub place: Place,
}

/// Where a chunk object is stored.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default)]
pub enum Place {
    /// In its own object, `chunks/XX/ID`.
    #[default]
    Own,
    /// At byte `offset` of the pack `packs/XX/PACK`, `stored_len` bytes
    /// long; or in its own object, if `zeroblk gc` took it out of a pack
    /// that was mostly garbage.
    Packed { pack: ObjectId, offset: u32 },
}

impl ChunkRef {
    pub const ZERO: ChunkRef = ChunkRef {
        id: ObjectId::NONE,
        stored_len: 0,
        place: Place::Own,
    };

    /// A chunk in its own object.
    pub fn own(id: ObjectId, stored_len: u32) -> ChunkRef {
        ChunkRef {
            id,
            stored_len,
            place: Place::Own,
        }
    }

    pub fn is_zero(&self) -> bool {
        self.id.is_none()
    }

    /// The pack holding the chunk, if it was stored in one.
    pub fn pack(&self) -> Option<ObjectId> {
        match self.place {
            Place::Own => None,
            Place::Packed { pack, .. } => Some(pack),
        }
    }
}

/// A stored object that cannot be trusted, or is of a format this build
/// does not know. Never silently worked around: the data is not returned.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },
    #[error(
        "{what} has hash {actual}, not {expected}: the stored object is corrupt (run `zeroblk volume verify`)"
    )]
    HashMismatch {
        what: String,
        expected: ObjectId,
        actual: ObjectId,
    },
    #[error(
        "{what} uses format version {found}, and this zeroblk reads up to version {supported}: upgrade zeroblk"
    )]
    NewerVersion {
        what: String,
        found: u32,
        supported: u32,
    },
}

impl FormatError {
    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Self {
        FormatError::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }

    /// The same error, saying which stored object held the damaged bytes
    /// (a chunk is named by its hash; it may live in a pack).
    pub fn stored_in(self, key: &str) -> FormatError {
        match self {
            FormatError::Corrupt { what, reason } => FormatError::Corrupt {
                what: format!("{what} (in {key})"),
                reason: format!("{reason} (run `zeroblk volume verify`)"),
            },
            FormatError::HashMismatch {
                what,
                expected,
                actual,
            } => FormatError::HashMismatch {
                what: format!("{what} (in {key})"),
                expected,
                actual,
            },
            other => other,
        }
    }
}

/// Checks that a chunk size is one a volume may have.
pub fn validate_chunk_size(chunk_size: u64) -> Result<(), String> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(format!(
            "chunk size {chunk_size} is not a power of two between 64K and 16M: pick one such as 1M (the default)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_checked() {
        assert!(validate_chunk_size(1 << 20).is_ok());
        assert!(validate_chunk_size(64 << 10).is_ok());
        assert!(validate_chunk_size(16 << 20).is_ok());
        assert!(validate_chunk_size(32 << 10).is_err());
        assert!(validate_chunk_size(3 << 20).is_err());
        assert!(validate_chunk_size(32 << 20).is_err());
    }

    #[test]
    fn object_ids_are_blake3() {
        let id = ObjectId::of(b"abc");
        assert_eq!(
            id.to_hex(),
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
        assert!(!id.is_none());
    }
}
