//! `backup push`: one read-only snapshot of a subvolume into a
//! destination, as a full stream or against a parent (see `parent.rs`).
//!
//! The order is the contract: the chunks, then the snapshot's record,
//! then its entry in the sequence (the moment the push is complete), then
//! the head when the push started a sequence, and last the source's note
//! of its newest pushed snapshot (which `snapshot prune` then keeps). A
//! push stopped anywhere before the sequence lists it leaves nothing
//! listed, and the next push of the lineage resumes it (`journal.rs`).

mod parent;
mod report;
mod upload;

use std::path::{Path, PathBuf};

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::codec::Sealer;
use super::destination::{Chains, Destination};
use super::journal::{Journal, PushLock};
use super::layout::Lineage;
use super::record::Sequence;
use super::record::{Sent, SnapshotRecord};
use super::{BackupError, Progress};
use crate::crypto::AgeRecipients;
use crate::provision::snapshot::{self, Snapshot};
use crate::provision::{pushed, send};

pub use parent::{Local, Plan};
use report::Origin;
pub use report::PushReport;

/// The chunk size of a send stream unless a push says otherwise.
pub const DEFAULT_CHUNK_SIZE: u64 = 32 << 20;
/// Chunks sealed and uploaded at once.
const PARALLEL: usize = 4;

/// Which snapshot a push sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    /// A new read-only snapshot, taken now (or the one an interrupted
    /// push took and did not finish).
    Take,
    /// The newest read-only snapshot of the subvolume.
    Newest,
    /// That snapshot, by its name in `@snapshots`.
    Named(String),
}

/// What to push, where from, and how.
pub struct PushRequest {
    lineage: Lineage,
    mount_point: PathBuf,
    which: Which,
    sealer: Sealer,
    full_every: Option<u32>,
    dry_run: bool,
    storage_class: Option<String>,
    chunk_size: u64,
    journal_dir: PathBuf,
}

impl PushRequest {
    /// A push of `subvolume` of `volume`, mounted at `mount_point`;
    /// `journal_dir` keeps what an interrupted push had stored.
    pub fn new(
        volume: &str,
        subvolume: &str,
        mount_point: &Path,
        journal_dir: &Path,
    ) -> Result<PushRequest, BackupError> {
        Ok(PushRequest {
            lineage: Lineage::new(volume, subvolume)?,
            mount_point: mount_point.to_path_buf(),
            which: Which::Take,
            sealer: Sealer::new(None),
            full_every: None,
            dry_run: false,
            storage_class: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            journal_dir: journal_dir.to_path_buf(),
        })
    }

    pub fn snapshot(mut self, which: Which) -> PushRequest {
        self.which = which;
        self
    }

    pub fn recipients(mut self, recipients: Option<AgeRecipients>) -> PushRequest {
        self.sealer = Sealer::new(recipients);
        self
    }

    pub fn full_every(mut self, every: Option<u32>) -> Result<PushRequest, BackupError> {
        if every == Some(0) {
            return Err(BackupError::Invalid(
                "--full-every needs at least 1 (1: every push sends a full stream)".into(),
            ));
        }
        self.full_every = every;
        Ok(self)
    }

    pub fn dry_run(mut self, dry_run: bool) -> PushRequest {
        self.dry_run = dry_run;
        self
    }

    pub fn storage_class(mut self, class: Option<String>) -> PushRequest {
        self.storage_class = class;
        self
    }

    pub fn chunk_size(mut self, bytes: u64) -> Result<PushRequest, BackupError> {
        if !(4096..=super::record::MAX_CHUNK).contains(&bytes) {
            return Err(BackupError::Invalid(format!(
                "a chunk of {bytes} bytes is out of bounds: give 4K to 256M"
            )));
        }
        self.chunk_size = bytes;
        Ok(self)
    }
}

/// The header of a push's journal: the same snapshot, sent against the
/// same parent into the same sequence, sealed alike, is the same push.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
struct JournalHeader {
    snapshot: String,
    uuid: uuid::Uuid,
    sequence: String,
    parent: Option<String>,
    recipients: usize,
    chunk_size: u64,
}

