//! Reading a stored chunk back: fetched no larger than its record says,
//! checked against its hash, then decrypted and decompressed on the
//! blocking pool. Restore and verify read chunks the same way.

use std::sync::Arc;

use super::BackupError;
use super::codec::Opener;
use super::record::ChunkRef;
use crate::store::Store;

/// How many chunks restore and verify fetch at once.
pub const PARALLEL: usize = 4;

/// The send stream bytes the chunk at `key` holds.
pub async fn read(
    store: &Store,
    key: String,
    chunk: &ChunkRef,
    encrypted: bool,
    opener: &Arc<Opener>,
) -> Result<Vec<u8>, BackupError> {
    let stored = store
        .get_at_most(&key, chunk.size())
        .await?
        .ok_or_else(|| BackupError::damaged(&key, "it is missing"))?;
    if !chunk.matches(&stored) {
        return Err(BackupError::damaged(
            &key,
            "its bytes differ from what its record says (size or BLAKE3 hash)",
        ));
    }
    let opener = Arc::clone(opener);
    let plain = chunk.plain();
    let opened = tokio::task::spawn_blocking(move || opener.open(&key, &stored, encrypted, plain));
    opened
        .await
        .map_err(|e| BackupError::Invalid(format!("opening a chunk stopped: {e}")))?
}
