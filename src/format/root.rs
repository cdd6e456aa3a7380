//! Roots: one committed generation of a volume, the commit point.
//!
//! ```text
//! magic "ZBRT" | version u32 | volume uuid (16) | generation u64 | size u64
//! | chunk size u64 | log id (16) | log epoch u64 | committed at (unix ms) u64
//! | kind u8 (version 3 on) | page count u32 | pages | BLAKE3 of all of the above (32)
//!
//! page: id (32 bytes, zero = absent, all its chunks zero)
//!       | allocated chunks u32 | stored bytes u64
//! ```
//! Integers are little endian. `log id` and `log epoch` name the write-back
//! log and the last epoch of it that this generation contains, so a writer
//! restarting after a crash knows which of its log records are still to be
//! replayed. Each page's counts let a commit that drops a whole page (a
//! discard) keep the volume's totals without reading the page.
//!
//! `kind` says what wrote the root ([`RootKind`]): a writer's commit; a
//! writer that opened the volume and claims the next generation before it
//! serves anything (so that a late commit of the writer it took over from
//! cannot land); or `zeroblk gc`, whose barrier makes a commit in flight
//! start over (see the engine's `gc`). The last two carry the map of the
//! root before them unchanged. A snapshot is a root of its own kind, kept
//! apart from the volume's roots. Roots before version 3 are commits.

use bytes::{Buf, BufMut};
use uuid::Uuid;

use super::codec::{Codec, Kind};
use super::{FormatError, OBJECT_VERSION, ObjectId, PAGE_ENTRIES};

const MAGIC: &[u8; 4] = b"ZBRT";
/// Bytes before the pages in a version 3 root; version 2 lacks the kind.
const FIXED_LEN: usize = 4 + 4 + 16 + 8 * 3 + 16 + 8 * 2 + 1 + 4;
const PAGE_SLOT_LEN: usize = 32 + 4 + 8;
const CHECKSUM_LEN: usize = 32;

/// One generation of a volume's chunk map and its size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Root {
    pub volume: Uuid,
    pub generation: u64,
    pub size: u64,
    pub chunk_size: u64,
    pub log_id: Uuid,
    pub log_epoch: u64,
    pub committed_at_ms: u64,
    pub kind: RootKind,
    pub pages: Vec<PageSlot>,
}

/// What wrote a root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum RootKind {
    /// A writer committed epochs of its log.
    #[default]
    Commit,
    /// A writer opened the volume: the map is the generation before's.
    Open,
    /// `zeroblk gc` fenced commits in flight: the map is the generation
    /// before's.
    GcBarrier,
    /// A snapshot (`volumes/NAME/snapshots/SNAP`): generation `generation`
    /// pinned, `committed_at_ms` when the snapshot was taken. Never a
    /// volume's root.
    Snapshot,
}

impl RootKind {
    fn code(self) -> u8 {
        match self {
            RootKind::Commit => 0,
            RootKind::Open => 1,
            RootKind::GcBarrier => 2,
            RootKind::Snapshot => 3,
        }
    }

    fn from_code(code: u8) -> Option<RootKind> {
        match code {
            0 => Some(RootKind::Commit),
            1 => Some(RootKind::Open),
            2 => Some(RootKind::GcBarrier),
            3 => Some(RootKind::Snapshot),
            _ => None,
        }
    }
}

/// A root's entry for one map page.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageSlot {
    /// The page object; [`ObjectId::NONE`] when every chunk of it is zero.
    pub id: ObjectId,
    /// Non-zero chunks the page maps.
    pub allocated: u32,
    /// Sum of the stored lengths of those chunks.
    pub stored: u64,
}

impl PageSlot {
    pub const EMPTY: PageSlot = PageSlot {
        id: ObjectId::NONE,
        allocated: 0,
        stored: 0,
    };

    pub fn is_empty(&self) -> bool {
        self.id.is_none()
    }
}