/// Pushes a snapshot as `request` says.
pub async fn push(
    destination: &Destination,
    request: &PushRequest,
    progress: &dyn Progress,
) -> Result<PushReport, BackupError> {
    let journal_key = journal_key(destination, &request.lineage);
    let _one_at_a_time = match request.dry_run {
        true => None,
        false => Some(PushLock::take(&request.journal_dir, &journal_key)?),
    };
    let chains = read_chains(destination, request).await?;
    let current = chains.as_ref().and_then(Chains::current);
    parent::check_encryption(current, request.sealer.recipients() > 0)?;
    let mut report = PushReport::new(request, destination);
    let local = local_snapshots(&request.mount_point, request.lineage.subvolume())?;
    let pending = Journal::pending(&request.journal_dir, &journal_key)
        .and_then(|header| serde_json::from_str::<JournalHeader>(&header).ok());
    let chosen = choose_snapshot(
        request,
        chains.as_ref(),
        &local,
        pending.as_ref(),
        &mut report,
    );
    let Some(sending) = chosen.await? else {
        return dry_run_without_snapshot(request, chains.as_ref(), &local, report);
    };
    if chains
        .as_ref()
        .and_then(|c| c.holding(&sending.name))
        .is_some()
    {
        report.note_already_pushed();
        return Ok(report);
    }
    let plan = plan(destination, request, current, &local, &sending, &mut report)?;
    if request.dry_run {
        let estimate = send::estimate(&sending.path, plan.parent_path.as_deref())?;
        report.note_estimate(estimate.total(), None);
        return Ok(report);
    }
    let journal = Journal::open(
        &request.journal_dir,
        &journal_key,
        &plan.journal_header(request),
    )?;
    let (record, reused, journal) =
        store_stream(destination, request, &plan, journal, progress).await?;
    commit(destination, request, chains.as_ref(), &plan, &record).await?;
    journal.finish()?;
    report.stored(&record, reused);
    Ok(report)
}

/// The key of a lineage's journal and lock: one per destination.
fn journal_key(destination: &Destination, lineage: &Lineage) -> String {
    format!(
        "{}\n{}\n{}",
        destination.url(),
        lineage.volume(),
        lineage.subvolume()
    )
}

/// The lineage's chains, if the destination holds backups (made a
/// destination of backups first, unless this is a dry run).
async fn read_chains(
    destination: &Destination,
    request: &PushRequest,
) -> Result<Option<Chains>, BackupError> {
    let has_backups = match request.dry_run {
        true => destination.holds_backups().await?,
        false => {
            destination.prepare().await?;
            true
        }
    };
    match has_backups {
        true => Ok(Some(destination.chains(&request.lineage).await?)),
        false => Ok(None),
    }
}

/// What one push sends, and where it goes.
struct Sending {
    snapshot: Snapshot,
    info: send::SubvolumeInfo,
    sequence: String,
    parent: Option<(String, uuid::Uuid)>,
    parent_path: Option<PathBuf>,
}

impl Sending {
    fn journal_header(&self, request: &PushRequest) -> String {
        let header = JournalHeader {
            snapshot: self.snapshot.name.clone(),
            uuid: self.info.uuid(),
            sequence: self.sequence.clone(),
            parent: self.parent.as_ref().map(|(name, _)| name.clone()),
            recipients: request.sealer.recipients(),
            chunk_size: request.chunk_size,
        };
        serde_json::to_string(&header).expect("a journal header serializes")
    }
}

/// Decides the parent (or a full stream) of `snapshot`, and notes it in
/// the report.
fn plan(
    destination: &Destination,
    request: &PushRequest,
    current: Option<&Sequence>,
    local: &[Local],
    snapshot: &Snapshot,
    report: &mut PushReport,
) -> Result<Sending, BackupError> {
    let info = send::subvolume_info(&snapshot.path)?;
    let this = Local::new(&snapshot.name, info.uuid(), snapshot.created);
    let mount = &request.mount_point;
    let last_pushed =
        pushed::pushed_parent(mount, request.lineage.subvolume(), &destination.url())?;
    let plan = parent::Choice {
        current,
        local,
        sending: &this,
        encrypted: request.sealer.recipients() > 0,
        full_every: request.full_every,
        last_pushed: last_pushed.as_deref(),
    }
    .decide()?;
    report.note_plan(&plan, Some(&snapshot.name));
    let (sequence, parent) = match plan {
        Plan::Incremental { sequence, parent } => (sequence, Some(parent)),
        Plan::Full { .. } => (snapshot.name.clone(), None),
    };
    let parent_path = parent.as_ref().map(|p| snapshots_dir(mount).join(p));
    let parent = match (parent, &parent_path) {
        (Some(name), Some(path)) => Some((name, send::subvolume_info(path)?.uuid())),
        _ => None,
    };
    Ok(Sending {
        snapshot: snapshot.clone(),
        info,
        sequence,
        parent,
        parent_path,
    })
}

