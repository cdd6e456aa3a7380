//! The read path: the open and sealed epochs' overlays first (data still
//! in the log), then the committed chunk from memory, disk or the store.
//!
//! A read never takes a lock that a writer or a flush holds: it works on
//! one snapshot of the view, in which every acknowledged write is either
//! in an epoch or in the committed map (a commit swaps both at once).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use futures::future::try_join_all;

use super::error::{EngineError, Result};
use super::log::Segment;
use super::resolve::{self, Run};
use super::volume::{Shared, Volume};
use crate::format::{self, BLOCK_SIZE, ChunkRef, Root, keys};

/// A stretch of a volume that holds data, or reads as zeroes (`zero`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub zero: bool,
}

/// A piece of a read that falls in one chunk.
struct Piece {
    chunk: u64,
    /// Byte range within the caller's buffer.
    out: std::ops::Range<usize>,
    /// First block within the chunk.
    first_block: usize,
}

/// Log bytes to copy into the caller's buffer.
struct LogCopy {
    segment: Arc<Segment>,
    pos: u64,
    out: std::ops::Range<usize>,
}

impl Volume {
    /// Reads `buf.len()` bytes at byte `offset`.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        let shared = &self.shared;
        shared.check_readable("read", offset, buf.len() as u64)?;
        shared.stats.reads.fetch_add(1, Ordering::Relaxed);
        shared
            .stats
            .bytes_read
            .fetch_add(buf.len() as u64, Ordering::Relaxed);
        let view = shared.view.load_full();
        let chunk_size = shared.superblock.chunk_size;
        let mut log_copies = Vec::new();
        let mut base_pieces: Vec<(u64, std::ops::Range<usize>, usize)> = Vec::new();
        for piece in pieces(offset, buf.len(), chunk_size) {
            let blocks =
                piece.first_block..piece.first_block + piece.out.len() / BLOCK_SIZE as usize;
            let sources = resolve::resolve(view.epochs_newest_first(), piece.chunk, blocks);
            for run in resolve::runs(&sources) {
                let (blocks, what) = match run {
                    Run::Base(b) => (b, None),
                    Run::Zero(b) => (b, Some(None)),
                    Run::Log {
                        blocks,
                        segment,
                        pos,
                    } => (blocks, Some(Some((segment, pos)))),
                };
                let out = piece.out.start + blocks.start * BLOCK_SIZE as usize
                    ..piece.out.start + blocks.end * BLOCK_SIZE as usize;
                match what {
                    None => base_pieces.push((piece.chunk, out, piece.first_block + blocks.start)),
                    Some(None) => buf[out].fill(0),
                    Some(Some((segment, pos))) => log_copies.push(LogCopy {
                        segment: Arc::clone(segment),
                        pos,
                        out,
                    }),
                }
            }
        }
        let chunks = try_join_all(
            base_pieces
                .iter()
                .map(|(chunk, _, _)| shared.committed_chunk(&view.map, *chunk)),
        )
        .await?;
        for ((_, out, first_block), chunk) in base_pieces.iter().zip(chunks) {
            let from = first_block * BLOCK_SIZE as usize;
            match chunk {
                Some(data) => buf[out.clone()].copy_from_slice(&data[from..from + out.len()]),
                None => buf[out.clone()].fill(0),
            }
        }
        if !log_copies.is_empty() {
            read_log(log_copies, buf).await?;
        }
        shared.read_ahead(&view.map, offset, buf.len() as u64);
        Ok(())
    }

    /// Which parts of `len` bytes at `offset` hold data and which read as
    /// zeroes without being stored (holes), at chunk granularity: a chunk
    /// with any data in it counts as data.
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        let shared = &self.shared;
        shared.check_readable("block-status", offset, len)?;
        let view = shared.view.load_full();
        let chunk_size = shared.superblock.chunk_size;
        let mut extents: Vec<Extent> = Vec::new();
        for piece in pieces(offset, len as usize, chunk_size) {
            let blocks =
                piece.first_block..piece.first_block + piece.out.len() / BLOCK_SIZE as usize;
            let sources = resolve::resolve(view.epochs_newest_first(), piece.chunk, blocks);
            let runs = resolve::runs(&sources);
            let zero = match runs.as_slice() {
                [Run::Zero(_)] => true,
                _ if runs.iter().any(|r| matches!(r, Run::Log { .. })) => false,
                _ => {
                    let base = shared.pages.lookup(&view.map, piece.chunk).await?;
                    base.is_zero() && runs.iter().all(|r| !matches!(r, Run::Log { .. }))
                }
            };
            let len = piece.out.len() as u64;
            match extents.last_mut() {
                Some(last) if last.zero == zero => last.len += len,
                _ => extents.push(Extent { len, zero }),
            }
        }
        Ok(extents)
    }

    /// Starts fetching the committed chunks covering `len` bytes at
    /// `offset` into the cache, without waiting (NBD's CACHE command).
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        let shared = &self.shared;
        shared.check_readable("cache", offset, len)?;
        let map = Arc::clone(&shared.view.load().map);
        let chunk_size = shared.superblock.chunk_size;
        let chunks = offset / chunk_size..(offset + len).div_ceil(chunk_size);
        shared.spawn_prefetch(map, chunks);
        Ok(())
    }
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
            out: (from - offset) as usize..(to - offset) as usize,
            first_block: ((from - chunk_start) / BLOCK_SIZE) as usize,
        }
    })
}

