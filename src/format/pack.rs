//! Packs: the new chunk objects of one commit, back to back in one store
//! object.
//!
//! Without packs a commit makes one PUT per chunk, and a cold reader one
//! GET per chunk; object stores charge, and often throttle, per request.
//! A pack turns a commit's chunks into a PUT per [`PACK_TARGET_BYTES`],
//! and lets a sequential reader fetch a run of chunks with one ranged GET.
//!
//! A pack has no index of its own: the map says where each chunk object
//! starts ([`Place::Packed`]) and how long it is, and each chunk object
//! decodes and verifies on its own. A pack is named by the BLAKE3 hash of
//! its bytes, so it is immutable and content addressed like every other
//! object. Since format 3 a pack starts with 16 random bytes (its chunks
//! after them), so every pack written is a new object, even one whose
//! chunks an older pack held: a commit never writes over an object that
//! `zeroblk gc` may be deleting (see the engine's `gc`). Packs of format 2
//! start with their first chunk; readers go by the map's offsets either
//! way.

use bytes::Bytes;

use super::chunk::EncodedChunk;
use super::{ChunkRef, FormatError, ObjectId, Place};

/// A pack is closed once it holds this many bytes.
pub const PACK_TARGET_BYTES: usize = 8 << 20;

/// The random bytes a pack starts with.
const NONCE_LEN: usize = 16;

/// A pack being filled, in the order its chunks are pushed.
pub struct PackBuilder {
    parts: Vec<Bytes>,
    members: Vec<(ObjectId, u32)>,
    len: usize,
}

impl Default for PackBuilder {
    fn default() -> Self {
        let nonce = Bytes::copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        PackBuilder {
            parts: vec![nonce],
            members: Vec::new(),
            len: NONCE_LEN,
        }
    }
}

/// A closed pack: its name, its bytes (in parts, as pushed), and where
/// each of its chunks is, in push order.
#[derive(Debug, Clone)]
pub struct Pack {
    pub id: ObjectId,
    pub parts: Vec<Bytes>,
    pub refs: Vec<ChunkRef>,
}

impl PackBuilder {
    pub fn push(&mut self, chunk: EncodedChunk) {
        self.members.push((chunk.id, self.len as u32));
        self.len += chunk.object.len();
        self.parts.push(chunk.object);
    }

    /// Chunks in the pack.
    pub fn count(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_full(&self) -> bool {
        self.len >= PACK_TARGET_BYTES
    }

    /// Names the pack and places its chunks in it.
    pub fn finish(self) -> Pack {
        let mut hasher = blake3::Hasher::new();
        for part in &self.parts {
            hasher.update(part);
        }
        let id = ObjectId(*hasher.finalize().as_bytes());
        let refs = self
            .members
            .iter()
            .zip(self.parts.iter().skip(1))
            .map(|(&(chunk, offset), object)| ChunkRef {
                id: chunk,
                stored_len: object.len() as u32,
                place: Place::Packed { pack: id, offset },
            })
            .collect();
        Pack {
            id,
            parts: self.parts,
            refs,
        }
    }
}

impl Pack {
    pub fn len(&self) -> usize {
        self.parts.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.refs.is_empty()
    }
}

/// The chunk object of `entry` out of `data`, which holds the bytes of
/// `entry`'s pack from byte `data_offset` on.
pub fn chunk_object(
    data: &Bytes,
    data_offset: u32,
    entry: &ChunkRef,
) -> Result<Bytes, FormatError> {
    let Place::Packed { pack, offset } = entry.place else {
        panic!("chunk {} is not in a pack", entry.id);
    };
    let start = offset.checked_sub(data_offset).map(|s| s as usize);
    match start {
        Some(start) if start + entry.stored_len as usize <= data.len() => {
            Ok(data.slice(start..start + entry.stored_len as usize))
        }
        _ => Err(FormatError::corrupt(
            format!("pack {pack}"),
            format!(
                "it ends before chunk {} (bytes {offset}..{})",
                entry.id,
                u64::from(offset) + u64::from(entry.stored_len)
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Codec;
    use crate::format::chunk::{self, Compression};

    fn chunk_of(byte: u8, len: usize) -> EncodedChunk {
        chunk::encode(&vec![byte; len], Compression::None, &Codec::clear())
    }

    #[test]
    fn chunks_come_back_out_of_their_pack_and_verify() {
        let mut builder = PackBuilder::default();
        let chunks = [chunk_of(1, 4096), chunk_of(2, 8192), chunk_of(3, 4096)];
        for chunk in &chunks {
            builder.push(chunk.clone());
        }
        assert_eq!(builder.count(), 3);
        assert!(!builder.is_full());
        let pack = builder.finish();
        let bytes: Bytes = pack.parts.concat().into();
        assert_eq!(pack.id, ObjectId::of(&bytes), "named by its bytes");
        let mut again = PackBuilder::default();
        chunks.iter().for_each(|chunk| again.push(chunk.clone()));
        assert_ne!(
            again.finish().id,
            pack.id,
            "every pack written is a new object"
        );
        for (chunk, entry) in chunks.iter().zip(&pack.refs) {
            assert_eq!(entry.id, chunk.id);
            assert_eq!(entry.pack(), Some(pack.id));
            let object = chunk_object(&bytes, 0, entry).unwrap();
            assert_eq!(object, chunk.object);
            chunk::decode(entry.id, &object, &Codec::clear()).unwrap();
        }
        // From a ranged read that starts at the second chunk.
        let Place::Packed { offset, .. } = pack.refs[1].place else {
            unreachable!()
        };
        let tail = bytes.slice(offset as usize..);
        assert_eq!(
            chunk_object(&tail, offset, &pack.refs[2]).unwrap(),
            chunks[2].object
        );
        assert!(chunk_object(&tail, offset, &pack.refs[0]).is_err());
        assert!(chunk_object(&tail.slice(..100), offset, &pack.refs[1]).is_err());
    }

    #[test]
    fn a_pack_is_full_at_its_target() {
        let mut builder = PackBuilder::default();
        while !builder.is_full() {
            builder.push(chunk_of(builder.count() as u8, 1 << 20));
        }
        assert_eq!(builder.count(), PACK_TARGET_BYTES.div_ceil((1 << 20) + 16));
    }
}
