//! The read path, for writers and read-only volumes alike: the open and
//! sealed epochs' overlays first (data still in the log), then the
//! committed chunk from memory, disk or the store.
//!
//! A read never takes a lock that a writer or a flush holds: it works on
//! one snapshot of what it reads ([`Layers`]), taken once at its start. A
//! writer's is its view, in which every acknowledged write is either in
//! an epoch or in the committed map (a commit swaps both at once); a
//! read-only volume's is one root, which a follower replaces between
//! requests, never during one.

use std::sync::Arc;

use bytes::Bytes;
use futures::future::try_join_all;

use super::chunks::Chunks;
use super::error::{EngineError, Result};
use super::log::{Epoch, Segment, View};
use super::resolve::{self, Source};
use crate::format::{BLOCK_SIZE, Root};

/// A stretch of a volume that holds data, or reads as zeroes (`zero`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub zero: bool,
}

/// Read data as the engine holds it, in order: slices of cached chunks,
/// bytes from the log, and runs of zeroes. Transports send or copy the
/// parts as they are, so a read costs no buffer of its own and, from a
/// cached chunk, no copy at all.
#[derive(Debug, Default)]
pub struct ReadData {
    parts: Vec<ReadPart>,
}

/// One stretch of a [`ReadData`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadPart {
    Data(Bytes),
    /// This many bytes that read as zeroes.
    Zero(usize),
}

