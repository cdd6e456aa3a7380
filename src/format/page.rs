//! Map pages: [`PAGE_ENTRIES`] consecutive entries of a volume's chunk map.
//!
//! A page's plaintext is its entries, 36 bytes each: the chunk's 32-byte
//! object id (all zero for a zero chunk) and its stored length (u32, little
//! endian). The object is that plaintext wrapped like a chunk object (header
//! and zstd), named by the plaintext's BLAKE3 hash, and so verified on read.

use super::chunk::{self, Compression};
use super::{ChunkRef, FormatError, ObjectId};

/// Entries per page: one page maps 1 GiB of a volume with 1 MiB chunks.
pub const PAGE_ENTRIES: usize = 1024;
const ENTRY_LEN: usize = 36;

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

    /// The page as an object: its id and bytes.
    pub fn encode(&self) -> chunk::EncodedChunk {
        let mut plain = Vec::with_capacity(PAGE_ENTRIES * ENTRY_LEN);
        for entry in &self.entries {
            plain.extend_from_slice(&entry.id.0);
            plain.extend_from_slice(&entry.stored_len.to_le_bytes());
        }
        chunk::encode(&plain, Compression::Zstd { level: 1 })
    }

    /// Decodes and verifies the page object named `id`.
    pub fn decode(id: ObjectId, object: &[u8]) -> Result<MapPage, FormatError> {
        let plain = chunk::decode(id, object)?;
        if plain.len() != PAGE_ENTRIES * ENTRY_LEN {
            return Err(FormatError::corrupt(
                format!("map page {id}"),
                format!("{} bytes, not {}", plain.len(), PAGE_ENTRIES * ENTRY_LEN),
            ));
        }
        let entries = plain
            .chunks_exact(ENTRY_LEN)
            .map(|raw| {
                let mut id = [0u8; 32];
                id.copy_from_slice(&raw[..32]);
                let stored_len = u32::from_le_bytes([raw[32], raw[33], raw[34], raw[35]]);
                ChunkRef {
                    id: ObjectId(id),
                    stored_len,
                }
            })
            .collect();
        Ok(MapPage { entries })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_verifies() {
        let mut page = MapPage::default();
        assert!(page.is_all_zero());
        page.set(
            3,
            ChunkRef {
                id: ObjectId::of(b"x"),
                stored_len: 77,
            },
        );
        assert!(!page.is_all_zero());
        let encoded = page.encode();
        assert!(encoded.object.len() < 1024, "zero entries compress");
        let decoded = MapPage::decode(encoded.id, &encoded.object).unwrap();
        assert_eq!(decoded, page);
        assert_eq!(decoded.get(3).stored_len, 77);
        assert!(MapPage::decode(ObjectId::of(b"y"), &encoded.object).is_err());
    }
}