impl Root {
    /// Generation 0 of a new volume: every chunk reads as zeroes.
    pub fn empty(volume: Uuid, size: u64, chunk_size: u64) -> Root {
        Root {
            volume,
            generation: 0,
            size,
            chunk_size,
            log_id: Uuid::nil(),
            log_epoch: 0,
            committed_at_ms: now_ms(),
            kind: RootKind::Commit,
            pages: vec![PageSlot::EMPTY; page_count(size, chunk_size)],
        }
    }

    /// The next generation, with this one's map, written by `kind`.
    pub fn succeeded_by(&self, kind: RootKind) -> Root {
        Root {
            generation: self.generation + 1,
            committed_at_ms: now_ms(),
            kind,
            ..self.clone()
        }
    }

    pub fn chunk_count(&self) -> u64 {
        self.size.div_ceil(self.chunk_size)
    }

    /// Chunks of the volume that hold data.
    pub fn allocated_chunks(&self) -> u64 {
        self.pages.iter().map(|p| u64::from(p.allocated)).sum()
    }

    /// Bytes the volume's chunks take in the store (before deduplication).
    pub fn stored_bytes(&self) -> u64 {
        self.pages.iter().map(|p| p.stored).sum()
    }

    /// The most bytes a stored root of a volume of chunk size `chunk_size`
    /// and at most `max_size` bytes takes: a larger one is refused before
    /// it is read.
    pub fn max_stored_len(chunk_size: u64, max_size: u64) -> u64 {
        let pages = (max_size / chunk_size.max(1)).div_ceil(PAGE_ENTRIES as u64);
        (FIXED_LEN + CHECKSUM_LEN + super::codec::SEALED_OVERHEAD) as u64
            + pages * PAGE_SLOT_LEN as u64
    }

    /// The root as stored: sealed, for an encrypted volume.
    pub fn encode(&self, codec: &Codec) -> Vec<u8> {
        codec.seal(Kind::Root, self.encode_clear())
    }

    fn encode_clear(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(FIXED_LEN + PAGE_SLOT_LEN * self.pages.len() + CHECKSUM_LEN);
        out.put_slice(MAGIC);
        out.put_u32_le(OBJECT_VERSION);
        out.put_slice(self.volume.as_bytes());
        out.put_u64_le(self.generation);
        out.put_u64_le(self.size);
        out.put_u64_le(self.chunk_size);
        out.put_slice(self.log_id.as_bytes());
        out.put_u64_le(self.log_epoch);
        out.put_u64_le(self.committed_at_ms);
        out.put_u8(self.kind.code());
        out.put_u32_le(self.pages.len() as u32);
        for page in &self.pages {
            out.put_slice(&page.id.0);
            out.put_u32_le(page.allocated);
            out.put_u64_le(page.stored);
        }
        let checksum = blake3::hash(&out);
        out.put_slice(checksum.as_bytes());
        out
    }

    pub fn decode(what: &str, stored: &[u8], codec: &Codec) -> Result<Root, FormatError> {
        let object = &*codec.open(Kind::Root, &|| what.to_string(), stored)?;
        let corrupt = |reason: &str| FormatError::corrupt(what, reason);
        if object.len() < FIXED_LEN - 1 + CHECKSUM_LEN || &object[..4] != MAGIC {
            return Err(corrupt("not a root object"));
        }
        let (body, checksum) = object.split_at(object.len() - CHECKSUM_LEN);
        let mut buf = &body[4..];
        let version = buf.get_u32_le();
        if version > OBJECT_VERSION {
            return Err(FormatError::NewerVersion {
                what: what.to_string(),
                found: version,
                supported: OBJECT_VERSION,
            });
        }
        if blake3::hash(body).as_bytes() != checksum {
            return Err(corrupt("checksum mismatch"));
        }
        let volume = take_uuid(&mut buf);
        let generation = buf.get_u64_le();
        let size = buf.get_u64_le();
        let chunk_size = buf.get_u64_le();
        let log_id = take_uuid(&mut buf);
        let log_epoch = buf.get_u64_le();
        let committed_at_ms = buf.get_u64_le();
        let kind = match version {
            0..=2 => RootKind::Commit,
            _ => RootKind::from_code(buf.get_u8())
                .ok_or_else(|| corrupt("it says it was written by something unknown"))?,
        };
        if buf.remaining() < 4 {
            return Err(corrupt("page list length is wrong"));
        }
        let count = buf.get_u32_le() as usize;
        if buf.remaining() != count * PAGE_SLOT_LEN || chunk_size == 0 {
            return Err(corrupt("page list length is wrong"));
        }
        if count != page_count(size, chunk_size) {
            return Err(corrupt("page count does not match the size"));
        }
        let pages = (0..count)
            .map(|_| {
                let mut id = [0u8; 32];
                buf.copy_to_slice(&mut id);
                PageSlot {
                    id: ObjectId(id),
                    allocated: buf.get_u32_le(),
                    stored: buf.get_u64_le(),
                }
            })
            .collect();
        Ok(Root {
            volume,
            generation,
            size,
            chunk_size,
            log_id,
            log_epoch,
            committed_at_ms,
            kind,
            pages,
        })
    }
}

