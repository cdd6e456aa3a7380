//! A destination of backups: a store prefix that holds chains, read and
//! written only through the metadata objects of `record.rs`.
//!
//! It promises that a prefix holding anything else is never written to
//! (a push into a volume store or someone's bucket root is refused), and
//! that what it lists as a snapshot is complete: a snapshot is listed once
//! its sequence lists it, which a push writes only after the snapshot's
//! chunks and record.

use crate::store::{Replaced, Store, StoreError};

use super::BackupError;
use super::layout::{self, Lineage, MARKER};
use super::record::{self, Head, Marker, Sequence, SnapshotRecord};

/// A store opened as a destination of backups.
#[derive(Clone, Debug)]
pub struct Destination {
    store: Store,
}

/// A lineage's sequences, and which one its head names.
#[derive(Debug, Clone)]
pub struct Chains {
    lineage: Lineage,
    head: Option<String>,
    sequences: Vec<Sequence>,
    /// Metadata objects that did not read back: (key, what is wrong).
    damaged: Vec<(String, String)>,
}

impl Chains {
    /// Chains built from values, for the tests of what reads them.
    #[cfg(test)]
    pub fn for_tests(lineage: &Lineage, head: Option<&str>, sequences: Vec<Sequence>) -> Chains {
        Chains {
            lineage: lineage.clone(),
            head: head.map(str::to_string),
            sequences,
            damaged: Vec::new(),
        }
    }

    pub fn lineage(&self) -> &Lineage {
        &self.lineage
    }

    /// The sequence the next incremental push extends: the head's, or
    /// the newest where the head is missing (a push stopped before it
    /// wrote the head of the sequence it started). None while the head
    /// or its sequence is damaged: the next push starts a new chain.
    pub fn current(&self) -> Option<&Sequence> {
        if !self.damaged.is_empty() && self.head.as_deref().is_none_or(|h| self.is_damaged(h)) {
            return None;
        }
        let named = self
            .head
            .as_deref()
            .and_then(|head| self.sequences.iter().find(|s| s.name() == head));
        named.or(self.sequences.last())
    }

    fn is_damaged(&self, sequence: &str) -> bool {
        let key = self.lineage.sequence_key(sequence);
        self.damaged.iter().any(|(k, _)| *k == key)
    }

    /// The metadata objects that did not read back, and why.
    pub fn damaged(&self) -> &[(String, String)] {
        &self.damaged
    }

    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }

    /// Every sequence, oldest full stream first.
    pub fn sequences(&self) -> &[Sequence] {
        &self.sequences
    }

    /// The sequence that lists snapshot `name`.
    pub fn holding(&self, name: &str) -> Option<&Sequence> {
        self.sequences.iter().find(|s| s.entry(name).is_some())
    }
}

/// A snapshot found by its name: the chain it is in.
#[derive(Debug, Clone)]
pub struct Found {
    chains: Chains,
    sequence: String,
    name: String,
}

impl Found {
    pub fn lineage(&self) -> &Lineage {
        self.chains.lineage()
    }

    pub fn sequence(&self) -> &Sequence {
        self.chains.holding(&self.name).expect("found in it")
    }

