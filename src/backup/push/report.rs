//! What a push did, or (a dry run) would do: `backup push` prints it,
//! or its JSON.

use serde::Serialize;

use super::super::destination::Destination;
use super::super::record::SnapshotRecord;
use super::{Plan, PushRequest};

/// Where the snapshot a push sends came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// The push took it.
    Taken,
    /// An interrupted push took it; this one goes on with it.
    Resumed,
    /// It was named (`--snapshot`).
    Named,
}

/// What a push did, or (dry run) would do.
#[derive(Debug, Clone, Serialize)]
pub struct PushReport {
    volume: String,
    subvolume: String,
    destination: String,
    snapshot: Option<String>,
    taken: bool,
    resumed: bool,
    already_pushed: bool,
    dry_run: bool,
    sequence: Option<String>,
    parent: Option<String>,
    full_reason: Option<String>,
    estimate_bytes: Option<u64>,
    estimated_from: Option<String>,
    stream_bytes: u64,
    stored_bytes: u64,
    uploaded_bytes: u64,
    chunks: usize,
    chunks_reused: usize,
    encrypted: bool,
}

impl PushReport {
    pub(super) fn new(request: &PushRequest, destination: &Destination) -> PushReport {
        PushReport {
            volume: request.lineage.volume().to_string(),
            subvolume: request.lineage.subvolume().to_string(),
            destination: destination.url(),
            snapshot: None,
            taken: false,
            resumed: false,
            already_pushed: false,
            dry_run: request.dry_run,
            sequence: None,
            parent: None,
            full_reason: None,
            estimate_bytes: None,
            estimated_from: None,
            stream_bytes: 0,
            stored_bytes: 0,
            uploaded_bytes: 0,
            chunks: 0,
            chunks_reused: 0,
            encrypted: request.sealer.recipients() > 0,
        }
    }

    /// Notes the snapshot sent; `how` says whether the push took it, or
    /// goes on with an interrupted push's.
    pub(super) fn note_snapshot(&mut self, name: &str, how: Origin) {
        self.snapshot = Some(name.to_string());
        self.taken = how == Origin::Taken;
        self.resumed = how == Origin::Resumed;
    }

    /// Notes what the push sends: against a parent, or a full stream that
    /// starts sequence `full_sequence` (none when a dry run has no
    /// snapshot to name it after).
    pub(super) fn note_plan(&mut self, plan: &Plan, full_sequence: Option<&str>) {
        match plan {
            Plan::Incremental { sequence, parent } => {
                self.sequence = Some(sequence.clone());
                self.parent = Some(parent.clone());
            }
            Plan::Full { reason } => {
                self.sequence = full_sequence.map(str::to_string);
                self.full_reason = Some(reason.clone());
            }
        }
    }

    pub(super) fn note_already_pushed(&mut self) {
        self.already_pushed = true;
    }

    /// Notes a dry run's estimate, made `from` another snapshot than the
    /// one a push would send, if it was.
    pub(super) fn note_estimate(&mut self, bytes: u64, from: Option<&str>) {
        self.estimate_bytes = Some(bytes);
        self.estimated_from = from.map(str::to_string);
    }

    /// Notes what the push stored: `reused` chunks (and bytes) were
    /// stored by an interrupted push already.
    pub(super) fn stored(&mut self, record: &SnapshotRecord, (reused, reused_bytes): (usize, u64)) {
        let entry = record.entry();
        self.stream_bytes = entry.stream_bytes();
        self.stored_bytes = entry.stored_bytes();
        self.uploaded_bytes = entry.stored_bytes() - reused_bytes;
        self.chunks = record.chunks().len();
        self.chunks_reused = reused;
    }

    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }
    pub fn taken(&self) -> bool {
        self.taken
    }
    pub fn resumed(&self) -> bool {
        self.resumed
    }
    pub fn already_pushed(&self) -> bool {
        self.already_pushed
    }
    pub fn dry_run(&self) -> bool {
        self.dry_run
    }
    pub fn sequence(&self) -> Option<&str> {
        self.sequence.as_deref()
    }
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
    pub fn full_reason(&self) -> Option<&str> {
        self.full_reason.as_deref()
    }
    pub fn estimate(&self) -> Option<(u64, Option<&str>)> {
        self.estimate_bytes
            .map(|b| (b, self.estimated_from.as_deref()))
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }
    pub fn uploaded_bytes(&self) -> u64 {
        self.uploaded_bytes
    }
    pub fn chunks(&self) -> (usize, usize) {
        (self.chunks, self.chunks_reused)
    }
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }
    pub fn destination(&self) -> &str {
        &self.destination
    }
    pub fn lineage(&self) -> (&str, &str) {
        (&self.volume, &self.subvolume)
    }
}
