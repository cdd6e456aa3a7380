//! The write-back log as an open volume keeps it: its files ([`LogDir`]),
//! its epochs (the open one and the sealed ones not yet committed) and the
//! [`View`] that readers and writers share.
//!
//! It promises:
//! - the view is replaced as a whole, atomically: a reader or writer sees
//!   one open epoch, the sealed epochs before it and the committed map
//!   they sit on, never a mix of two views;
//! - epochs are sealed in order, and a seal that moves to a new segment
//!   first writes the old segment's end record;
//! - a sealed epoch stays in the view until it is committed, so whoever
//!   makes sealed epochs durable finds every one not yet durable there
//!   ([`View::sealed_after`]);
//! - a segment is retired only once no epoch in the view lives in it;
//! - no segment or spare file is being made once [`Journal::stop`] (or,
//!   in crash tests, `abandon`) returns.

use std::sync::Arc;

use arc_swap::{ArcSwap, Guard};
use uuid::Uuid;

use super::epoch::Epoch;
use super::replay::Replayed;
use super::sealed::SealedEpochs;
use super::{LogDir, RECORD_HEADER_LEN, RecordHeader, SEGMENT_HEADER_LEN, Segment};
use crate::engine::error::{EngineError, Result};
use crate::format::Root;

/// What readers and writers see, swapped atomically as a whole: the open
/// epoch, the sealed but uncommitted ones (oldest first), and the newest
/// committed generation.
pub(in crate::engine) struct View {
    current: Arc<Epoch>,
    sealed: SealedEpochs,
    map: Arc<Root>,
}

impl View {
    /// The epoch writes go to now.
    pub fn current(&self) -> &Arc<Epoch> {
        &self.current
    }

    /// The committed generation under the epochs.
    pub fn map(&self) -> &Arc<Root> {
        &self.map
    }

    pub fn epochs_newest_first(&self) -> impl Iterator<Item = &Arc<Epoch>> {
        std::iter::once(&self.current).chain(self.sealed.newest_first())
    }

    /// The sealed epochs, oldest first: what the next commit takes.
    pub fn sealed_oldest_first(&self) -> Vec<Arc<Epoch>> {
        self.sealed.oldest_first()
    }

    /// The sealed epochs newer than epoch `after`, oldest first: those a
    /// sync must cover when epochs up to `after` are durable.
    pub fn sealed_after(&self, after: u64) -> Vec<Arc<Epoch>> {
        let mut epochs: Vec<Arc<Epoch>> = self
            .sealed
            .newest_first()
            .take_while(|epoch| epoch.id() > after)
            .cloned()
            .collect();
        epochs.reverse();
        epochs
    }

    /// When the oldest change not yet committed was recorded.
    pub fn oldest_uncommitted_change(&self) -> Option<std::time::Instant> {
        let oldest_first = self.sealed.oldest_first().into_iter();
        oldest_first
            .chain(std::iter::once(Arc::clone(&self.current)))
            .find_map(|epoch| epoch.first_change())
    }

    /// The newest epoch every epoch before which is committed (or had
    /// nothing to commit).
    pub fn committed_through(&self) -> u64 {
        let oldest_waiting = self.sealed.oldest().unwrap_or(&self.current);
        oldest_waiting.id().saturating_sub(1)
    }
}

/// Why a seal failed.
pub(in crate::engine) enum SealFailure {
    /// A new segment could not be made; the volume may go on.
    Segment(EngineError),
    /// The old segment's end record could not be written: replay would
    /// stop short of the next segment, so the volume must stop.
    Fatal(EngineError),
}

/// What only seals and commits change, under one async lock.
struct Switch {
    next_epoch: u64,
    next_seq: u64,
    /// Segments holding uncommitted epochs, oldest first.
    segments: Vec<Arc<Segment>>,
}

/// The write-back log of an open volume.
pub(in crate::engine) struct Journal {
    files: LogDir,
    chunk_size: u64,
    /// An epoch that ends past this seals into a fresh segment.
    segment_switch_bytes: u64,
    view: ArcSwap<View>,
    switch: tokio::sync::Mutex<Switch>,
    /// Held while a blocking task makes a log segment or a spare file
    /// for one (see [`Journal::stop`]).
    segment_creation: Arc<tokio::sync::Mutex<()>>,
}

impl Journal {
    /// The log of a volume just opened: `replayed` on top of `root`, and
    /// a fresh `first_segment` for the open epoch.
    pub fn new(
        files: LogDir,
        root: Root,
        replayed: Replayed,
        first_segment: Arc<Segment>,
        segment_switch_bytes: u64,
    ) -> Journal {
        let first_epoch = replayed.last_epoch + 1;
        let current = Arc::new(Epoch::new(
            first_epoch,
            Arc::clone(&first_segment),
            SEGMENT_HEADER_LEN,
            root.chunk_size,
            None,
        ));
        let mut segments = replayed.segments;
        segments.push(first_segment);
        Journal {
            files,
            chunk_size: root.chunk_size,
            segment_switch_bytes,
            view: ArcSwap::from_pointee(View {
                current,
                sealed: SealedEpochs::from_oldest_first(replayed.epochs),
                map: Arc::new(root),
            }),
            switch: tokio::sync::Mutex::new(Switch {
                next_epoch: first_epoch + 1,
                next_seq: replayed.next_seq + 1,
                segments,
            }),
            segment_creation: Arc::default(),
        }
    }

    /// The view now, cheaply, for a request that ends before the next.
    pub fn view(&self) -> Guard<Arc<View>> {
        self.view.load()
    }

