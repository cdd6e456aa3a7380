//! Map pages: [`PAGE_ENTRIES`] consecutive entries of a volume's chunk map.
//!
//! A page's plaintext is the magic `ZBPAGE03`, 16 random bytes, then its
//! entries, 72 bytes each (integers little endian):
//!
//! ```text
//! offset size field
//!      0   32 the chunk's object id (all zero for a zero chunk)
//!     32    4 its stored length
//!     36   32 the pack holding it (all zero: its own object)
//!     68    4 its offset in that pack
//! ```
//!
//! The random bytes make every page written a new object, even one whose
//! entries an older page held: a commit never writes over an object that
//! `zeroblk gc` may be deleting (see the engine's `gc`). Pages of format 2
//! (`ZBPAGE02`, no random bytes) and those written before packs existed
//! (36-byte entries, the first two fields, and no magic) are still read.
//! The object is the plaintext wrapped like a chunk object (header and
//! zstd), named by the plaintext's BLAKE3 hash, and so verified on read.

use super::chunk::{self, Compression};
use super::codec::Codec;
use super::{ChunkRef, FormatError, ObjectId, Place};

/// Entries per page: one page maps 1 GiB of a volume with 1 MiB chunks.
pub const PAGE_ENTRIES: usize = 1024;
/// No page object is larger (its entries stored raw, sealed): a larger
/// one is refused before it is read.
pub const MAX_STORED_LEN: u64 = 128 << 10;
const MAGIC: &[u8; 8] = b"ZBPAGE03";
/// Pages of format 2: no random bytes after the magic.
const MAGIC_V2: &[u8; 8] = b"ZBPAGE02";
const NONCE_LEN: usize = 16;
const ENTRY_LEN: usize = 72;
/// Entries of pages written before packs: id and stored length only.
const OWN_ENTRY_LEN: usize = 36;

/// One page of the chunk map.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct MapPage {
    entries: Vec<ChunkRef>,
}

impl Default for MapPage {
    fn default() -> Self {
        MapPage {
            entries: vec![ChunkRef::ZERO; PAGE_ENTRIES],
        }
    }
}

impl MapPage {
    pub fn get(&self, slot: usize) -> ChunkRef {
        self.entries[slot]
    }

    pub fn set(&mut self, slot: usize, entry: ChunkRef) {
        self.entries[slot] = entry;
    }

    pub fn entries(&self) -> &[ChunkRef] {
        &self.entries
    }

    pub fn is_all_zero(&self) -> bool {
        self.entries.iter().all(ChunkRef::is_zero)
    }

    /// The page as a new object (never one written before): its id and
    /// bytes.
    pub fn encode(&self, codec: &Codec) -> chunk::EncodedChunk {
        let mut plain = Vec::with_capacity(MAGIC.len() + NONCE_LEN + PAGE_ENTRIES * ENTRY_LEN);
        plain.extend_from_slice(MAGIC);
        plain.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
        for entry in &self.entries {
            let (pack, offset) = match entry.place {
                Place::Own => (ObjectId::NONE, 0),
                Place::Packed { pack, offset } => (pack, offset),
            };
            plain.extend_from_slice(&entry.id.0);
            plain.extend_from_slice(&entry.stored_len.to_le_bytes());
            plain.extend_from_slice(&pack.0);
            plain.extend_from_slice(&offset.to_le_bytes());
        }
        chunk::encode(&plain, Compression::Zstd { level: 1 }, codec)
    }

    /// Decodes and verifies the page object named `id`.
    pub fn decode(id: ObjectId, object: &[u8], codec: &Codec) -> Result<MapPage, FormatError> {
        let plain = chunk::decode(id, object, codec)?;
        let packed = |skip: usize| -> Vec<ChunkRef> {
            plain[skip..].chunks_exact(ENTRY_LEN).map(entry).collect()
        };
        let entries_len = PAGE_ENTRIES * ENTRY_LEN;
        let entries = if plain.len() == PAGE_ENTRIES * OWN_ENTRY_LEN {
            plain.chunks_exact(OWN_ENTRY_LEN).map(own_entry).collect()
        } else if plain.len() == MAGIC.len() + NONCE_LEN + entries_len && plain.starts_with(MAGIC) {
            packed(MAGIC.len() + NONCE_LEN)
        } else if plain.len() == MAGIC_V2.len() + entries_len && plain.starts_with(MAGIC_V2) {
            packed(MAGIC_V2.len())
        } else {
            return Err(FormatError::corrupt(
                format!("map page {id}"),
                format!("{} bytes, which is no page format", plain.len()),
            ));
        };
        Ok(MapPage { entries })
    }
}

