//! Chunk objects: a 16-byte header, then the chunk's bytes, raw or zstd.
//!
//! ```text
//! offset size field
//!      0    4 magic "ZBCK"
//!      4    1 format version (1 or 2; see the module above)
//!      5    1 codec: 0 raw, 1 zstd
//!      6    2 reserved, zero
//!      8    4 raw length (little endian)
//!     12    4 payload length (little endian)
//!     16    - payload
//! ```
//!
//! The object's name is the BLAKE3 hash of the raw bytes (keyed, for an
//! encrypted volume, whose objects are then sealed: see [`super::codec`]);
//! [`decode`] checks it, so a reader gets the chunk it asked for or an
//! error, never other data.

use std::fmt;
use std::str::FromStr;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use super::codec::{Codec, Kind};
use super::{FormatError, OBJECT_VERSION, ObjectId};

const MAGIC: &[u8; 4] = b"ZBCK";
const HEADER_LEN: usize = 16;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;

/// How chunk objects are compressed; fixed per volume at creation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Compression {
    None,
    Zstd { level: i32 },
}

impl Default for Compression {
    fn default() -> Self {
        Compression::Zstd { level: 3 }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Compression::None => f.write_str("none"),
            Compression::Zstd { level } => write!(f, "zstd:{level}"),
        }
    }
}

