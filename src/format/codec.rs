//! How one volume's objects are named and kept: in the clear, or sealed
//! with the volume's keys (`volume create --encrypt`).
//!
//! In the clear, an object is named by the BLAKE3 hash of its plaintext and
//! stored as its format makes it. Sealed, it is named by a keyed BLAKE3
//! hash, and stored as:
//!
//! ```text
//! magic "ZBSL" | version u8 (1) | 3 bytes zero | nonce (24) | ciphertext | tag (16)
//! ```
//!
//! The ciphertext is the object in the clear (a chunk object with its
//! header, or a root) sealed with XChaCha20-Poly1305; the object's kind is
//! its associated data. A sealed volume refuses an object in the clear,
//! and the reverse: the bucket cannot downgrade one object at a time.

use std::sync::Arc;

use super::{FormatError, ObjectId};
use crate::crypto::{SEAL_OVERHEAD, VolumeKeys};

const MAGIC: &[u8; 4] = b"ZBSL";
const VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

/// Bytes a sealed object has beyond the object in the clear.
pub const SEALED_OVERHEAD: usize = HEADER_LEN + SEAL_OVERHEAD;

/// What kind of object is sealed: authenticated with it, so that one kind
/// never opens as another.
#[derive(Clone, Copy, Debug)]
pub enum Kind {
    /// A chunk or a map page (both chunk objects).
    Chunk,
    Root,
}

impl Kind {
    fn aad(self) -> &'static [u8] {
        match self {
            Kind::Chunk => b"zeroblk chunk object",
            Kind::Root => b"zeroblk root",
        }
    }
}

/// A volume's way of naming and keeping objects; cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Codec {
    keys: Option<Arc<VolumeKeys>>,
}

impl Codec {
    /// Objects in the clear.
    pub fn clear() -> Codec {
        Codec::default()
    }

    /// Objects sealed with `keys`.
    pub fn sealed(keys: VolumeKeys) -> Codec {
        Codec {
            keys: Some(Arc::new(keys)),
        }
    }

    /// A sealed codec with a fixed key, for tests.
    #[cfg(test)]
    pub fn for_tests(byte: u8) -> Codec {
        Codec::sealed(VolumeKeys::for_tests(byte))
    }

    pub fn is_sealed(&self) -> bool {
        self.keys.is_some()
    }

    /// The name of an object whose plaintext is `plain`.
    pub fn id_of(&self, plain: &[u8]) -> ObjectId {
        match &self.keys {
            None => ObjectId::of(plain),
            Some(keys) => ObjectId(keys.object_id(plain)),
        }
    }

    /// The object as stored: `object` itself in the clear, else sealed.
    pub fn seal(&self, kind: Kind, object: Vec<u8>) -> Vec<u8> {
        let Some(keys) = &self.keys else {
            return object;
        };
        let sealed = keys
            .seal(kind.aad(), &object)
            .unwrap_or_else(|e| panic!("cannot seal an object: {e}"));
        let mut out = Vec::with_capacity(HEADER_LEN + sealed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[VERSION, 0, 0, 0]);
        out.extend_from_slice(&sealed);
        out
    }

    /// The object in the clear from what the store holds; `what` names it
    /// in errors.
    pub fn open<'a>(
        &self,
        kind: Kind,
        what: &dyn Fn() -> String,
        stored: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, FormatError> {
        let is_sealed = stored.len() >= HEADER_LEN && &stored[..4] == MAGIC;
        let Some(keys) = &self.keys else {
            if is_sealed {
                return Err(FormatError::corrupt(
                    what(),
                    "it is sealed, but its volume is not encrypted: the bucket was changed outside zeroblk",
                ));
            }
            return Ok(stored.into());
        };
        if !is_sealed {
            return Err(FormatError::corrupt(
                what(),
                "it is in the clear, but its volume is encrypted: the bucket was changed outside zeroblk",
            ));
        }
        if stored[4] != VERSION || stored[5..HEADER_LEN] != [0, 0, 0] {
            return Err(FormatError::corrupt(
                what(),
                format!(
                    "sealed with version {}, which this zeroblk does not know: upgrade zeroblk",
                    stored[4]
                ),
            ));
        }
        keys.open(kind.aad(), &stored[HEADER_LEN..])
            .map(Into::into)
            .map_err(|e| FormatError::corrupt(what(), e.to_string()))
    }
}
