//! The snapshot a copy reads: named, or taken first.

use super::super::catalog;
use super::super::snapshot;
use super::error::CopyError;
use crate::crypto::Password;
use crate::format::{Codec, Root, Superblock};
use crate::store::Store;

/// A snapshot at the source, opened.
pub(super) struct Source {
    superblock: Superblock,
    codec: Codec,
    root: Root,
    /// `None` only in a dry run of a volume without `@SNAP`, which reads
    /// the newest committed root instead of taking a snapshot.
    snapshot: Option<String>,
    taken: bool,
}

impl Source {
    /// Opens snapshot `snapshot` of volume `name` in `from`; without one,
    /// takes a snapshot of its newest committed state first (not in a dry
    /// run, which writes nothing: it reads that state as it is).
    pub(super) async fn open(
        from: &Store,
        name: &str,
        snapshot: Option<&str>,
        password: Option<&Password>,
        dry_run: bool,
    ) -> Result<Source, CopyError> {
        let (snapshot, taken) = match snapshot {
            Some(snapshot) => (Some(snapshot.to_string()), false),
            None if dry_run => (None, false),
            None => {
                let taken = snapshot::create(from, name, None, password.cloned()).await?;
                (Some(taken.name().to_string()), true)
            }
        };
        let superblock = catalog::superblock(from, name).await?;
        let codec = catalog::unlock_blocking(&superblock, password.cloned()).await?;
        let root = match &snapshot {
            Some(snapshot) => catalog::read_snapshot(from, &superblock, &codec, snapshot).await?,
            None => catalog::newest_root(from, &superblock, &codec).await?,
        };
        Ok(Source {
            superblock,
            codec,
            root,
            snapshot,
            taken,
        })
    }

    pub(super) fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub(super) fn codec(&self) -> &Codec {
        &self.codec
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
            Some(snapshot) => format!("{}@{snapshot}", self.superblock.name),
            None => self.superblock.name.clone(),
        }
    }
}