/// Sends the stream into the destination's chunks, then writes the
/// snapshot's record. Returns the record, the chunks an interrupted push
/// had stored (and their bytes), and the journal.
async fn store_stream(
    destination: &Destination,
    request: &PushRequest,
    plan: &Sending,
    journal: Journal,
    progress: &dyn Progress,
) -> Result<(SnapshotRecord, (usize, u64), Journal), BackupError> {
    let snapshot = &plan.snapshot;
    if progress.wants_total()
        && let Ok(estimate) = send::estimate(&snapshot.path, plan.parent_path.as_deref())
    {
        progress.start(Some(estimate.total()));
    }
    let stream = send::send(&snapshot.path, plan.parent_path.as_deref())?;
    let upload = upload::Upload {
        store: destination.store(),
        lineage: &request.lineage,
        sequence: &plan.sequence,
        snapshot: &snapshot.name,
        sealer: request.sealer.clone(),
        storage_class: request.storage_class.as_deref(),
        parallel: PARALLEL,
        chunk_size: request.chunk_size,
        progress,
    };
    let (uploaded, journal) = upload.run(Box::new(stream), journal).await?;
    crate::async_fail_point!("backup::chunks_stored");
    let sent = Sent {
        lineage: &request.lineage,
        sequence: &plan.sequence,
        name: &snapshot.name,
        parent: plan
            .parent
            .as_ref()
            .map(|(name, uuid)| (name.as_str(), *uuid)),
        uuid: plan.info.uuid(),
        source_uuid: plan.info.parent_uuid(),
        generation: plan.info.generation(),
        created: snapshot.created,
        recipients: request.sealer.recipients(),
        chunk_size: request.chunk_size,
    };
    let record = SnapshotRecord::new(&sent, uploaded.chunks, Utc::now());
    destination
        .write_record(&request.lineage, &plan.sequence, &record)
        .await?;
    crate::async_fail_point!("backup::record_stored");
    Ok((record, (uploaded.reused, uploaded.reused_bytes), journal))
}

/// Lists the snapshot in its sequence (the push is complete), points the
/// head there, and notes the source's next parent.
async fn commit(
    destination: &Destination,
    request: &PushRequest,
    chains: Option<&Chains>,
    plan: &Sending,
    record: &SnapshotRecord,
) -> Result<(), BackupError> {
    let lineage = &request.lineage;
    destination
        .list_in_sequence(lineage, &plan.sequence, record)
        .await?;
    crate::async_fail_point!("backup::listed");
    if chains.and_then(Chains::head) != Some(plan.sequence.as_str()) {
        destination.set_head(lineage, &plan.sequence).await?;
    }
    remember_pushed(request, destination, &plan.snapshot)
}

/// The snapshot to send: `None` only for a dry run that would take one.
async fn choose_snapshot(
    request: &PushRequest,
    chains: Option<&Chains>,
    local: &[Local],
    pending: Option<&JournalHeader>,
    report: &mut PushReport,
) -> Result<Option<Snapshot>, BackupError> {
    let mount = &request.mount_point;
    let subvolume = request.lineage.subvolume();
    let (snapshot, origin) = match &request.which {
        Which::Named(name) => (snapshot::describe(mount, name)?, Origin::Named),
        Which::Newest => {
            let newest = local.last().ok_or_else(|| {
                BackupError::Invalid(format!(
                    "{subvolume} has no read-only snapshot to push: take one with `zeroblk snapshot create`, or leave out --snapshot"
                ))
            })?;
            (snapshot::describe(mount, newest.name())?, Origin::Named)
        }
        Which::Take => {
            let unfinished = pending
                .filter(|p| local.iter().any(|l| l.name() == p.snapshot))
                .filter(|p| chains.and_then(|c| c.holding(&p.snapshot)).is_none());
            match unfinished {
                Some(pending) => (
                    snapshot::describe(mount, &pending.snapshot)?,
                    Origin::Resumed,
                ),
                None if request.dry_run => return Ok(None),
                None => (take_snapshot(mount, subvolume).await?, Origin::Taken),
            }
        }
    };
    if snapshot.subvolume != subvolume {
        return Err(BackupError::Invalid(format!(
            "{} is a snapshot of {}, not of {subvolume}: give --subvolume {}",
            snapshot.name, snapshot.subvolume, snapshot.subvolume
        )));
    }
    if !snapshot.read_only {
        return Err(BackupError::Invalid(format!(
            "{} is writable, and btrfs sends only read-only snapshots: make it read-only (`btrfs property set {} ro true`) or leave out --snapshot so that push takes one",
            snapshot.name,
            snapshot.path.display()
        )));
    }
    report.note_snapshot(&snapshot.name, origin);
    Ok(Some(snapshot))
}