impl FromStr for Compression {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad =
            || format!("`{s}` is not a compression: write zstd, zstd:LEVEL (1 to 19) or none");
        match s.split_once(':') {
            None if s == "none" => Ok(Compression::None),
            None if s == "zstd" => Ok(Compression::default()),
            Some(("zstd", level)) => match level.parse::<i32>() {
                Ok(level) if (1..=19).contains(&level) => Ok(Compression::Zstd { level }),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    }
}

impl From<Compression> for String {
    fn from(c: Compression) -> String {
        c.to_string()
    }
}

impl TryFrom<String> for Compression {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

/// A chunk ready to upload: its name and the object's bytes.
#[derive(Debug, Clone)]
pub struct EncodedChunk {
    pub id: ObjectId,
    pub object: Bytes,
}

/// Encodes a chunk, compressing it when that saves at least 1/32 of it.
pub fn encode(raw: &[u8], compression: Compression, codec: &Codec) -> EncodedChunk {
    let id = codec.id_of(raw);
    let compressed = match compression {
        Compression::Zstd { level } if !looks_incompressible(raw) => {
            zstd::bulk::compress(raw, level).ok()
        }
        _ => None,
    };
    let (format, payload): (u8, &[u8]) = match &compressed {
        Some(c) if c.len() < raw.len() - raw.len() / 32 => (CODEC_ZSTD, c),
        _ => (CODEC_RAW, raw),
    };
    let mut object = BytesMut::with_capacity(HEADER_LEN + payload.len());
    object.put_slice(MAGIC);
    object.put_u8(OBJECT_VERSION as u8);
    object.put_u8(format);
    object.put_u16_le(0);
    object.put_u32_le(raw.len() as u32);
    object.put_u32_le(payload.len() as u32);
    object.put_slice(payload);
    let object = match codec.is_sealed() {
        false => object.freeze(),
        true => codec.seal(Kind::Chunk, object.to_vec()).into(),
    };
    EncodedChunk { id, object }
}

/// Decodes a chunk object and checks that it is the chunk `expected`.
pub fn decode(expected: ObjectId, stored: &[u8], codec: &Codec) -> Result<Vec<u8>, FormatError> {
    let what = || format!("chunk {expected}");
    let object = &*codec.open(Kind::Chunk, &what, stored)?;
    if object.len() < HEADER_LEN || &object[..4] != MAGIC {
        return Err(FormatError::corrupt(what(), "no chunk header"));
    }
    let mut header = &object[4..HEADER_LEN];
    let version = header.get_u8();
    let format = header.get_u8();
    let _reserved = header.get_u16_le();
    let raw_len = header.get_u32_le() as usize;
    let payload_len = header.get_u32_le() as usize;
    if u32::from(version) > OBJECT_VERSION {
        return Err(FormatError::NewerVersion {
            what: what(),
            found: version.into(),
            supported: OBJECT_VERSION,
        });
    }
    let payload = &object[HEADER_LEN..];
    if payload.len() != payload_len {
        return Err(FormatError::corrupt(
            what(),
            format!(
                "payload is {} bytes, header says {payload_len}",
                payload.len()
            ),
        ));
    }
    let raw = match format {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => zstd::bulk::decompress(payload, raw_len)
            .map_err(|e| FormatError::corrupt(what(), format!("zstd: {e}")))?,
        other => {
            return Err(FormatError::corrupt(
                what(),
                format!("unknown codec {other}"),
            ));
        }
    };
    if raw.len() != raw_len {
        return Err(FormatError::corrupt(
            what(),
            "length differs from its header",
        ));
    }
    let actual = codec.id_of(&raw);
    if actual != expected {
        return Err(FormatError::HashMismatch {
            what: what(),
            expected,
            actual,
        });
    }
    Ok(raw)
}

/// Whether a quick, cheap compression of a sample says the chunk will not
/// shrink: data that btrfs (or anything else) already compressed is stored
/// raw without spending a full zstd pass on it.
fn looks_incompressible(raw: &[u8]) -> bool {
    const SAMPLE: usize = 16 << 10;
    if raw.len() < 4 * SAMPLE {
        return false;
    }
    let mut sample = Vec::with_capacity(3 * SAMPLE);
    for start in [0, raw.len() / 2, raw.len() - SAMPLE] {
        sample.extend_from_slice(&raw[start..start + SAMPLE]);
    }
    match zstd::bulk::compress(&sample, 1) {
        Ok(c) => c.len() > sample.len() - sample.len() / 32,
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(seed);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    #[test]
    fn round_trips_compressible_and_random_data() {
        let text: Vec<u8> = b"zeroblk ".iter().cycle().take(1 << 20).copied().collect();
        let random = pseudo_random(1 << 20, 7);
        for raw in [text, random] {
            let chunk = encode(&raw, Compression::default(), &Codec::clear());
            assert_eq!(
                decode(chunk.id, &chunk.object, &Codec::clear()).unwrap(),
                raw
            );
        }
    }

    #[test]
    fn compresses_only_when_it_pays() {
        let text: Vec<u8> = b"abc".iter().cycle().take(1 << 20).copied().collect();
        assert!(
            encode(&text, Compression::default(), &Codec::clear())
                .object
                .len()
                < 4096
        );
        let random = pseudo_random(1 << 20, 8);
        let chunk = encode(&random, Compression::default(), &Codec::clear());
        assert_eq!(chunk.object.len(), HEADER_LEN + random.len());
        assert_eq!(chunk.object[5], CODEC_RAW);
    }

    #[test]
    fn a_flipped_byte_is_an_error_never_data() {
        let raw = pseudo_random(64 << 10, 9);
        let chunk = encode(&raw, Compression::None, &Codec::clear());
        let mut object = chunk.object.to_vec();
        object[HEADER_LEN + 100] ^= 1;
        assert!(matches!(
            decode(chunk.id, &object, &Codec::clear()),
            Err(FormatError::HashMismatch { .. })
        ));
        let other = ObjectId::of(b"other");
        assert!(decode(other, &chunk.object, &Codec::clear()).is_err());
        assert!(decode(chunk.id, &chunk.object[..10], &Codec::clear()).is_err());
    }

    #[test]
    fn a_sealed_chunk_hides_its_bytes_and_opens_only_with_its_keys() {
        let sealed = Codec::for_tests(1);
        let text: Vec<u8> = b"a known pattern "
            .iter()
            .cycle()
            .take(1 << 20)
            .copied()
            .collect();
        for compression in [Compression::None, Compression::default()] {
            let chunk = encode(&text, compression, &sealed);
            assert_ne!(chunk.id, ObjectId::of(&text), "a keyed name");
            assert!(!chunk.object.windows(15).any(|w| w == b"a known pattern"));
            assert_eq!(decode(chunk.id, &chunk.object, &sealed).unwrap(), text);
            assert!(decode(chunk.id, &chunk.object, &Codec::for_tests(2)).is_err());
            assert!(decode(chunk.id, &chunk.object, &Codec::clear()).is_err());
        }
        let clear = encode(&text, Compression::None, &Codec::clear());
        assert!(
            decode(sealed.id_of(&text), &clear.object, &sealed).is_err(),
            "an object in the clear is refused by an encrypted volume"
        );
    }

    #[test]
    fn compression_parses() {
        assert_eq!("zstd:5".parse(), Ok(Compression::Zstd { level: 5 }));
        assert_eq!("zstd".parse(), Ok(Compression::Zstd { level: 3 }));
        assert_eq!("none".parse(), Ok(Compression::None));
        assert!("zstd:99".parse::<Compression>().is_err());
        assert!("lz4".parse::<Compression>().is_err());
    }
}
