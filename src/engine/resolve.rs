//! Where each byte of a chunk is: in the log, zero, or in the committed
//! chunk, through the epochs not yet committed. The read path and commits
//! both turn runs of blocks into stretches of bytes here ([`sources`]),
//! and commits build a chunk's bytes here ([`assemble`]).

use std::ops::Range;
use std::sync::Arc;

use super::error::{EngineError, Result};
use super::log::{Epoch, Segment, Slot};
use crate::format::BLOCK_SIZE;

/// Where a block's current content is.
#[derive(Debug, Clone, Copy)]
enum BlockSource<'a> {
    /// In the committed generation's chunk.
    Base,
    Zero,
    /// 4 KiB at this position of this log segment.
    Log(&'a Arc<Segment>, u64),
}

/// A run of consecutive blocks read the same way.
#[derive(Debug, Clone)]
enum Run<'a> {
    Base(Range<usize>),
    Zero(Range<usize>),
    Log {
        blocks: Range<usize>,
        segment: &'a Arc<Segment>,
        pos: u64,
    },
}

/// Resolves `blocks` of `chunk` through `epochs`, newest first.
fn resolve<'a>(
    epochs: impl Iterator<Item = &'a Arc<Epoch>>,
    chunk: u64,
    blocks: Range<usize>,
) -> Vec<BlockSource<'a>> {
    let mut slots: Vec<Option<BlockSource<'a>>> = vec![None; blocks.len()];
    let mut unresolved = blocks.len();
    for epoch in epochs {
        if unresolved == 0 {
            break;
        }
        let segment = epoch.segment();
        epoch
            .changes()
            .resolve(chunk, blocks.clone(), &mut slots, |slot| match slot {
                Slot::Data(pos) => BlockSource::Log(segment, pos),
                Slot::Zero => BlockSource::Zero,
            });
        unresolved = slots.iter().filter(|s| s.is_none()).count();
    }
    slots
        .into_iter()
        .map(|s| s.unwrap_or(BlockSource::Base))
        .collect()
}

/// Groups resolved blocks (indexed from 0) into runs; log blocks join a run
/// when they are contiguous in one segment.
fn runs<'a>(sources: &[BlockSource<'a>]) -> Vec<Run<'a>> {
    let mut runs: Vec<Run<'a>> = Vec::new();
    for (i, source) in sources.iter().enumerate() {
        let extended = match (runs.last_mut(), source) {
            (Some(Run::Base(r)), BlockSource::Base) | (Some(Run::Zero(r)), BlockSource::Zero) => {
                r.end = i + 1;
                true
            }
            (
                Some(Run::Log {
                    blocks,
                    segment,
                    pos,
                }),
                BlockSource::Log(s, p),
            ) if Arc::ptr_eq(segment, s) && *pos + (blocks.len() as u64) * BLOCK_SIZE == *p => {
                blocks.end = i + 1;
                true
            }
            _ => false,
        };
        if !extended {
            runs.push(match *source {
                BlockSource::Base => Run::Base(i..i + 1),
                BlockSource::Zero => Run::Zero(i..i + 1),
                BlockSource::Log(segment, pos) => Run::Log {
                    blocks: i..i + 1,
                    segment,
                    pos,
                },
            });
        }
    }
    runs
}

/// A stretch of a chunk's bytes, in order, and where its content is.
#[derive(Debug, Clone)]
pub enum Source {
    /// These bytes (from the chunk's start) of the committed chunk.
    Base(Range<usize>),
    /// This many bytes that read as zeroes.
    Zero(usize),
    /// `len` bytes at `pos` of a log segment.
    Log {
        segment: Arc<Segment>,
        pos: u64,
        len: usize,
    },
}

impl Source {
    pub fn len(&self) -> usize {
        match self {
            Source::Base(bytes) => bytes.len(),
            Source::Zero(len) | Source::Log { len, .. } => *len,
        }
    }
}

/// Where the bytes `bytes` (block-aligned, from the chunk's start) of
/// `chunk` are, through `epochs` (newest first): the one place runs of
/// blocks become stretches of bytes, for reads and commits alike.
pub fn sources<'a>(
    epochs: impl Iterator<Item = &'a Arc<Epoch>>,
    chunk: u64,
    bytes: Range<usize>,
) -> Vec<Source> {
    let block = BLOCK_SIZE as usize;
    let first_block = bytes.start / block;
    let blocks = first_block..bytes.end / block;
    let byte_range =
        |run: &Range<usize>| (first_block + run.start) * block..(first_block + run.end) * block;
    runs(&resolve(epochs, chunk, blocks))
        .into_iter()
        .map(|run| match run {
            Run::Base(run) => Source::Base(byte_range(&run)),
            Run::Zero(run) => Source::Zero(run.len() * block),
            Run::Log {
                blocks,
                segment,
                pos,
            } => Source::Log {
                segment: Arc::clone(segment),
                pos,
                len: blocks.len() * block,
            },
        })
        .collect()
}

/// Builds the bytes `sources` describe into `out` (as long as they are
/// together): the committed ones from `base` (`None`: the committed chunk
/// is zero), the logged ones read from the log.
pub fn assemble(sources: &[Source], base: Option<&[u8]>, out: &mut [u8]) -> Result<()> {
    let mut at = 0;
    for source in sources {
        let out = &mut out[at..at + source.len()];
        match source {
            Source::Base(bytes) => match base {
                Some(base) => out.copy_from_slice(&base[bytes.clone()]),
                None => out.fill(0),
            },
            Source::Zero(_) => out.fill(0),
            Source::Log { segment, pos, .. } => read_log(segment, *pos, out)?,
        }
        at += source.len();
    }
    Ok(())
}

/// Reads `out.len()` bytes at `pos` of `segment`.
pub fn read_log(segment: &Segment, pos: u64, out: &mut [u8]) -> Result<()> {
    segment
        .read_at(out, pos)
        .map_err(|source| EngineError::Log {
            path: segment.path().to_path_buf(),
            source,
        })
}