    /// The view now, to keep across awaits.
    pub fn view_full(&self) -> Arc<View> {
        self.view.load_full()
    }

    /// The id every segment and root of this log carries.
    pub fn log_id(&self) -> Uuid {
        self.files.log_id()
    }

    /// The log's folder (crash tests cut power around it).
    #[cfg(feature = "failpoints")]
    pub fn dir(&self) -> &std::path::Path {
        self.files.dir()
    }

    /// Seals the open epoch if anything was written to it, and returns the
    /// newest sealed epoch: the one a flush now waits for.
    pub async fn seal(&self) -> std::result::Result<u64, SealFailure> {
        let mut state = self.switch.lock().await;
        let view = self.view.load_full();
        let current = &view.current;
        if current.is_empty() {
            return Ok(current.id() - 1);
        }
        let fresh_segment = if current.end() >= self.segment_switch_bytes {
            let segment = self
                .create_segment(state.next_seq, state.next_epoch)
                .await
                .map_err(SealFailure::Segment)?;
            current.mark_last_in_segment();
            Some(segment)
        } else {
            None
        };
        // No await from here to the store of the new view: writers that
        // find the epoch sealed retry for only this long.
        let end = current.seal();
        let (segment, start) = match fresh_segment {
            Some(segment) => {
                crate::async_fail_point!("log::segment_switch");
                if let Err(source) = close_segment(current.segment(), end, current.id()) {
                    let path = current.segment().path().to_path_buf();
                    return Err(SealFailure::Fatal(EngineError::Log { path, source }));
                }
                state.next_seq += 1;
                state.segments.push(Arc::clone(&segment));
                (segment, SEGMENT_HEADER_LEN)
            }
            None => (Arc::clone(current.segment()), end),
        };
        let next = Epoch::new(
            state.next_epoch,
            segment,
            start,
            self.chunk_size,
            Some(Arc::clone(current)),
        );
        state.next_epoch += 1;
        self.view.store(Arc::new(View {
            current: Arc::new(next),
            sealed: view.sealed.with_newest(Arc::clone(current)),
            map: Arc::clone(&view.map),
        }));
        Ok(current.id())
    }

    /// Makes a committed generation the one readers see, drops the epochs
    /// it contains from the view, and retires the segments no epoch left
    /// in the view lives in.
    pub async fn install(&self, next: Root, committed: &[Arc<Epoch>]) {
        let mut state = self.switch.lock().await;
        let view = self.view.load_full();
        let sealed = view.sealed.without(committed);
        let live: Vec<_> = std::iter::once(&view.current)
            .chain(sealed.newest_first())
            .map(|e| Arc::clone(e.segment()))
            .collect();
        self.view.store(Arc::new(View {
            current: Arc::clone(&view.current),
            sealed,
            map: Arc::new(next),
        }));
        state.segments.retain(|segment| {
            let needed = live.iter().any(|s| Arc::ptr_eq(s, segment));
            if !needed {
                self.files.retire_segment(segment);
            }
            needed
        });
    }

    /// Has a spare segment file made in the background, when the log has
    /// no free file for its next segment (see `LogDir::prepare_spare`).
    /// Failing only costs speed: the next segment is then a new file.
    pub fn prepare_spare_segment(&self) {
        let (files, len) = (self.files.clone(), self.segment_switch_bytes);
        let creation = Arc::clone(&self.segment_creation);
        tokio::spawn(async move {
            // Held until the file is made: a segment switch meanwhile waits
            // and then finds it, and close and crash wait for it to end.
            let preparing = creation.lock_owned().await;
            let prepared = crate::blocking::run(move || {
                let _preparing = preparing;
                files.prepare_spare(len)
            })
            .await;
            if let Err(error) = prepared {
                tracing::warn!(%error, "could not prepare a spare log segment; the next one is a new file, whose flushes cost more");
            }
        });
    }

    /// Stops making files (the volume is closing): a spare being made
    /// stops where it is, and a segment being made is let end. Nothing of
    /// this log touches its folder once this returns.
    pub async fn stop(&self) {
        self.files.stop_spares();
        drop(self.segment_creation.lock().await);
    }

    /// For crash tests: leaves the log's files as a killed process would,
    /// once a segment being made has ended.
    #[cfg(feature = "failpoints")]
    pub async fn abandon(&self) {
        self.files.abandon();
        drop(self.segment_creation.lock().await);
    }

    async fn create_segment(&self, seq: u64, first_epoch: u64) -> Result<Arc<Segment>> {
        let files = self.files.clone();
        fail::fail_point!("log::segment_creation_waits");
        // Taken here, before the blocking task exists, and held until it ends.
        let creating = Arc::clone(&self.segment_creation).lock_owned().await;
        let created = crate::blocking::run(move || {
            let _creating = creating;
            files.create_segment(seq, first_epoch)
        })
        .await;
        let created = created.map(Arc::new).map_err(|source| EngineError::Log {
            path: self.files.dir().to_path_buf(),
            source,
        })?;
        self.prepare_spare_segment();
        Ok(created)
    }
}

/// Writes the record that says `segment` ends at `at`, after its last
/// epoch: what a recycled file holds past it is not part of the log. It is
/// written as the epoch is sealed, before the next segment gets any
/// record, and synced with that epoch, before any epoch of the next
/// segment counts as durable: a replay never mistakes the segment's end
/// for a torn record (which would drop the next segment's writes).
fn close_segment(segment: &Segment, at: u64, epoch: u64) -> std::io::Result<()> {
    let mut record = vec![0u8; RECORD_HEADER_LEN];
    RecordHeader::end(epoch).write_header(&mut record);
    segment.write_at(&record, at)
}