async fn read_log(copies: Vec<LogCopy>, buf: &mut [u8]) -> Result<()> {
    let read = tokio::task::spawn_blocking(move || {
        copies
            .into_iter()
            .map(|copy| {
                let mut data = vec![0u8; copy.out.len()];
                copy.segment
                    .read_at(&mut data, copy.pos)
                    .map_err(|source| EngineError::Log {
                        path: copy.segment.path().to_path_buf(),
                        source,
                    })?;
                Ok((copy.out, data))
            })
            .collect::<Result<Vec<_>>>()
    })
    .await
    .expect("log reads do not panic")?;
    for (out, data) in read {
        buf[out].copy_from_slice(&data);
    }
    Ok(())
}

impl Shared {
    /// Like [`Shared::check_request`], but a stopped volume still reads.
    fn check_readable(&self, op: &'static str, offset: u64, len: u64) -> Result<()> {
        match self.check_request(op, offset, len) {
            Err(EngineError::Stopped(_)) => Ok(()),
            other => other,
        }
    }

    /// The committed content of `chunk` in `root`; `None` when zero.
    pub async fn committed_chunk(&self, root: &Root, chunk: u64) -> Result<Option<Bytes>> {
        let entry = self.pages.lookup(root, chunk).await?;
        if entry.is_zero() {
            return Ok(None);
        }
        self.load_chunk(entry, root.generation).await.map(Some)
    }

    /// A chunk's bytes from the caches, else from the store (verified).
    pub async fn load_chunk(&self, entry: ChunkRef, generation: u64) -> Result<Bytes> {
        let id = entry.id;
        self.chunks
            .get_or_fetch(id, async move {
                let key = keys::chunk(&id);
                let object = self
                    .store
                    .get(&key)
                    .await?
                    .ok_or(EngineError::MissingObject { key, generation })?;
                let raw = tokio::task::spawn_blocking(move || format::chunk::decode(id, &object))
                    .await
                    .expect("chunk decoding does not panic")?;
                Ok::<_, EngineError>(Bytes::from(raw))
            })
            .await
            .map_err(|error| {
                tracing::error!(chunk = %id, %error, "cannot read a chunk");
                EngineError::Shared(error)
            })
    }

    /// After a read that continues the previous one, fetches the next
    /// chunks in the background, so a sequential reader finds them cached.
    fn read_ahead(self: &Arc<Self>, map: &Arc<Root>, offset: u64, len: u64) {
        let chunk_size = self.superblock.chunk_size;
        let expected = self.next_readahead.swap(offset + len, Ordering::AcqRel);
        let window = self.options.readahead_chunks;
        if expected != offset || window == 0 {
            return;
        }
        // Look ahead once per chunk entered, not once per request.
        let entered_a_chunk = offset.is_multiple_of(chunk_size)
            || offset / chunk_size != (offset + len - 1) / chunk_size;
        if !entered_a_chunk {
            return;
        }
        let next_chunk = (offset + len).div_ceil(chunk_size);
        let end = (next_chunk + window).min(map.chunk_count());
        self.spawn_prefetch(Arc::clone(map), next_chunk..end);
    }

    fn spawn_prefetch(self: &Arc<Self>, map: Arc<Root>, chunks: std::ops::Range<u64>) {
        let fits_in_memory = self.options.memory_cache_bytes / self.superblock.chunk_size;
        let end = chunks.end.min(chunks.start + fits_in_memory);
        for chunk in chunks.start..end {
            let shared = Arc::clone(self);
            let map = Arc::clone(&map);
            tokio::spawn(async move {
                let _ = shared.committed_chunk(&map, chunk).await;
            });
        }
    }
}