/// Pages needed to map a volume of `size` bytes.
pub fn page_count(size: u64, chunk_size: u64) -> usize {
    size.div_ceil(chunk_size).div_ceil(PAGE_ENTRIES as u64) as usize
}

pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn take_uuid(buf: &mut &[u8]) -> Uuid {
    let mut raw = [0u8; 16];
    buf.copy_to_slice(&mut raw);
    Uuid::from_bytes(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_damage() {
        let mut root = Root::empty(Uuid::new_v4(), 3 << 30, 1 << 20);
        assert_eq!(root.pages.len(), 3);
        root.pages[1] = PageSlot {
            id: ObjectId::of(b"page"),
            allocated: 3,
            stored: 999,
        };
        root.generation = 42;
        root.log_id = Uuid::new_v4();
        root.kind = RootKind::GcBarrier;
        let bytes = root.encode(&Codec::clear());
        assert_eq!(Root::decode("root", &bytes, &Codec::clear()).unwrap(), root);
        assert_eq!(root.allocated_chunks(), 3);
        assert_eq!(root.stored_bytes(), 999);
        let mut damaged = bytes.clone();
        damaged[30] ^= 0x10;
        assert!(Root::decode("root", &damaged, &Codec::clear()).is_err());
        assert!(Root::decode("root", &bytes[..20], &Codec::clear()).is_err());
    }

    #[test]
    fn a_sealed_root_opens_only_with_its_keys() {
        let root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        let sealed = Codec::for_tests(7);
        let bytes = root.encode(&sealed);
        assert!(!bytes.windows(16).any(|w| w == root.volume.as_bytes()));
        assert_eq!(Root::decode("root", &bytes, &sealed).unwrap(), root);
        assert!(Root::decode("root", &bytes, &Codec::for_tests(8)).is_err());
        assert!(Root::decode("root", &bytes, &Codec::clear()).is_err());
        let clear = root.encode(&Codec::clear());
        assert!(Root::decode("root", &clear, &sealed).is_err(), "downgraded");
    }

    #[test]
    fn version_2_roots_are_read_as_commits() {
        let mut root = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20);
        root.kind = RootKind::Open;
        let v3 = root.encode(&Codec::clear());
        let kind_at = FIXED_LEN - 4 - 1;
        let mut v2 = v3[..v3.len() - CHECKSUM_LEN].to_vec();
        v2.remove(kind_at);
        v2[4..8].copy_from_slice(&2u32.to_le_bytes());
        let checksum = blake3::hash(&v2);
        v2.extend_from_slice(checksum.as_bytes());
        let decoded = Root::decode("root", &v2, &Codec::clear()).unwrap();
        assert_eq!(decoded.kind, RootKind::Commit);
        assert_eq!(decoded.pages, root.pages);
    }

    #[test]
    fn a_newer_version_is_refused_with_advice() {
        let mut bytes = Root::empty(Uuid::new_v4(), 1 << 30, 1 << 20).encode(&Codec::clear());
        bytes[4] = 9;
        let error = Root::decode("root", &bytes, &Codec::clear())
            .unwrap_err()
            .to_string();
        assert!(error.contains("upgrade zeroblk"), "{error}");
    }
}
