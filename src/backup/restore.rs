//! `backup restore`: a snapshot's chain, from its full stream to it,
//! received into a directory on btrfs. Each stream is fetched a few
//! chunks ahead and written into `btrfs receive` as it arrives; the
//! streams in between are deleted once the next one is received, so the
//! directory ends with the snapshot alone (read-only, as received).
//!
//! Snapshots of the chain already received there (their received UUID is
//! the chain's) are used as they are: a second restore of a newer
//! snapshot into the same directory receives only what it lacks.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;
use tokio::sync::mpsc;

use super::codec::Opener;
use super::destination::Destination;
use super::layout::Lineage;
use super::record::SnapshotRecord;
use super::{BackupError, Progress, chunks};
use crate::provision::btrfs;
use crate::provision::send::{self, Receive};

/// What a restore did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreReport {
    snapshot: String,
    path: PathBuf,
    received: Vec<String>,
    already_there: Vec<String>,
    stream_bytes: u64,
}

impl RestoreReport {
    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn received(&self) -> &[String] {
        &self.received
    }
    pub fn already_there(&self) -> &[String] {
        &self.already_there
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
}

/// Restores snapshot `name` into `dir`.
pub async fn restore(
    destination: &Destination,
    name: &str,
    dir: &Path,
    opener: Opener,
    progress: &dyn Progress,
) -> Result<RestoreReport, BackupError> {
    destination.require_backups().await?;
    let found = destination.find(name).await?;
    let lineage = found.lineage();
    let sequence = found.sequence().name();
    let chain = found
        .sequence()
        .chain_to(found.name())
        .map_err(|reason| BackupError::damaged(&lineage.sequence_key(sequence), reason))?;
    let mut records = Vec::new();
    for entry in &chain {
        let record = destination.record(lineage, sequence, entry.name()).await?;
        if record.uuid() != entry.uuid() {
            let key = lineage.record_key(sequence, entry.name());
            return Err(BackupError::damaged(
                &key,
                "its UUID is not the one its sequence lists",
            ));
        }
        records.push(record);
    }
    check_encryption(lineage, sequence, &records, &opener)?;
    let target = dir.join(found.name());
    let start = already_received(dir, &records);
    // What this restore makes must not be there: it deletes only what it made.
    for record in &records[start..] {
        check_free(dir, record)?;
    }
    let mut report = RestoreReport {
        snapshot: found.name().to_string(),
        path: target,
        received: Vec::new(),
        already_there: records[..start]
            .iter()
            .map(|r| r.name().to_string())
            .collect(),
        stream_bytes: 0,
    };
    let todo = &records[start..];
    progress.start(Some(todo.iter().map(SnapshotRecord::stream_bytes).sum()));
    let opener = Arc::new(opener);
    let mut previous: Option<&SnapshotRecord> = None;
    for (index, record) in records.iter().enumerate().skip(start) {
        if index > 0 {
            check_sole_parent(dir, &records[index - 1])?;
        }
        let received = receive_one(
            destination,
            lineage,
            sequence,
            record,
            dir,
            &opener,
            progress,
        )
        .await;
        if let Err(error) = received.and_then(|()| check_received(dir, record)) {
            return Err(partial_left(dir, record, error));
        }
        report.received.push(record.name().to_string());
        report.stream_bytes += record.stream_bytes();
        // Received only as the next one's parent: not wanted any more.
        if let Some(previous) = previous.take() {
            btrfs::delete_subvolume(dir, previous.name())?;
        }
        previous = Some(record);
    }
    Ok(report)
}

/// Refuses a chain that mixes encrypted and plain records, and a plain
/// one where an identity is given (a bucket's writer could otherwise put
/// plain streams of its own in place of encrypted ones); asks for the
/// identity of an encrypted chain.
pub(super) fn check_encryption(
    lineage: &Lineage,
    sequence: &str,
    records: &[SnapshotRecord],
    opener: &Opener,
) -> Result<(), BackupError> {
    let encrypted = records.iter().filter(|r| r.encrypted()).count();
    if let Some(plain) = records.iter().find(|r| !r.encrypted())
        && (encrypted > 0 || opener.can_decrypt())
    {
        let key = lineage.record_key(sequence, plain.name());
        return Err(BackupError::damaged(
            &key,
            "it is stored unencrypted where its chain is encrypted (or an --age-identity was given): zeroblk never pushes that, so the bucket was written by someone else",
        ));
    }
    match (encrypted > 0, opener.can_decrypt()) {
        (true, false) => Err(BackupError::IdentityNeeded {
            snapshot: records
                .last()
                .map_or_else(String::new, |r| r.name().to_string()),
        }),
        _ => Ok(()),
    }
}

/// Refuses to receive `record` where something of its name is already in
/// `dir` (a restore deletes only what it made itself).
fn check_free(dir: &Path, record: &SnapshotRecord) -> Result<(), BackupError> {
    let path = dir.join(record.name());
    match path.symlink_metadata() {
        Err(_) => Ok(()),
        Ok(_) => Err(BackupError::Invalid(format!(
            "{} exists already and is not a received copy of this backup (an interrupted restore leaves a writable one): restore into another --to DIR, or delete it first (`btrfs subvolume delete {}`)",
            path.display(),
            path.display()
        ))),
    }
}

/// How many snapshots at the chain's start need not be received: up to
/// the newest one already in `dir` as the chain holds it.
fn already_received(dir: &Path, records: &[SnapshotRecord]) -> usize {
    let last = records.len() - 1;
    (0..last)
        .rev()
        .find(|&i| is_received(dir, &records[i]))
        .map_or(0, |i| i + 1)
}

fn is_received(dir: &Path, record: &SnapshotRecord) -> bool {
    send::subvolume_info(&dir.join(record.name()))
        .is_ok_and(|info| info.received_uuid() == Some(record.uuid()))
}

/// Checks that receiving `record` made the subvolume it describes.
fn check_received(dir: &Path, record: &SnapshotRecord) -> Result<(), BackupError> {
    match is_received(dir, record) {
        true => Ok(()),
        false => Err(BackupError::Invalid(format!(
            "btrfs receive made no subvolume {} in {} with the UUID the backup records: the stream does not match its record",
            record.name(),
            dir.display()
        ))),
    }
}

/// Refuses to receive on top of `parent` where another subvolume of the
/// filesystem carries its received UUID: `btrfs receive` could build on
/// that one (anyone who owns a subvolume can set its received UUID, and
/// the UUIDs are in the bucket's records) instead of the copy in `dir`.
fn check_sole_parent(dir: &Path, parent: &SnapshotRecord) -> Result<(), BackupError> {
    let copies = send::received_copies(dir, parent.uuid())?;
    match copies.len() {
        1 => Ok(()),
        _ => Err(BackupError::Invalid(format!(
            "{} subvolumes of the filesystem of {} carry the received UUID of {} ({}): btrfs receive could build the next snapshot on any of them, not only on {}; delete the others, or restore into another filesystem",
            copies.len(),
            dir.display(),
            parent.name(),
            copies.join(", "),
            dir.join(parent.name()).display()
        ))),
    }
}

/// Says what a failed receive of `record` may have left in `dir`. It is
/// not deleted: something else could have made a subvolume of that name
/// while the restore ran, and a restore deletes only what it knows it made.
fn partial_left(dir: &Path, record: &SnapshotRecord, error: BackupError) -> BackupError {
    let path = dir.join(record.name());
    let partial =
        send::subvolume_info(&path).is_ok_and(|info| info.received_uuid() != Some(record.uuid()));
    match partial {
        false => error,
        true => BackupError::Invalid(format!(
            "{error}; {} is left, partly received: delete it (`btrfs subvolume delete {}`) before the restore runs again",
            path.display(),
            path.display()
        )),
    }
}

/// Streams one snapshot's chunks into `btrfs receive`.
async fn receive_one(
    destination: &Destination,
    lineage: &Lineage,
    sequence: &str,
    record: &SnapshotRecord,
    dir: &Path,
    opener: &Arc<Opener>,
    progress: &dyn Progress,
) -> Result<(), BackupError> {
    let receive = send::receive(dir)?;
    let (tx, rx) = mpsc::channel::<Vec<u8>>(1);
    let writer = tokio::task::spawn_blocking(move || write_stream(receive, rx));
    let store = destination.store();
    let mut chunks = futures::stream::iter(record.chunks().iter().enumerate())
        .map(|(index, chunk)| {
            let key = lineage.chunk_key(sequence, record.name(), index as u32);
            chunks::read(store, key, chunk, record.encrypted(), opener)
        })
        .buffered(chunks::PARALLEL);
    let mut fetched = Ok(());
    while let Some(plain) = chunks.next().await {
        match plain {
            Ok(plain) => {
                let len = plain.len() as u64;
                if tx.send(plain).await.is_err() {
                    break; // receive stopped: its error says why
                }
                progress.advance(len);
            }
            Err(error) => {
                fetched = Err(error);
                break;
            }
        }
    }
    drop(tx);
    let written = writer
        .await
        .map_err(|e| BackupError::Invalid(format!("the writer into btrfs receive stopped: {e}")))?;
    // A chunk that could not be read is the cause; receive's error follows from it.
    fetched?;
    written
}

/// Writes what arrives into `receive`, then waits for it: its own error
/// (from its stderr) explains a write that failed.
fn write_stream(
    mut receive: Receive,
    mut chunks: mpsc::Receiver<Vec<u8>>,
) -> Result<(), BackupError> {
    let mut write_error = None;
    while let Some(plain) = chunks.blocking_recv() {
        if let Err(error) = receive.write_all(&plain) {
            write_error = Some(error);
            break;
        }
    }
    drop(chunks);
    receive.finish()?;
    match write_error {
        Some(error) => Err(BackupError::io("writing into btrfs receive")(error)),
        None => Ok(()),
    }
}
