//! Rebuilding the uncommitted epochs from the write-back log after a
//! restart.
//!
//! Records are read in log order and checked (magic, header sanity, crc32c
//! of header and payload, an epoch no older than the segment's first and
//! than the record before). A segment's end record sends replay on to the
//! next segment. Replay stops where no record can be read (a hole, a
//! header that is not one): the segment is cut there and later segments
//! are removed. A record whose header reads but whose checksum fails was
//! cut short by the crash (an append or an in-place rewrite in flight) and
//! is skipped: after a rewrite torn that way, the other copy of its extent
//! still holds the last acknowledged bytes (see [`super::rewrite`]).
//!
//! None of this loses a flushed write, because a flush returns only after
//! every record before it is written and synced (see [`super::epoch`]): a
//! torn or missing record can only belong to writes that no flush covered,
//! and so can everything after it.

use std::io::{self, BufReader, Read};
use std::path::PathBuf;
use std::sync::Arc;

use super::epoch::Epoch;
use super::{
    LogDir, RECORD_HEADER_LEN, RecordFormat, RecordHeader, RecordKind, SEGMENT_HEADER_LEN, Segment,
    SegmentIdentity,
};
use crate::format::BLOCK_SIZE;

/// What a replay found.
#[derive(Debug, Default)]
pub struct Replayed {
    /// Uncommitted epochs, oldest first, sealed and on stable storage.
    pub epochs: Vec<Arc<Epoch>>,
    /// Segments that still hold records of those epochs.
    pub segments: Vec<Arc<Segment>>,
    /// The newest epoch id seen (committed or not).
    pub last_epoch: u64,
    /// The sequence number for the next segment.
    pub next_seq: u64,
    /// Data bytes in the uncommitted epochs.
    pub dirty_bytes: u64,
    /// The newest epoch read so far: epochs only grow along the log.
    newest_in_log: u64,
}

/// The geometry records are checked against.
#[derive(Debug, Clone, Copy)]
pub struct Geometry {
    pub size: u64,
    pub chunk_size: u64,
}

/// Replays `paths` (the log's segments, in order), skipping records of
/// epochs up to `after`, which the store already holds.
pub fn replay(
    log: &LogDir,
    paths: &[PathBuf],
    after: u64,
    geometry: Geometry,
) -> io::Result<Replayed> {
    let mut replayed = Replayed {
        last_epoch: after,
        next_seq: 1,
        ..Replayed::default()
    };
    let mut stopped = false;
    for path in paths {
        let (segment, identity) = Segment::open(path)?;
        replayed.next_seq = replayed.next_seq.max(identity.seq + 1);
        if !named_as(path, &identity) {
            // A free file recycled into a later segment whose new name did
            // not survive a crash (the header is synced before the rename):
            // none of its records are that segment's, and the log does not
            // end here.
            tracing::info!(segment = %path.display(), seq = identity.seq, "removing a recycled log file whose new name was lost");
            log.remove_segment(&segment);
            continue;
        }
        if stopped || identity.log_id != log.log_id() {
            // Never reused: its records may be of epochs the log will
            // number again, and must not pass for new ones.
            tracing::warn!(segment = %path.display(), "removing a log segment past the end of the log");
            log.remove_segment(&segment);
            continue;
        }
        let segment = Arc::new(segment);
        let (valid_end, whole) =
            replay_segment(&segment, identity, after, geometry, &mut replayed)?;
        if !whole {
            // After a clean stop the end is only unwritten space, or what
            // a recycled file held: worth a line only with writes to replay.
            let said = "the log ends here: what follows is unwritten space, what a recycled file held, or a record torn by a crash (writes no flush covered)";
            match replayed.epochs.is_empty() {
                true => tracing::debug!(segment = %path.display(), at = valid_end, "{said}"),
                false => tracing::info!(segment = %path.display(), at = valid_end, "{said}"),
            }
            segment.truncate(valid_end)?;
            stopped = true;
        }
        let holds_uncommitted = replayed
            .epochs
            .last()
            .is_some_and(|e| Arc::ptr_eq(e.segment(), &segment));
        if holds_uncommitted {
            fail::fail_point!("replay::before_sync");
            segment.sync_to(valid_end)?;
            replayed.segments.push(segment);
        } else {
            log.retire_segment(&segment);
        }
    }
    Ok(replayed)
}

