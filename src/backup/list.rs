//! `backup list`: every chain of a destination, read from its metadata
//! alone (heads and sequences; never a record's chunk list, never data).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::BackupError;
use super::destination::Destination;

/// A destination's snapshots, oldest first, and its chains.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    url: String,
    snapshots: Vec<Listed>,
    chains: Vec<Chain>,
    /// Metadata objects that did not read back: their snapshots are not
    /// listed.
    damaged: Vec<Damaged>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Damaged {
    key: String,
    problem: String,
}

impl Damaged {
    pub fn key(&self) -> &str {
        &self.key
    }
    pub fn problem(&self) -> &str {
        &self.problem
    }
}

/// One snapshot, as `backup list` shows it. `name` is what `--snapshot`
/// takes.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    name: String,
    volume: String,
    subvolume: String,
    sequence: String,
    parent: Option<String>,
    full: bool,
    created: DateTime<Utc>,
    pushed: DateTime<Utc>,
    stream_bytes: u64,
    stored_bytes: u64,
    chunks: u32,
    encrypted: bool,
}

/// One lineage's sequences, and which one its head names.
#[derive(Debug, Clone, Serialize)]
pub struct Chain {
    volume: String,
    subvolume: String,
    head: Option<String>,
    sequences: Vec<SequenceSummary>,
}

#[derive(Debug, Clone, Serialize)]
pub struct SequenceSummary {
    name: String,
    snapshots: usize,
    stored_bytes: u64,
}

impl Listing {
    pub fn snapshots(&self) -> &[Listed] {
        &self.snapshots
    }
    pub fn chains(&self) -> &[Chain] {
        &self.chains
    }
    pub fn damaged(&self) -> &[Damaged] {
        &self.damaged
    }
}

impl Listed {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn volume(&self) -> &str {
        &self.volume
    }
    pub fn subvolume(&self) -> &str {
        &self.subvolume
    }
    pub fn sequence(&self) -> &str {
        &self.sequence
    }
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }
}

impl Chain {
    pub fn lineage(&self) -> (&str, &str) {
        (&self.volume, &self.subvolume)
    }
    pub fn head(&self) -> Option<&str> {
        self.head.as_deref()
    }
    pub fn sequences(&self) -> &[SequenceSummary] {
        &self.sequences
    }
}

impl SequenceSummary {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn snapshots(&self) -> usize {
        self.snapshots
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }
}

/// Lists what `destination` holds.
pub async fn list(destination: &Destination) -> Result<Listing, BackupError> {
    destination.require_backups().await?;
    let mut listing = Listing {
        url: destination.url(),
        snapshots: Vec::new(),
        chains: Vec::new(),
        damaged: Vec::new(),
    };
    for chains in destination.all_chains().await? {
        let lineage = chains.lineage();
        listing
            .damaged
            .extend(chains.damaged().iter().map(|(key, problem)| Damaged {
                key: key.clone(),
                problem: problem.clone(),
            }));
        let mut chain = Chain {
            volume: lineage.volume().to_string(),
            subvolume: lineage.subvolume().to_string(),
            head: chains.head().map(str::to_string),
            sequences: Vec::new(),
        };
        for sequence in chains.sequences() {
            chain.sequences.push(SequenceSummary {
                name: sequence.name().to_string(),
                snapshots: sequence.snapshots().len(),
                stored_bytes: sequence.snapshots().iter().map(|e| e.stored_bytes()).sum(),
            });
            for entry in sequence.snapshots() {
                listing.snapshots.push(Listed {
                    name: entry.name().to_string(),
                    volume: lineage.volume().to_string(),
                    subvolume: lineage.subvolume().to_string(),
                    sequence: sequence.name().to_string(),
                    parent: entry.parent().map(str::to_string),
                    full: entry.parent().is_none(),
                    created: entry.created(),
                    pushed: entry.pushed(),
                    stream_bytes: entry.stream_bytes(),
                    stored_bytes: entry.stored_bytes(),
                    chunks: entry.chunks(),
                    encrypted: entry.encrypted(),
                });
            }
        }
        listing.chains.push(chain);
    }
    qualify_shared_names(&mut listing.snapshots);
    listing
        .snapshots
        .sort_by(|a, b| (a.created, &a.volume, &a.name).cmp(&(b.created, &b.volume, &b.name)));
    Ok(listing)
}

/// Names `VOLUME/NAME` the snapshots whose name another volume's snapshot
/// has too: each listed name is one `--snapshot` takes.
fn qualify_shared_names(snapshots: &mut [Listed]) {
    let mut volumes: std::collections::HashMap<String, std::collections::HashSet<String>> =
        Default::default();
    for s in snapshots.iter() {
        volumes
            .entry(s.name.clone())
            .or_default()
            .insert(s.volume.clone());
    }
    for s in snapshots.iter_mut() {
        if volumes[&s.name].len() > 1 {
            s.name = format!("{}/{}", s.volume, s.name);
        }
    }
}