impl ReadPart {
    pub fn len(&self) -> usize {
        match self {
            ReadPart::Data(data) => data.len(),
            ReadPart::Zero(len) => *len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl ReadData {
    /// Data made of `parts`, in order (adjacent zero runs merge).
    pub fn from_parts(parts: impl IntoIterator<Item = ReadPart>) -> ReadData {
        let mut data = ReadData::default();
        for part in parts {
            data.push(part);
        }
        data
    }

    pub fn parts(&self) -> &[ReadPart] {
        &self.parts
    }

    pub fn len(&self) -> usize {
        self.parts.iter().map(ReadPart::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies the data into `buf`, which must be exactly as long.
    pub fn copy_to(&self, buf: &mut [u8]) {
        assert_eq!(
            buf.len(),
            self.len(),
            "a read copied into a buffer of another size"
        );
        let mut at = 0;
        for part in &self.parts {
            let out = &mut buf[at..at + part.len()];
            match part {
                ReadPart::Data(data) => out.copy_from_slice(data),
                ReadPart::Zero(_) => out.fill(0),
            }
            at += part.len();
        }
    }

    /// Appends a part, merging runs of zeroes.
    fn push(&mut self, part: ReadPart) {
        match (self.parts.last_mut(), part) {
            (Some(ReadPart::Zero(len)), ReadPart::Zero(more)) => *len += more,
            (_, part) if part.is_empty() => {}
            (_, part) => self.parts.push(part),
        }
    }
}

/// A piece of a read that falls in one chunk.
struct Piece {
    chunk: u64,
    /// The bytes it reads, from the chunk's start.
    bytes: std::ops::Range<usize>,
}

/// Log reads up to this many bytes in total run on the calling task: a
/// pread from the page cache takes less than handing it to another thread.
const INLINE_LOG_READ_MAX: usize = 64 << 10;

/// What a read resolves against: a committed root, and above it the
/// epochs of the write-back log not yet committed, newest first. A
/// writer's reads see its log's [`View`]; a volume opened read-only has
/// no log, and reads a root alone.
pub(super) trait Layers: Sync {
    /// The committed generation under the epochs.
    fn map(&self) -> &Arc<Root>;
    fn epochs_newest_first(&self) -> impl Iterator<Item = &Arc<Epoch>>;
}

impl Layers for View {
    fn map(&self) -> &Arc<Root> {
        View::map(self)
    }

    fn epochs_newest_first(&self) -> impl Iterator<Item = &Arc<Epoch>> {
        View::epochs_newest_first(self)
    }
}

/// A root alone: every byte is committed.
impl Layers for Arc<Root> {
    fn map(&self) -> &Arc<Root> {
        self
    }

    fn epochs_newest_first(&self) -> impl Iterator<Item = &Arc<Epoch>> {
        std::iter::empty()
    }
}

/// Reads `len` bytes at byte `offset` (checked by the caller) of
/// `layers`, as the parts the engine holds.
pub(super) async fn read_parts(
    chunks: &Arc<Chunks>,
    layers: &impl Layers,
    offset: u64,
    len: usize,
) -> Result<ReadData> {
    let map = layers.map();
    let sources = sources(layers, offset, len, map.chunk_size);
    // Before this read fetches anything: requests reach the engine in
    // the order the client sent them, but finish in any order, and the
    // reads a sequential reader has in flight must find the read-ahead
    // started, to join it rather than fetch their chunks alone.
    chunks.read_ahead(map, offset, len as u64).await;
    let committed = try_join_all(sources.iter().filter_map(|(chunk, source)| match source {
        Source::Base(bytes) => Some(chunks.committed_range(map, *chunk, bytes.clone())),
        _ => None,
    }))
    .await?;
    let logged = read_log(&sources).await?;
    let (mut committed, mut logged) = (committed.into_iter(), logged.into_iter());
    let mut data = ReadData::default();
    for (_, source) in sources {
        data.push(match source {
            Source::Base(bytes) => match committed.next().flatten() {
                Some(data) => ReadPart::Data(data),
                None => ReadPart::Zero(bytes.len()),
            },
            Source::Zero(len) => ReadPart::Zero(len),
            Source::Log { .. } => ReadPart::Data(logged.next().expect("one read per log source")),
        });
    }
    Ok(data)
}

/// Which parts of `len` bytes at `offset` (checked by the caller) of
/// `layers` hold data and which read as zeroes without being stored
/// (holes), at chunk granularity: a chunk with any data in it counts as
/// data.
pub(super) async fn allocation(
    chunks: &Chunks,
    layers: &impl Layers,
    offset: u64,
    len: u64,
) -> Result<Vec<Extent>> {
    let map = layers.map();
    let mut extents: Vec<Extent> = Vec::new();
    for piece in pieces(offset, len as usize, map.chunk_size) {
        let sources = resolve::sources(
            layers.epochs_newest_first(),
            piece.chunk,
            piece.bytes.clone(),
        );
        let zero = match sources.as_slice() {
            [Source::Zero(_)] => true,
            _ if sources.iter().any(|s| matches!(s, Source::Log { .. })) => false,
            _ => chunks.lookup(map, piece.chunk).await?.is_zero(),
        };
        let len = piece.bytes.len() as u64;
        match extents.last_mut() {
            Some(last) if last.zero == zero => last.len += len,
            _ => extents.push(Extent { len, zero }),
        }
    }
    Ok(extents)
}

/// Starts fetching the committed chunks of `map` covering `len` bytes at
/// `offset` (checked by the caller) into the cache, without waiting
/// (NBD's CACHE command).
pub(super) fn prefetch(chunks: &Arc<Chunks>, map: Arc<Root>, offset: u64, len: u64) {
    let chunk_size = map.chunk_size;
    let range = offset / chunk_size..(offset + len).div_ceil(chunk_size);
    chunks.prefetch_in_background(map, range);
}

/// Checks that a request of `len` bytes at `offset` is aligned and inside
/// a volume of `size` bytes.
pub(super) fn check_range(op: &'static str, offset: u64, len: u64, size: u64) -> Result<()> {
    if !offset.is_multiple_of(BLOCK_SIZE) || !len.is_multiple_of(BLOCK_SIZE) {
        return Err(EngineError::Unaligned {
            op,
            offset,
            len,
            block: BLOCK_SIZE,
        });
    }
    if offset.checked_add(len).is_none_or(|end| end > size) {
        return Err(EngineError::OutOfRange {
            op,
            offset,
            len,
            size,
        });
    }
    Ok(())
}

/// Cuts `len` bytes at `offset` at chunk boundaries.
fn pieces(offset: u64, len: usize, chunk_size: u64) -> impl Iterator<Item = Piece> {
    let end = offset + len as u64;
    let first = offset / chunk_size;
    let last = end.div_ceil(chunk_size);
    (first..last).map(move |chunk| {
        let chunk_start = chunk * chunk_size;
        let from = offset.max(chunk_start);
        let to = end.min(chunk_start + chunk_size);
        Piece {
            chunk,
            bytes: (from - chunk_start) as usize..(to - chunk_start) as usize,
        }
    })
}

/// Where each stretch of `len` bytes at `offset` is, in `layers`, and the
/// chunk it falls in.
fn sources(layers: &impl Layers, offset: u64, len: usize, chunk_size: u64) -> Vec<(u64, Source)> {
    pieces(offset, len, chunk_size)
        .flat_map(|piece| {
            resolve::sources(layers.epochs_newest_first(), piece.chunk, piece.bytes)
                .into_iter()
                .map(move |source| (piece.chunk, source))
        })
        .collect()
}

/// The bytes of every log source, in order: on the calling task when they
/// are few, else in a blocking task.
async fn read_log(sources: &[(u64, Source)]) -> Result<Vec<Bytes>> {
    let reads: Vec<(Arc<Segment>, u64, usize)> = sources
        .iter()
        .filter_map(|(_, source)| match source {
            Source::Log { segment, pos, len } => Some((Arc::clone(segment), *pos, *len)),
            _ => None,
        })
        .collect();
    let total: usize = reads.iter().map(|(_, _, len)| len).sum();
    if total <= INLINE_LOG_READ_MAX {
        return read_log_now(reads);
    }
    crate::blocking::run(move || read_log_now(reads)).await
}

fn read_log_now(reads: Vec<(Arc<Segment>, u64, usize)>) -> Result<Vec<Bytes>> {
    reads
        .into_iter()
        .map(|(segment, pos, len)| {
            let mut data = vec![0u8; len];
            resolve::read_log(&segment, pos, &mut data)?;
            Ok(Bytes::from(data))
        })
        .collect()
}
