//! `zeroblk volume copy`: a snapshot copied to another store, moving only
//! what that store lacks.
//!
//! Everything a snapshot reads is immutable and named by its contents:
//! map pages, packs and chunks. So a copy is the snapshot's objects, byte
//! for byte (sealed ones stay sealed: nothing is encrypted again), under
//! the same keys, and the destination volume keeps the source's superblock
//! (its uuid, chunk size, compression and data key; under another name, an
//! encrypted volume's key envelope is bound to that name, with the same
//! password). A second copy after a small change moves about that change:
//! the pages and packs the change wrote, and nothing else.
//!
//! # How it runs
//!
//! 1. **The destination is checked** before anything is written: a
//!    volume of that name there must be the same volume (uuid and data
//!    key) or absent, and have no writer (its lease not held; one that
//!    stopped without detaching may have a log to replay first).
//! 2. **The source.** A snapshot is copied (`NAME@SNAP`); given a volume,
//!    a snapshot of its newest committed state is taken first, named after
//!    the time, so each copy is a named state on both sides. A snapshot is
//!    pinned: gc at the source keeps what it references while it exists.
//! 3. **What is referenced.** Every map page of the snapshot is read from
//!    the source and opened (which checks it against its name). Each page
//!    entry names its chunk's pack or own object.
//! 4. **What the destination lacks** ([`census`]): a HEAD per object when
//!    there are at most [`census::HEAD_LIMIT`], else a listing of each
//!    folder (`packs/ab/`) they are in. An object counts as there only
//!    with the size it has at the source. A pack is copied whole, unless
//!    most of its bytes are chunks the snapshot does not reference (gc's
//!    rule for splitting one): then only the referenced chunks are copied,
//!    cut out with ranged GETs, as objects of their own (`chunks/XX/ID`),
//!    which readers there use when they find no pack, as they do after gc
//!    split a pack. A pack the source no longer has (gc split it) is
//!    copied as those chunk objects from the source.
//! 5. **Copying**, eight objects at a time, each checked before it is
//!    written: a pack against its name (the BLAKE3 hash of its bytes), a
//!    page or a chunk by opening it with the volume's codec (its hash, of
//!    the plaintext, keyed for an encrypted volume), each against the size
//!    it was listed with. Nothing unchecked is written.
//! 6. **The final check and the commit point**, under the destination's
//!    gc lease ([`GcHold`]): every object the snapshot references is
//!    looked up again, and any that is gone or of another size is copied
//!    again (and looked up once more); then the superblock (a new volume),
//!    the volume's next generation with the snapshot's map, and the
//!    snapshot `volumes/DST/snapshots/SNAP` are written, each with
//!    create-if-absent (a snapshot of that name there must be this one);
//!    then gc may run again. The destination is then an
//!    ordinary volume reading as the snapshot: `serve`, `attach` and
//!    `volume verify` work there, and so does `DST@SNAP`. Its new root has
//!    a new log id: a write-back log some host kept for an older state of
//!    that volume is moved aside when it opens, never replayed onto the
//!    copy.
//!
//! # What is verified
//!
//! When a copy returns, every page, pack and chunk object the snapshot
//! references was found at the destination with the size it has at the
//! source (by HEADs or listings, under the gc lease), and every object
//! this copy wrote was checked against its name first. Objects the
//! destination held already are trusted by name and size, as a reader
//! there would (it checks each chunk as it reads it): `zeroblk volume
//! verify` there reads them all.
//!
//! # Interrupted, and run again
//!
//! An interrupted copy leaves objects at the destination, but no snapshot
//! and no root: nothing half-done is ever visible. (Stopped between its
//! last writes, it leaves a new volume's superblock without a root, as
//! `volume create` stopped there would, or a volume reading as the
//! snapshot without the snapshot; the next run finishes either.) The next run finds
//! those objects and copies only the rest. If the destination's gc deleted
//! some of them meanwhile (nothing referenced them yet), the final check
//! finds them gone and copies them again; the gc lease, held from that
//! check until the root is written, keeps any gc from deleting what the
//! check found (see "Copies in progress" in `gc`).
//!
//! A run that finds the destination volume already reading as the
//! snapshot writes no new generation. A volume copied over replaces its
//! newest state with the snapshot's: its older states are kept only as
//! its own snapshots keep them.

mod census;
mod destination;
mod error;
mod plan;
mod report;
mod source;
mod transfer;

use super::error::EngineError;
use super::gc::GcHold;
use super::snapshot::VolumeRef;
use crate::crypto::Password;
use crate::format::{Root, keys};
use crate::store::Store;
use destination::Destination;
use plan::Plan;
use source::SourceVolume;
use transfer::Copier;

pub use error::CopyError;
pub use report::{CopyReport, Moved, Tally};

/// What `copy` is asked to do.
#[derive(Debug, Clone)]
pub struct CopyRequest {
    source: VolumeRef,
    destination: String,
    password: Option<Password>,
    dry_run: bool,
}

