//! The snapshot a copy reads: named, or taken first.

use super::super::catalog;
use super::super::snapshot;
use super::error::CopyError;
use crate::crypto::Password;
use crate::format::{Codec, Root, Superblock};
use crate::store::Store;

/// The volume a copy reads, opened (its superblock read and keys
/// unlocked), before any snapshot is taken.
pub(super) struct SourceVolume {
    superblock: Superblock,
    codec: Codec,
}

impl SourceVolume {
    pub(super) async fn open(
        from: &Store,
        name: &str,
        password: Option<&Password>,
    ) -> Result<SourceVolume, CopyError> {
        let superblock = catalog::superblock(from, name).await?;
        let codec = catalog::unlock_blocking(&superblock, password.cloned()).await?;
        Ok(SourceVolume { superblock, codec })
    }

    pub(super) fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub(super) fn codec(&self) -> &Codec {
        &self.codec
    }

    /// Its snapshot `snapshot`; without one, a snapshot of its newest
    /// committed state, taken now (not in a dry run, which writes nothing:
    /// it reads that state as it is).
    pub(super) async fn pin(
        self,
        from: &Store,
        snapshot: Option<&str>,
        password: Option<&Password>,
        dry_run: bool,
    ) -> Result<Source, CopyError> {
        let name = self.superblock.name.clone();
        let (snapshot, taken) = match snapshot {
            Some(snapshot) => (Some(snapshot.to_string()), false),
            None if dry_run => (None, false),
            None => {
                let taken = snapshot::create(from, &name, None, password.cloned()).await?;
                (Some(taken.name().to_string()), true)
            }
        };
        let (superblock, codec) = (&self.superblock, &self.codec);
        let root = match &snapshot {
            Some(snapshot) => catalog::read_snapshot(from, superblock, codec, snapshot).await?,
            None => catalog::newest_root(from, superblock, codec).await?,
        };
        Ok(Source {
            volume: self,
            root,
            snapshot,
            taken,
        })
    }
}

/// A snapshot at the source, opened.
pub(super) struct Source {
    volume: SourceVolume,
    root: Root,
    /// `None` only in a dry run of a volume without `@SNAP`, which reads
    /// the newest committed root instead of taking a snapshot.
    snapshot: Option<String>,
    taken: bool,
}

impl Source {
    pub(super) fn codec(&self) -> &Codec {
        self.volume.codec()
    }

    pub(super) fn root(&self) -> &Root {
        &self.root
    }

    pub(super) fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    /// Whether the copy took the snapshot it reads.
    pub(super) fn taken(&self) -> bool {
        self.taken
    }

    /// `NAME@SNAP` (or `NAME`), for messages.
    pub(super) fn describe(&self) -> String {
        match &self.snapshot {
            Some(snapshot) => format!("{}@{snapshot}", self.volume.superblock.name),
            None => self.volume.superblock.name.clone(),
        }
    }
}