/// Takes a read-only snapshot of `subvolume` now. Names have whole
/// seconds: where this second's is taken already (a snapshot timer, or
/// the push before), the next second's is taken.
async fn take_snapshot(mount: &Path, subvolume: &str) -> Result<Snapshot, BackupError> {
    let now = Utc::now();
    if !snapshots_dir(mount)
        .join(snapshot::snapshot_name(subvolume, now, None))
        .exists()
    {
        return Ok(snapshot::create(mount, subvolume, None, false, now)?);
    }
    let next = now + chrono::Duration::seconds(1)
        - chrono::Duration::nanoseconds(i64::from(now.timestamp_subsec_nanos()));
    let wait = (next - now).to_std().unwrap_or_default();
    tokio::time::sleep(wait).await;
    Ok(snapshot::create(
        mount,
        subvolume,
        None,
        false,
        next.max(Utc::now()),
    )?)
}

/// A dry run of a push that would take a new snapshot: the plan, and an
/// estimate from the newest snapshot there is (changes since are not in it).
fn dry_run_without_snapshot(
    request: &PushRequest,
    chains: Option<&Chains>,
    local: &[Local],
    mut report: PushReport,
) -> Result<PushReport, BackupError> {
    let now = Local::new("(a snapshot taken now)", uuid::Uuid::nil(), Utc::now());
    let plan = parent::Choice {
        current: chains.and_then(Chains::current),
        local,
        sending: &now,
        encrypted: request.sealer.recipients() > 0,
        full_every: request.full_every,
        last_pushed: None,
    }
    .decide()?;
    report.note_plan(&plan, None);
    let parent = match plan {
        Plan::Incremental { parent, .. } => Some(parent),
        Plan::Full { .. } => None,
    };
    // The newest snapshot here stands in for the one a push would take,
    // if it is newer than the parent.
    let parent_created = parent
        .as_deref()
        .and_then(|p| local.iter().find(|l| l.name() == p))
        .map(Local::created);
    let stand_in = local
        .last()
        .filter(|l| parent_created.is_none_or(|p| l.created() > p));
    if let Some(stand_in) = stand_in {
        let dir = snapshots_dir(&request.mount_point);
        let parent_path = parent.as_ref().map(|p| dir.join(p));
        let estimate = send::estimate(&dir.join(stand_in.name()), parent_path.as_deref())?;
        report.note_estimate(estimate.total(), Some(stand_in.name()));
    }
    Ok(report)
}

/// The subvolume's read-only snapshots here, oldest first.
fn local_snapshots(mount_point: &Path, subvolume: &str) -> Result<Vec<Local>, BackupError> {
    let mut local = Vec::new();
    for s in snapshot::list(mount_point)? {
        if s.subvolume == subvolume && s.read_only {
            let info = send::subvolume_info(&s.path)?;
            local.push(Local::new(&s.name, info.uuid(), s.created));
        }
    }
    Ok(local)
}

fn snapshots_dir(mount_point: &Path) -> PathBuf {
    mount_point.join(crate::provision::SNAPSHOTS_DIR)
}

/// Notes on the source that `sent` is the next push's parent, unless a
/// newer snapshot, still here, is noted already (an old snapshot pushed
/// late must not release the newer parent).
fn remember_pushed(
    request: &PushRequest,
    destination: &Destination,
    sent: &Snapshot,
) -> Result<(), BackupError> {
    let mount = &request.mount_point;
    let subvolume = request.lineage.subvolume();
    let url = destination.url();
    if let Some(noted) = pushed::pushed_parent(mount, subvolume, &url)?
        && let Ok(noted) = snapshot::describe(mount, &noted)
        && noted.created > sent.created
    {
        return Ok(());
    }
    Ok(pushed::record_pushed(mount, subvolume, &url, &sent.name)?)
}