/// Whether the segment file at `path` is named for the segment its
/// header says it is.
fn named_as(path: &std::path::Path, identity: &SegmentIdentity) -> bool {
    path.file_name()
        .and_then(|name| Segment::parse_file_name(&name.to_string_lossy()))
        == Some(identity.seq)
}

/// Replays one segment; returns where its last readable record ends and
/// whether the segment ended exactly there.
fn replay_segment(
    segment: &Arc<Segment>,
    identity: SegmentIdentity,
    after: u64,
    geometry: Geometry,
    replayed: &mut Replayed,
) -> io::Result<(u64, bool)> {
    let format = identity.format;
    let len = segment.len()?;
    let mut reader = BufReader::with_capacity(1 << 20, segment.reader()?);
    io::copy(&mut (&mut reader).take(SEGMENT_HEADER_LEN), &mut io::sink())?;
    let mut pos = SEGMENT_HEADER_LEN;
    let mut payload = Vec::new();
    while pos < len {
        let Some((mut header, whole)) = read_record(&mut reader, format, len - pos, &mut payload)?
        else {
            return Ok((pos, false));
        };
        // Records of epochs before the segment's first are what a
        // recycled file held before: the log ends here.
        if header.epoch < identity.first_epoch || header.epoch < replayed.newest_in_log {
            return Ok((pos, false));
        }
        if header.kind == RecordKind::End {
            if !whole {
                return Ok((pos, false));
            }
            replayed.newest_in_log = header.epoch;
            return Ok((pos + header.record_len(format), true));
        }
        if !plausible(&header, geometry) {
            return Ok((pos, false));
        }
        if format == RecordFormat::Positional {
            header.seq = pos;
        }
        if !whole {
            tracing::info!(segment = %segment.path().display(), at = pos, "skipping a log record the crash cut short (a write no flush covered)");
        } else if header.epoch > after {
            apply(segment, pos, &header, format, geometry, replayed);
        }
        replayed.newest_in_log = header.epoch;
        replayed.last_epoch = replayed.last_epoch.max(header.epoch);
        pos += header.record_len(format);
    }
    Ok((pos, true))
}

/// Reads the next record's header and payload, and says whether the
/// checksum matched; `None` where no record can be read.
fn read_record(
    reader: &mut impl Read,
    format: RecordFormat,
    left: u64,
    payload: &mut Vec<u8>,
) -> io::Result<Option<(RecordHeader, bool)>> {
    let header_len = format.header_len();
    if left < header_len as u64 {
        return Ok(None);
    }
    let mut head = [0u8; RECORD_HEADER_LEN];
    let head = &mut head[..header_len];
    reader.read_exact(head)?;
    let Some((header, crc)) = RecordHeader::decode(head, format) else {
        return Ok(None);
    };
    if header.record_len(format) > left {
        return Ok(None);
    }
    payload.resize(header.payload_len as usize, 0);
    reader.read_exact(payload)?;
    let whole = RecordHeader::verify(head, payload, crc);
    Ok(Some((header, whole)))
}

fn plausible(header: &RecordHeader, geometry: Geometry) -> bool {
    header.offset.is_multiple_of(BLOCK_SIZE)
        && header.len.is_multiple_of(BLOCK_SIZE)
        && header.len > 0
        && header
            .offset
            .checked_add(header.len)
            .is_some_and(|end| end <= geometry.size)
}

fn apply(
    segment: &Arc<Segment>,
    pos: u64,
    header: &RecordHeader,
    format: RecordFormat,
    geometry: Geometry,
    replayed: &mut Replayed,
) {
    let continues_last = replayed
        .epochs
        .last()
        .is_some_and(|e| e.id() == header.epoch && Arc::ptr_eq(e.segment(), segment));
    if !continues_last {
        let epoch = Epoch::replayed(header.epoch, Arc::clone(segment), pos, geometry.chunk_size);
        replayed.epochs.push(Arc::new(epoch));
    }
    let epoch = replayed.epochs.last().expect("just ensured");
    match header.kind {
        RecordKind::Write => {
            let data_pos = pos + format.header_len() as u64;
            replayed.dirty_bytes +=
                epoch.record_write(header.offset, header.len, data_pos, header.seq);
        }
        RecordKind::Zero => epoch.record_zero(header.offset, header.len, header.seq),
        // Ends a segment; `replay_segment` stops before applying it.
        RecordKind::End => {}
    }
    epoch.extend_replayed(pos + header.record_len(format));
}
