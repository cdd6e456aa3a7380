//! Where each block of a chunk is: in the log, zero, or in the committed
//! chunk. Shared by the read path and by commits.

use std::ops::Range;
use std::sync::Arc;

use super::epoch::Epoch;
use super::log::Segment;
use super::overlay::Slot;
use crate::format::BLOCK_SIZE;

/// Where a block's current content is.
#[derive(Debug, Clone, Copy)]
pub enum BlockSource<'a> {
    /// In the committed generation's chunk.
    Base,
    Zero,
    /// 4 KiB at this position of this log segment.
    Log(&'a Arc<Segment>, u64),
}

/// A run of consecutive blocks read the same way.
#[derive(Debug, Clone)]
pub enum Run<'a> {
    Base(Range<usize>),
    Zero(Range<usize>),
    Log {
        blocks: Range<usize>,
        segment: &'a Arc<Segment>,
        pos: u64,
    },
}

/// Resolves `blocks` of `chunk` through `epochs`, newest first.
pub fn resolve<'a>(
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
        let segment = &epoch.segment;
        epoch
            .overlay
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
pub fn runs<'a>(sources: &[BlockSource<'a>]) -> Vec<Run<'a>> {
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