    pub fn sequence_name(&self) -> &str {
        &self.sequence
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Destination {
    pub fn new(store: Store) -> Destination {
        Destination { store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn url(&self) -> String {
        crate::store::redact_credentials(self.store.url())
    }

    /// Whether the prefix holds zeroblk backups; refuses one that holds
    /// anything else.
    pub async fn holds_backups(&self) -> Result<bool, BackupError> {
        if record::load_marker(&self.store).await?.is_some() {
            return Ok(true);
        }
        let dirs = self.store.list_dirs("").await?;
        if let Some(foreign) = dirs.iter().find(|d| !layout::is_chain_prefix(d)) {
            return Err(BackupError::NotAChain {
                url: self.url(),
                found: format!("{foreign}/"),
            });
        }
        match dirs.is_empty() {
            true => Ok(false),
            // meta/ or data/ without the marker: not ours to write into.
            false => Err(BackupError::NotAChain {
                url: self.url(),
                found: format!("{}/ without a {MARKER} object", dirs[0]),
            }),
        }
    }

    /// Makes the prefix a destination of backups, if it is not one yet.
    pub async fn prepare(&self) -> Result<(), BackupError> {
        if !self.holds_backups().await? {
            self.store
                .put_if_absent(MARKER, record::encode(&Marker::new()))
                .await?;
        }
        Ok(())
    }

    /// Refuses a prefix that holds no backups.
    pub async fn require_backups(&self) -> Result<(), BackupError> {
        match self.holds_backups().await? {
            true => Ok(()),
            false => Err(BackupError::NoBackups { url: self.url() }),
        }
    }

    /// Every lineage the destination holds, by volume and subvolume.
    pub async fn lineages(&self) -> Result<Vec<Lineage>, BackupError> {
        let mut lineages = Vec::new();
        for volume in self.store.list_dirs(layout::meta_root()).await? {
            let prefix = format!("{}/{volume}", layout::meta_root());
            for subvolume in self.store.list_dirs(&prefix).await? {
                // A name that is not zeroblk's is not a chain of ours.
                if let Ok(lineage) = Lineage::new(&volume, &subvolume) {
                    lineages.push(lineage);
                }
            }
        }
        Ok(lineages)
    }

    /// A lineage's sequences (those whose sequence object exists) and its
    /// head.
    /// A damaged head or sequence is set aside (see [`Chains::damaged`]),
    /// so that the rest can still be listed, verified and restored.
    pub async fn chains(&self, lineage: &Lineage) -> Result<Chains, BackupError> {
        let mut damaged = Vec::new();
        let head =
            set_aside(record::load_head(&self.store, lineage).await, &mut damaged)?.flatten();
        let mut sequences = Vec::new();
        for name in self.store.list_dirs(&lineage.meta_prefix()).await? {
            if layout::check_name("sequence", &name).is_err() {
                continue;
            }
            let loaded = record::load_sequence(&self.store, lineage, &name).await;
            if let Some(sequence) = set_aside(loaded, &mut damaged)?.flatten() {
                sequences.push(sequence);
            }
        }
        sequences.sort_by_key(|s| {
            s.snapshots()
                .first()
                .map(|e| (e.created(), e.name().to_string()))
        });
        Ok(Chains {
            lineage: lineage.clone(),
            head: head.map(|h| h.sequence().to_string()),
            sequences,
            damaged,
        })
    }

    /// Every lineage's chains.
    pub async fn all_chains(&self) -> Result<Vec<Chains>, BackupError> {
        let mut all = Vec::new();
        for lineage in self.lineages().await? {
            all.push(self.chains(&lineage).await?);
        }
        Ok(all)
    }

    /// The snapshot `name` names: a snapshot's name, or
    /// `VOLUME/NAME` where two volumes have one of that name.
    pub async fn find(&self, name: &str) -> Result<Found, BackupError> {
        let (volume, snapshot) = match name.split_once('/') {
            Some((volume, snapshot)) => (Some(volume), snapshot),
            None => (None, name),
        };
        let mut found = Vec::new();
        for chains in self.all_chains().await? {
            if volume.is_some_and(|v| v != chains.lineage().volume()) {
                continue;
            }
            if let Some(sequence) = chains.holding(snapshot) {
                let sequence = sequence.name().to_string();
                found.push(Found {
                    chains,
                    sequence,
                    name: snapshot.to_string(),
                });
            }
        }
        match found.len() {
            0 => Err(BackupError::NoSuchSnapshot {
                url: self.url(),
                name: name.to_string(),
            }),
            1 => Ok(found.remove(0)),
            _ => Err(BackupError::Ambiguous {
                url: self.url(),
                name: name.to_string(),
                choices: found
                    .iter()
                    .map(|f| format!("{}/{}", f.lineage().volume(), f.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// The record of a listed snapshot: missing is damage, since its
    /// sequence lists it.
    pub async fn record(
        &self,
        lineage: &Lineage,
        sequence: &str,
        name: &str,
    ) -> Result<SnapshotRecord, BackupError> {
        record::load_record(&self.store, lineage, sequence, name)
            .await?
            .ok_or_else(|| {
                BackupError::damaged(
                    &lineage.record_key(sequence, name),
                    "it is missing, and its sequence lists it",
                )
            })
    }

    /// Writes a snapshot's record (after its chunks, before its sequence
    /// lists it).
    pub async fn write_record(
        &self,
        lineage: &Lineage,
        sequence: &str,
        record: &SnapshotRecord,
    ) -> Result<(), BackupError> {
        let key = lineage.record_key(sequence, record.name());
        Ok(self.store.put(&key, record::encode(record)).await?)
    }

    /// Lists `record` at the end of its sequence: the moment its push is
    /// complete. Retried on a concurrent change where the store fences.
    pub async fn list_in_sequence(
        &self,
        lineage: &Lineage,
        sequence: &str,
        record: &SnapshotRecord,
    ) -> Result<(), BackupError> {
        let key = lineage.sequence_key(sequence);
        for _ in 0..16 {
            match record::load_sequence_versioned(&self.store, lineage, sequence).await? {
                // Its parent's sequence went (a prune elsewhere, meanwhile):
                // a snapshot is never listed without its parent.
                None if record.entry().parent().is_some() => {
                    return Err(BackupError::ChainPruned {
                        lineage: lineage.to_string(),
                        sequence: sequence.to_string(),
                    });
                }
                None => {
                    let mut fresh = Sequence::new(lineage, sequence);
                    fresh.append(record);
                    if self
                        .store
                        .create_versioned(&key, record::encode(&fresh))
                        .await?
                        .is_some()
                    {
                        return Ok(());
                    }
                }
                Some((listed, _)) if !parent_listed(&listed, record) => {
                    return Err(BackupError::ChainPruned {
                        lineage: lineage.to_string(),
                        sequence: sequence.to_string(),
                    });
                }
                Some((mut listed, version)) => {
                    listed.append(record);
                    let replaced = self
                        .store
                        .replace_if_unchanged(&key, record::encode(&listed), &version)
                        .await?;
                    if let Replaced::Replaced(_) = replaced {
                        return Ok(());
                    }
                }
            }
        }
        Err(BackupError::Invalid(format!(
            "{key} kept changing while this push listed its snapshot: is another push or prune of {lineage} running? Run the push again"
        )))
    }

    /// Replaces a sequence with `trimmed` (a prune), unless it changed
    /// since it was `before`. Returns whether it did.
    pub async fn replace_sequence(
        &self,
        lineage: &Lineage,
        trimmed: &Sequence,
        before: &Sequence,
    ) -> Result<bool, BackupError> {
        let key = lineage.sequence_key(trimmed.name());
        match record::load_sequence_versioned(&self.store, lineage, trimmed.name()).await? {
            Some((now, version)) if &now == before => {
                let replaced = self
                    .store
                    .replace_if_unchanged(&key, record::encode(trimmed), &version)
                    .await?;
                Ok(matches!(replaced, Replaced::Replaced(_)))
            }
            _ => Ok(false),
        }
    }

    /// Points the lineage's head at `sequence`.
    pub async fn set_head(&self, lineage: &Lineage, sequence: &str) -> Result<(), BackupError> {
        Ok(self
            .store
            .put(&lineage.head_key(), record::encode(&Head::new(sequence)))
            .await?)
    }

    /// Deletes every object under `prefix`; returns how many.
    pub async fn delete_under(&self, prefix: &str) -> Result<usize, BackupError> {
        let keys = self.store.list_keys(prefix).await?;
        for key in &keys {
            self.store.delete(key).await?;
        }
        Ok(keys.len())
    }
}

/// Whether `record`'s parent (if it has one) is listed in `sequence`.
fn parent_listed(sequence: &Sequence, record: &SnapshotRecord) -> bool {
    let entry = record.entry();
    entry
        .parent()
        .is_none_or(|parent| sequence.entry(parent).is_some())
}

/// A metadata object as read: a damaged one is noted in `damaged` and
/// read as absent; other errors (the store's, a newer format) stand.
fn set_aside<T>(
    loaded: Result<T, BackupError>,
    damaged: &mut Vec<(String, String)>,
) -> Result<Option<T>, BackupError> {
    match loaded {
        Ok(value) => Ok(Some(value)),
        Err(BackupError::Damaged { key, reason }) => {
            damaged.push((key, reason));
            Ok(None)
        }
        Err(BackupError::Store(too_large @ StoreError::TooLarge { .. })) => {
            let StoreError::TooLarge { key, .. } = &too_large else {
                unreachable!("matched above")
            };
            damaged.push((key.clone(), too_large.to_string()));
            Ok(None)
        }
        Err(error) => Err(error),
    }
}