fn object_id(raw: &[u8]) -> ObjectId {
    ObjectId(raw.try_into().expect("32 bytes"))
}

fn u32_le(raw: &[u8]) -> u32 {
    u32::from_le_bytes(raw.try_into().expect("4 bytes"))
}

fn own_entry(raw: &[u8]) -> ChunkRef {
    ChunkRef::own(object_id(&raw[..32]), u32_le(&raw[32..36]))
}

fn entry(raw: &[u8]) -> ChunkRef {
    let pack = object_id(&raw[36..68]);
    ChunkRef {
        place: match pack.is_none() {
            true => Place::Own,
            false => Place::Packed {
                pack,
                offset: u32_le(&raw[68..72]),
            },
        },
        ..own_entry(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Codec;

    #[test]
    fn round_trips_and_verifies() {
        let mut page = MapPage::default();
        assert!(page.is_all_zero());
        page.set(3, ChunkRef::own(ObjectId::of(b"x"), 77));
        let packed = ChunkRef {
            id: ObjectId::of(b"y"),
            stored_len: 99,
            place: Place::Packed {
                pack: ObjectId::of(b"pack"),
                offset: 1 << 20,
            },
        };
        page.set(4, packed);
        assert!(!page.is_all_zero());
        let encoded = page.encode(&Codec::clear());
        assert!(encoded.object.len() < 1024, "zero entries compress");
        let decoded = MapPage::decode(encoded.id, &encoded.object, &Codec::clear()).unwrap();
        assert_eq!(decoded, page);
        assert_ne!(
            page.encode(&Codec::clear()).id,
            encoded.id,
            "every page written is a new object"
        );
        assert_eq!(decoded.get(3).stored_len, 77);
        assert_eq!(decoded.get(4), packed);
        assert!(MapPage::decode(ObjectId::of(b"y"), &encoded.object, &Codec::clear()).is_err());
    }

    #[test]
    fn pages_from_before_packs_are_read() {
        let id = ObjectId::of(b"x");
        let mut plain = vec![0u8; PAGE_ENTRIES * OWN_ENTRY_LEN];
        plain[OWN_ENTRY_LEN..OWN_ENTRY_LEN + 32].copy_from_slice(&id.0);
        plain[OWN_ENTRY_LEN + 32..OWN_ENTRY_LEN + 36].copy_from_slice(&5u32.to_le_bytes());
        let encoded = chunk::encode(&plain, Compression::Zstd { level: 1 }, &Codec::clear());
        let page = MapPage::decode(encoded.id, &encoded.object, &Codec::clear()).unwrap();
        assert_eq!(page.get(1), ChunkRef::own(id, 5));
        assert!(page.get(0).is_zero());
    }

    #[test]
    fn pages_of_format_2_are_read() {
        let id = ObjectId::of(b"x");
        let mut plain = MAGIC_V2.to_vec();
        plain.resize(MAGIC_V2.len() + PAGE_ENTRIES * ENTRY_LEN, 0);
        plain[8 + ENTRY_LEN..8 + ENTRY_LEN + 32].copy_from_slice(&id.0);
        plain[8 + ENTRY_LEN + 32..8 + ENTRY_LEN + 36].copy_from_slice(&5u32.to_le_bytes());
        let encoded = chunk::encode(&plain, Compression::Zstd { level: 1 }, &Codec::clear());
        let page = MapPage::decode(encoded.id, &encoded.object, &Codec::clear()).unwrap();
        assert_eq!(page.get(1), ChunkRef::own(id, 5));
    }

    #[test]
    fn a_page_of_another_length_is_refused() {
        let encoded = chunk::encode(&[0u8; 100], Compression::None, &Codec::clear());
        let error = MapPage::decode(encoded.id, &encoded.object, &Codec::clear()).unwrap_err();
        assert!(error.to_string().contains("no page format"), "{error}");
    }
}