impl CopyRequest {
    /// Copies `source` (a snapshot, or a volume, whose snapshot is taken
    /// first) as volume `destination` (by default the source's name).
    pub fn new(source: VolumeRef, destination: Option<&str>) -> Result<CopyRequest, CopyError> {
        let destination = destination.unwrap_or(source.name()).to_string();
        keys::validate_volume_name(&destination).map_err(EngineError::InvalidArgument)?;
        Ok(CopyRequest {
            source,
            destination,
            password: None,
            dry_run: false,
        })
    }

    /// The password of an encrypted source (the copy opens with it too).
    pub fn with_password(mut self, password: Option<Password>) -> CopyRequest {
        self.password = password;
        self
    }

    /// Reads and plans only: writes nothing, on either side (a volume
    /// without `@SNAP` is planned from its newest committed state, and no
    /// snapshot is taken).
    pub fn with_dry_run(mut self, dry_run: bool) -> CopyRequest {
        self.dry_run = dry_run;
        self
    }
}

/// Told how a copy advances (a progress bar, say).
pub trait CopyProgress: Send + Sync {
    /// The copy took snapshot `NAME@SNAP` of its source, and copies it (a
    /// run interrupted from here on goes on with `NAME@SNAP`).
    fn snapshot_taken(&self, _snapshot: &str) {}
    /// The copy is about to move `objects` objects, `bytes` bytes in all.
    fn start(&self, objects: u64, bytes: u64);
    /// One more object, of `bytes` bytes, is at the destination.
    fn copied(&self, bytes: u64);
}

/// Progress nobody watches.
pub struct Quiet;

impl CopyProgress for Quiet {
    fn start(&self, _objects: u64, _bytes: u64) {}
    fn copied(&self, _bytes: u64) {}
}

/// Copies `request`'s snapshot from `from` to `to` (two different stores),
/// moving only what `to` lacks; see the module documentation.
pub async fn copy(
    from: &Store,
    to: &Store,
    request: &CopyRequest,
    progress: &dyn CopyProgress,
) -> Result<CopyReport, CopyError> {
    let CopyRequest {
        source,
        destination,
        password,
        dry_run,
    } = request;
    let password = password.as_ref();
    let volume = SourceVolume::open(from, source.name(), password).await?;
    let destination = Destination::open(to, destination, &volume, password).await?;
    let source = volume
        .pin(from, source.snapshot(), password, *dry_run)
        .await?;
    if source.taken() {
        progress.snapshot_taken(&source.describe());
    }
    let what = source.describe();
    let references = plan::references(from, source.codec(), source.root(), &what).await?;
    let plan = plan::plan(&references, from, to).await?;
    let report = CopyReport::planned(&source, destination.name(), to, *dry_run, &plan);
    let snapshot = match source.snapshot() {
        Some(snapshot) if !dry_run => snapshot,
        _ => return Ok(report),
    };
    let copier = Copier::new(from, to, source.codec(), &what);
    let total = Tally::of(plan.missing());
    progress.start(total.objects(), total.bytes());
    copier.all(plan.missing(), progress).await?;
    crate::async_fail_point!("copy::before_hold");
    let purpose = format!("a copy of {what} to volume {}", destination.name());
    let hold = GcHold::take(to, &purpose).await?;
    let finished = finish(&copier, &destination, &plan, snapshot, source.root()).await;
    if let Err(error) = hold.release(to).await {
        // The copy is whole either way; the lease runs out by itself.
        tracing::warn!(%error, "could not give back the destination's gc lease: gc there waits until it runs out (30 s)");
    }
    let (copied_again, published) = finished?;
    Ok(report.finished(copied_again, plan.all().count() as u64, published))
}

/// Under the gc lease: makes sure every object is there, then publishes.
async fn finish(
    copier: &Copier<'_>,
    destination: &Destination<'_>,
    plan: &Plan,
    snapshot: &str,
    root: &Root,
) -> Result<(Tally, (u64, bool)), CopyError> {
    let copied_again = copy_what_is_gone(copier, plan).await?;
    let published = destination.publish(snapshot, root).await?;
    Ok((copied_again, published))
}

/// Looks up every object `plan` needs at the destination, copies again any
/// that is gone or of another size, and checks those once more.
async fn copy_what_is_gone(copier: &Copier<'_>, plan: &Plan) -> Result<Tally, CopyError> {
    let gone = copier.not_there(plan.all()).await?;
    if gone.is_empty() {
        return Ok(Tally::default());
    }
    tracing::warn!(
        objects = gone.len(),
        "objects copied or found earlier are gone from the destination (its gc deleted what an interrupted copy left?): copying them again"
    );
    copier.all(&gone, &Quiet).await?;
    if let Some(lost) = copier.not_there(gone.iter()).await?.first() {
        return Err(CopyError::NotKept {
            store: copier.destination_url(),
            key: lost.key().to_string(),
            size: lost.size(),
        });
    }
    Ok(Tally::of(&gone))
}
