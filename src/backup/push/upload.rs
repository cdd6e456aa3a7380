//! A send stream into the destination: cut into chunks as it is read,
//! each sealed (compressed, encrypted) on the blocking pool and uploaded,
//! several at a time, with the journal told of each upload that
//! completed. Chunks an interrupted run already stored, with the same
//! stream bytes, are not sent again.
//!
//! Memory stays bounded: the reader waits while `parallel` chunks are in
//! flight. An error anywhere stops the reader, which drops the stream
//! (and so stops `btrfs send`).

use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::mpsc;

use super::super::codec::Sealer;
use super::super::journal::Journal;
use super::super::layout::Lineage;
use super::super::record::ChunkRef;
use super::super::{BackupError, Progress};
use crate::store::Store;

/// The oldest chunk a resumed push reuses: half the age at which a prune
/// deletes the chunks of a push that never completed, so that a push has
/// that long (12 hours) to list what it reused.
const REUSE_LIMIT: Duration =
    Duration::from_secs(super::super::prune::UNFINISHED_GRACE.as_secs() / 2);

/// Where chunks go, and how (the arguments of one upload).
pub struct Upload<'a> {
    pub(super) store: &'a Store,
    pub(super) lineage: &'a Lineage,
    pub(super) sequence: &'a str,
    pub(super) snapshot: &'a str,
    pub(super) sealer: Sealer,
    pub(super) storage_class: Option<&'a str>,
    pub(super) parallel: usize,
    pub(super) chunk_size: u64,
    pub(super) progress: &'a dyn Progress,
}

/// What an upload stored.
pub struct Uploaded {
    pub(super) chunks: Vec<ChunkRef>,
    /// Chunks (and their stored bytes) an earlier run had stored.
    pub(super) reused: usize,
    pub(super) reused_bytes: u64,
}

impl Upload<'_> {
    pub async fn run(
        &self,
        stream: Box<dyn Read + Send>,
        journal: Journal,
    ) -> Result<(Uploaded, Journal), BackupError> {
        let journal = Arc::new(Mutex::new(self.forget_lost_chunks(journal).await?));
        let (chunks_tx, mut chunks_rx) = mpsc::channel::<(u32, Vec<u8>)>(1);
        let chunk_size = usize::try_from(self.chunk_size).expect("a chunk fits in memory");
        let reader =
            tokio::task::spawn_blocking(move || read_chunks(stream, chunk_size, chunks_tx));
        let chunks = futures::stream::poll_fn(|cx| chunks_rx.poll_recv(cx))
            .map(|(index, plain)| self.store_chunk(index, plain, &journal))
            .buffered(self.parallel.max(1))
            .try_collect::<Vec<(ChunkRef, bool)>>()
            .await;
        drop(chunks_rx);
        let read = reader
            .await
            .map_err(|e| BackupError::Invalid(format!("the stream's reader stopped: {e}")))?;
        // The reader's error explains a stream that ended early; report it first.
        read?;
        let chunks = chunks?;
        let journal = Arc::into_inner(journal)
            .expect("every upload finished")
            .into_inner()
            .map_err(|_| BackupError::Invalid("an upload panicked".to_string()))?;
        let reused: Vec<_> = chunks.iter().filter(|(_, reused)| *reused).collect();
        let uploaded = Uploaded {
            reused: reused.len(),
            reused_bytes: reused.iter().map(|(c, _)| c.size()).sum(),
            chunks: chunks.into_iter().map(|(chunk, _)| chunk).collect(),
        };
        Ok((uploaded, journal))
    }

    /// Keeps in the journal only the chunks still stored as it recorded,
    /// and young enough that no prune deletes them before this push lists
    /// them (see `REUSE_LIMIT`).
    async fn forget_lost_chunks(&self, mut journal: Journal) -> Result<Journal, BackupError> {
        if journal.resumable() == 0 {
            return Ok(journal);
        }
        let prefix = self.lineage.data_prefix(self.sequence, self.snapshot);
        let now = SystemTime::now();
        let young = |t: SystemTime| now.duration_since(t).map_or(true, |age| age < REUSE_LIMIT);
        let listed: HashMap<String, u64> = self
            .store
            .list_objects(&prefix)
            .await?
            .into_iter()
            .filter(|o| young(o.last_modified))
            .map(|o| (o.key, o.size))
            .collect();
        let key = |index| self.lineage.chunk_key(self.sequence, self.snapshot, index);
        journal.keep_only(|index, chunk| listed.get(&key(index)) == Some(&chunk.size()))?;
        Ok(journal)
    }

    /// Stores chunk `index` of the stream, unless an earlier run stored
    /// these bytes there. Returns it, and whether it was reused.
    async fn store_chunk(
        &self,
        index: u32,
        plain: Vec<u8>,
        journal: &Mutex<Journal>,
    ) -> Result<(ChunkRef, bool), BackupError> {
        let plain_len = plain.len() as u64;
        let reusable = journal.lock().expect("journal").reusable(index, &plain);
        if let Some(chunk) = reusable {
            self.progress.advance(plain_len);
            return Ok((chunk, true));
        }
        let sealer = self.sealer.clone();
        let sealed = tokio::task::spawn_blocking(move || sealer.seal(&plain).map(|s| (plain, s)));
        let (plain, stored) = sealed
            .await
            .map_err(|e| BackupError::Invalid(format!("sealing a chunk stopped: {e}")))??;
        let chunk = ChunkRef::new(&stored, plain_len);
        let key = self.lineage.chunk_key(self.sequence, self.snapshot, index);
        let stored = Bytes::from(stored);
        match self.storage_class {
            Some(class) => self.store.put_in_class(&key, stored, class).await?,
            None => self.store.put(&key, stored).await?,
        }
        journal
            .lock()
            .expect("journal")
            .stored(index, &plain, &chunk)?;
        crate::async_fail_point!("backup::chunk_stored");
        self.progress.advance(plain_len);
        Ok((chunk, false))
    }
}

/// Reads `stream` into chunks of `chunk_size` bytes (the last shorter)
/// and hands them on, until the stream ends or nobody takes them.
fn read_chunks(
    mut stream: Box<dyn Read + Send>,
    chunk_size: usize,
    chunks: mpsc::Sender<(u32, Vec<u8>)>,
) -> Result<(), BackupError> {
    for index in 0u32.. {
        let mut chunk = Vec::with_capacity(chunk_size);
        let read = (&mut stream)
            .take(chunk_size as u64)
            .read_to_end(&mut chunk)
            .map_err(BackupError::io("reading the send stream"))?;
        if read == 0 {
            break;
        }
        if chunks.blocking_send((index, chunk)).is_err() {
            // The uploads stopped; their error is the one to report.
            break;
        }
        if read < chunk_size {
            // Only the end of the stream (and `btrfs send`'s exit, which
            // reading it reports) makes a chunk short.
            break;
        }
    }
    Ok(())
}
