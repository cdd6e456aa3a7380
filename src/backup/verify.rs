//! `backup verify`: every chunk a snapshot's chain needs (or every
//! snapshot's, when none is named) fetched, checked against its record's
//! hash, decrypted and decompressed, without receiving anything. Every
//! bad or missing object is named; the check goes on past the first.

use std::collections::BTreeSet;
use std::sync::Arc;

use futures::StreamExt;
use serde::Serialize;

use super::codec::Opener;
use super::destination::{Chains, Destination};
use super::layout::Lineage;
use super::record::SnapshotRecord;
use super::{BackupError, Progress, chunks};
use crate::crypto::CryptoError;

/// The first bytes of every btrfs send stream.
const STREAM_MAGIC: &[u8] = b"btrfs-stream\0";

/// What a verify found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    snapshots: usize,
    objects: usize,
    stream_bytes: u64,
    bad: Vec<Bad>,
}

/// One bad or missing object, and what is wrong with it.
#[derive(Debug, Clone, Serialize)]
pub struct Bad {
    key: String,
    problem: String,
}

impl Bad {
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

impl VerifyReport {
    pub fn snapshots(&self) -> usize {
        self.snapshots
    }
    pub fn objects(&self) -> usize {
        self.objects
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
    pub fn bad(&self) -> &[Bad] {
        &self.bad
    }
}

/// A snapshot to check: its lineage, sequence and name.
struct Wanted {
    lineage: Lineage,
    sequence: String,
    name: String,
}

/// Verifies `snapshot`'s chain, or every snapshot.
pub async fn verify(
    destination: &Destination,
    snapshot: Option<&str>,
    opener: Opener,
    progress: &dyn Progress,
) -> Result<VerifyReport, BackupError> {
    destination.require_backups().await?;
    let mut report = VerifyReport {
        snapshots: 0,
        objects: 0,
        stream_bytes: 0,
        bad: Vec::new(),
    };
    let wanted = wanted(destination, snapshot, &mut report).await?;
    let mut records = Vec::new();
    for w in &wanted {
        report.objects += 1;
        match destination.record(&w.lineage, &w.sequence, &w.name).await {
            Ok(record) => records.push((w, record)),
            Err(error) => report
                .bad
                .push(bad(&w.lineage.record_key(&w.sequence, &w.name), error)),
        }
    }
    if let Some((_, record)) = records.iter().find(|(_, r)| r.encrypted())
        && !opener.can_decrypt()
    {
        return Err(BackupError::IdentityNeeded {
            snapshot: record.name().to_string(),
        });
    }
    // A plain record where its chain is encrypted, or where the identity
    // is given for its snapshot.
    let encrypted_sequences: BTreeSet<(Lineage, String)> = records
        .iter()
        .filter(|(_, r)| r.encrypted())
        .map(|(w, _)| (w.lineage.clone(), w.sequence.clone()))
        .collect();
    records.retain(|(w, record)| {
        let chain_encrypted = encrypted_sequences.contains(&(w.lineage.clone(), w.sequence.clone()));
        // A restore of the snapshot with this identity would refuse it too.
        let identity_for_it = snapshot.is_some() && opener.can_decrypt();
        let plain_among_encrypted = !record.encrypted() && (chain_encrypted || identity_for_it);
        if plain_among_encrypted {
            report.bad.push(Bad {
                key: w.lineage.record_key(&w.sequence, &w.name),
                problem: "it is stored unencrypted where its chain is encrypted (or an --age-identity was given): zeroblk never pushes that, so the bucket was written by someone else".to_string(),
            });
        }
        !plain_among_encrypted
    });
    progress.start(Some(records.iter().map(|(_, r)| r.stream_bytes()).sum()));
    let opener = Arc::new(opener);
    for (w, record) in &records {
        check_chunks(destination, w, record, &opener, progress, &mut report).await?;
        report.snapshots += 1;
    }
    Ok(report)
}

/// The snapshots to check: `snapshot`'s chain, or every listed one. A
/// sequence whose parents do not chain is itself reported bad.
async fn wanted(
    destination: &Destination,
    snapshot: Option<&str>,
    report: &mut VerifyReport,
) -> Result<Vec<Wanted>, BackupError> {
    let chains: Vec<(Chains, Option<String>)> = match snapshot {
        Some(name) => {
            let found = destination.find(name).await?;
            let lineage = found.lineage().clone();
            let name = found.name().to_string();
            vec![(destination.chains(&lineage).await?, Some(name))]
        }
        None => destination
            .all_chains()
            .await?
            .into_iter()
            .map(|c| (c, None))
            .collect(),
    };
    let mut wanted = Vec::new();
    let mut seen = BTreeSet::new();
    for (chains, only) in &chains {
        for (key, problem) in chains.damaged() {
            report.bad.push(Bad {
                key: key.clone(),
                problem: problem.clone(),
            });
        }
        for sequence in chains.sequences() {
            let names: Vec<&str> = match only {
                Some(name) if sequence.entry(name).is_none() => continue,
                Some(name) => vec![name.as_str()],
                None => sequence.snapshots().iter().map(|e| e.name()).collect(),
            };
            for name in names {
                match sequence.chain_to(name) {
                    Ok(chain) => {
                        for entry in chain {
                            if seen.insert((chains.lineage().clone(), entry.name().to_string())) {
                                wanted.push(Wanted {
                                    lineage: chains.lineage().clone(),
                                    sequence: sequence.name().to_string(),
                                    name: entry.name().to_string(),
                                });
                            }
                        }
                    }
                    Err(problem) => report.bad.push(Bad {
                        key: chains.lineage().sequence_key(sequence.name()),
                        problem,
                    }),
                }
            }
        }
    }
    Ok(wanted)
}

/// Fetches and opens every chunk of one snapshot, noting the bad ones.
/// An identity that opens none stops the check: that is one error, not
/// one per chunk.
async fn check_chunks(
    destination: &Destination,
    w: &Wanted,
    record: &SnapshotRecord,
    opener: &Arc<Opener>,
    progress: &dyn Progress,
    report: &mut VerifyReport,
) -> Result<(), BackupError> {
    let store = destination.store();
    let keys: Vec<String> = (0..record.chunks().len())
        .map(|index| w.lineage.chunk_key(&w.sequence, &w.name, index as u32))
        .collect();
    let mut read = futures::stream::iter(record.chunks().iter().zip(&keys).enumerate())
        .map(|(index, (chunk, key))| async move {
            let plain = chunks::read(store, key.clone(), chunk, record.encrypted(), opener).await;
            (index, key, plain)
        })
        .buffered(chunks::PARALLEL);
    while let Some((index, key, plain)) = read.next().await {
        report.objects += 1;
        match plain {
            Ok(plain) if index == 0 && !plain.starts_with(STREAM_MAGIC) => report.bad.push(Bad {
                key: key.clone(),
                problem: "it does not start a btrfs send stream".to_string(),
            }),
            Ok(plain) => {
                report.stream_bytes += plain.len() as u64;
                progress.advance(plain.len() as u64);
            }
            Err(BackupError::Crypto(CryptoError::WrongIdentity)) => {
                return Err(CryptoError::WrongIdentity.into());
            }
            Err(error) => report.bad.push(bad(key, error)),
        }
    }
    Ok(())
}

fn bad(key: &str, error: BackupError) -> Bad {
    let problem = match error {
        BackupError::Damaged { reason, .. } => reason,
        other => other.to_string(),
    };
    Bad {
        key: key.to_string(),
        problem,
    }
}
