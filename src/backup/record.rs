//! The metadata objects of a destination, and how they are read: every
//! one is bounded in size and checked field by field before it is used
//! (the bucket is untrusted input), and a newer format is refused rather
//! than misread.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::BackupError;
use super::layout::{Lineage, check_name};
use crate::store::{Store, Version};

/// The format every object here is written in.
pub const FORMAT: u32 = 1;
/// The largest chunk of a send stream a record may describe.
pub const MAX_CHUNK: u64 = 256 << 20;
const MAX_SMALL_OBJECT: u64 = 64 << 10;
const MAX_SEQUENCE: u64 = 16 << 20;
const MAX_RECORD: u64 = 64 << 20;

/// What the marker object says.
#[derive(Debug, Serialize, Deserialize)]
pub struct Marker {
    format: u32,
}

impl Marker {
    pub fn new() -> Marker {
        Marker { format: FORMAT }
    }
}

/// A lineage's head: the sequence its next incremental push extends.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Head {
    format: u32,
    sequence: String,
}

impl Head {
    pub fn new(sequence: &str) -> Head {
        Head {
            format: FORMAT,
            sequence: sequence.to_string(),
        }
    }

    pub fn sequence(&self) -> &str {
        &self.sequence
    }
}

/// One snapshot as its sequence lists it: what `backup list` shows.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Entry {
    name: String,
    parent: Option<String>,
    uuid: Uuid,
    created: DateTime<Utc>,
    pushed: DateTime<Utc>,
    stream_bytes: u64,
    stored_bytes: u64,
    chunks: u32,
    encrypted: bool,
}

impl Entry {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn parent(&self) -> Option<&str> {
        self.parent.as_deref()
    }
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    pub fn created(&self) -> DateTime<Utc> {
        self.created
    }
    pub fn pushed(&self) -> DateTime<Utc> {
        self.pushed
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
    pub fn stored_bytes(&self) -> u64 {
        self.stored_bytes
    }
    pub fn chunks(&self) -> u32 {
        self.chunks
    }
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }
}

/// A sequence: one full stream, then incremental ones, in push order.
/// Listing a snapshot here is what makes its push complete.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Sequence {
    format: u32,
    volume: String,
    subvolume: String,
    sequence: String,
    snapshots: Vec<Entry>,
}

impl Sequence {
    pub fn new(lineage: &Lineage, name: &str) -> Sequence {
        Sequence {
            format: FORMAT,
            volume: lineage.volume().to_string(),
            subvolume: lineage.subvolume().to_string(),
            sequence: name.to_string(),
            snapshots: Vec::new(),
        }
    }

    pub fn name(&self) -> &str {
        &self.sequence
    }

    pub fn snapshots(&self) -> &[Entry] {
        &self.snapshots
    }

    pub fn entry(&self, name: &str) -> Option<&Entry> {
        self.snapshots.iter().find(|e| e.name == name)
    }

    /// Adds `record`'s snapshot at the end, unless it is listed already.
    pub fn append(&mut self, record: &SnapshotRecord) {
        if self.entry(&record.name).is_none() {
            self.snapshots.push(record.entry());
        }
    }

    /// Leaves out the snapshots `drop` names.
    pub fn without(&self, drop: &[String]) -> Sequence {
        let mut kept = self.clone();
        kept.snapshots.retain(|e| !drop.contains(&e.name));
        kept
    }

    /// The snapshots restoring `name` receives, the full stream first.
    pub fn chain_to(&self, name: &str) -> Result<Vec<&Entry>, String> {
        let mut chain = Vec::new();
        let mut next = Some(name);
        while let Some(name) = next {
            let entry = self
                .entry(name)
                .ok_or_else(|| format!("it lists no snapshot {name}, which the chain needs"))?;
            if chain.len() > self.snapshots.len() {
                return Err("its parents form a loop".to_string());
            }
            chain.push(entry);
            next = entry.parent.as_deref();
        }
        chain.reverse();
        Ok(chain)
    }

    fn check(&self, lineage: &Lineage, name: &str) -> Result<(), String> {
        if self.volume != lineage.volume()
            || self.subvolume != lineage.subvolume()
            || self.sequence != name
        {
            return Err("it names another volume, subvolume or sequence than its key".into());
        }
        if self.snapshots.is_empty() {
            return Err("it lists no snapshot (zeroblk never writes an empty sequence)".into());
        }
        let names: std::collections::HashSet<&str> =
            self.snapshots.iter().map(|e| e.name.as_str()).collect();
        if names.len() != self.snapshots.len() {
            return Err("it lists a snapshot twice".into());
        }
        for (index, entry) in self.snapshots.iter().enumerate() {
            check_name("snapshot", &entry.name).map_err(|e| e.to_string())?;
            match (&entry.parent, index) {
                (None, 0) => {}
                (None, _) => return Err(format!("{} is a second full stream", entry.name)),
                (Some(_), 0) => {
                    return Err(format!("it starts with {}, which has a parent", entry.name));
                }
                (Some(parent), _) if self.snapshots[..index].iter().all(|e| &e.name != parent) => {
                    return Err(format!("{}'s parent {parent} is not before it", entry.name));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// One chunk of a stored send stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChunkRef {
    /// Bytes of the stored object (compressed, and encrypted if it is).
    size: u64,
    /// Bytes of the send stream it holds.
    plain: u64,
    /// BLAKE3 of the stored object, in hex.
    hash: String,
}

impl ChunkRef {
    pub fn new(stored: &[u8], plain: u64) -> ChunkRef {
        ChunkRef {
            size: stored.len() as u64,
            plain,
            hash: blake3::hash(stored).to_hex().to_string(),
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn plain(&self) -> u64 {
        self.plain
    }

    /// Whether `stored` is this chunk's object.
    pub fn matches(&self, stored: &[u8]) -> bool {
        stored.len() as u64 == self.size && blake3::hash(stored).to_hex().as_str() == self.hash
    }
}

/// Everything about one pushed snapshot: where it came from, what it
/// needs, and its chunks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotRecord {
    format: u32,
    volume: String,
    subvolume: String,
    sequence: String,
    name: String,
    parent: Option<String>,
    /// The snapshot's btrfs UUID, and the subvolume it was taken of.
    uuid: Uuid,
    source_uuid: Option<Uuid>,
    /// The UUID of the parent the stream was sent against.
    parent_uuid: Option<Uuid>,
    generation: u64,
    created: DateTime<Utc>,
    pushed: DateTime<Utc>,
    stream_bytes: u64,
    compression: String,
    encrypted: bool,
    recipients: usize,
    chunk_size: u64,
    chunks: Vec<ChunkRef>,
}

/// What a push knows of the snapshot it sends.
pub struct Sent<'a> {
    pub(in crate::backup) lineage: &'a Lineage,
    pub(in crate::backup) sequence: &'a str,
    pub(in crate::backup) name: &'a str,
    pub(in crate::backup) parent: Option<(&'a str, Uuid)>,
    pub(in crate::backup) uuid: Uuid,
    pub(in crate::backup) source_uuid: Option<Uuid>,
    pub(in crate::backup) generation: u64,
    pub(in crate::backup) created: DateTime<Utc>,
    pub(in crate::backup) recipients: usize,
    pub(in crate::backup) chunk_size: u64,
}

impl SnapshotRecord {
    pub fn new(sent: &Sent<'_>, chunks: Vec<ChunkRef>, pushed: DateTime<Utc>) -> SnapshotRecord {
        SnapshotRecord {
            format: FORMAT,
            volume: sent.lineage.volume().to_string(),
            subvolume: sent.lineage.subvolume().to_string(),
            sequence: sent.sequence.to_string(),
            name: sent.name.to_string(),
            parent: sent.parent.map(|(name, _)| name.to_string()),
            uuid: sent.uuid,
            source_uuid: sent.source_uuid,
            parent_uuid: sent.parent.map(|(_, uuid)| uuid),
            generation: sent.generation,
            created: sent.created,
            pushed,
            stream_bytes: chunks.iter().map(|c| c.plain).sum(),
            compression: "zstd".to_string(),
            encrypted: sent.recipients > 0,
            recipients: sent.recipients,
            chunk_size: sent.chunk_size,
            chunks,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn uuid(&self) -> Uuid {
        self.uuid
    }
    pub fn encrypted(&self) -> bool {
        self.encrypted
    }
    pub fn stream_bytes(&self) -> u64 {
        self.stream_bytes
    }
    pub fn chunks(&self) -> &[ChunkRef] {
        &self.chunks
    }

    pub fn entry(&self) -> Entry {
        Entry {
            name: self.name.clone(),
            parent: self.parent.clone(),
            uuid: self.uuid,
            created: self.created,
            pushed: self.pushed,
            stream_bytes: self.stream_bytes,
            stored_bytes: self.chunks.iter().map(|c| c.size).sum(),
            chunks: self.chunks.len() as u32,
            encrypted: self.encrypted,
        }
    }

    fn check(&self, lineage: &Lineage, sequence: &str, name: &str) -> Result<(), String> {
        if self.volume != lineage.volume()
            || self.subvolume != lineage.subvolume()
            || self.sequence != sequence
            || self.name != name
        {
            return Err("it names another snapshot than its key".into());
        }
        if let Some(parent) = &self.parent {
            check_name("snapshot", parent).map_err(|e| e.to_string())?;
        }
        if self.compression != "zstd" {
            return Err(format!("its compression `{}` is unknown", self.compression));
        }
        if self.chunk_size == 0 || self.chunk_size > MAX_CHUNK {
            return Err(format!(
                "its chunk size {} is out of bounds",
                self.chunk_size
            ));
        }
        let stored_max = self.chunk_size + self.chunk_size / 8 + (1 << 20);
        for chunk in &self.chunks {
            let hex_ok =
                chunk.hash.len() == 64 && chunk.hash.bytes().all(|b| b.is_ascii_hexdigit());
            if chunk.plain == 0
                || chunk.plain > self.chunk_size
                || chunk.size > stored_max
                || !hex_ok
            {
                return Err("a chunk's size or hash is out of bounds".into());
            }
        }
        if self.chunks.iter().map(|c| c.plain).sum::<u64>() != self.stream_bytes {
            return Err("its chunks do not add up to its stream's size".into());
        }
        Ok(())
    }
}

/// Reads and decodes the JSON object at `key`, at most `max` bytes.
async fn load<T: DeserializeOwned>(
    store: &Store,
    key: &str,
    max: u64,
) -> Result<Option<T>, BackupError> {
    match store.get_at_most(key, max).await? {
        Some(bytes) => decode(key, &bytes).map(Some),
        None => Ok(None),
    }
}

/// Decodes the JSON object read from `key`; a newer format is refused.
fn decode<T: DeserializeOwned>(key: &str, bytes: &[u8]) -> Result<T, BackupError> {
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| BackupError::damaged(key, e))?;
    match value.get("format").and_then(|f| f.as_u64()) {
        Some(f) if f == u64::from(FORMAT) => {}
        Some(f) if f > u64::from(FORMAT) => {
            return Err(BackupError::NewerFormat {
                key: key.to_string(),
                format: f.min(u64::from(u32::MAX)) as u32,
            });
        }
        _ => return Err(BackupError::damaged(key, "it has no known format number")),
    }
    serde_json::from_value(value).map_err(|e| BackupError::damaged(key, e))
}

pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec_pretty(value).expect("metadata serializes"))
}

pub async fn load_marker(store: &Store) -> Result<Option<Marker>, BackupError> {
    load(store, super::layout::MARKER, MAX_SMALL_OBJECT).await
}

pub async fn load_head(store: &Store, lineage: &Lineage) -> Result<Option<Head>, BackupError> {
    let key = lineage.head_key();
    let head: Option<Head> = load(store, &key, MAX_SMALL_OBJECT).await?;
    if let Some(head) = &head {
        check_name("sequence", &head.sequence).map_err(|e| BackupError::damaged(&key, e))?;
    }
    Ok(head)
}

pub async fn load_sequence(
    store: &Store,
    lineage: &Lineage,
    name: &str,
) -> Result<Option<Sequence>, BackupError> {
    match load_sequence_versioned(store, lineage, name).await? {
        Some((sequence, _)) => Ok(Some(sequence)),
        None => Ok(None),
    }
}

/// A sequence and the version of its object, for a conditional replace.
pub async fn load_sequence_versioned(
    store: &Store,
    lineage: &Lineage,
    name: &str,
) -> Result<Option<(Sequence, Version)>, BackupError> {
    let key = lineage.sequence_key(name);
    let Some((bytes, version)) = store.get_versioned_at_most(&key, MAX_SEQUENCE).await? else {
        return Ok(None);
    };
    let sequence: Sequence = decode(&key, &bytes)?;
    sequence
        .check(lineage, name)
        .map_err(|e| BackupError::damaged(&key, e))?;
    Ok(Some((sequence, version)))
}

pub async fn load_record(
    store: &Store,
    lineage: &Lineage,
    sequence: &str,
    name: &str,
) -> Result<Option<SnapshotRecord>, BackupError> {
    let key = lineage.record_key(sequence, name);
    let record: Option<SnapshotRecord> = load(store, &key, MAX_RECORD).await?;
    if let Some(record) = &record {
        record
            .check(lineage, sequence, name)
            .map_err(|e| BackupError::damaged(&key, e))?;
    }
    Ok(record)
}

/// Sequences built from plain values, for the tests of what reads them.
#[cfg(test)]
pub mod test_support {
    use super::*;

    /// A snapshot for [`sequence`]: name, parent, when it was taken,
    /// whether it is encrypted.
    pub type Spec<'a> = (&'a str, Option<&'a str>, DateTime<Utc>, bool);

    /// A sequence named after its first snapshot, listing `specs` in order.
    pub fn sequence(lineage: &Lineage, specs: &[Spec<'_>]) -> Sequence {
        let mut sequence = Sequence::new(lineage, specs[0].0);
        for &(name, parent, created, encrypted) in specs {
            sequence
                .snapshots
                .push(entry(name, parent, created, encrypted));
        }
        sequence
    }

    /// A snapshot's entry; its UUID is derived from its name.
    pub fn entry(
        name: &str,
        parent: Option<&str>,
        created: DateTime<Utc>,
        encrypted: bool,
    ) -> Entry {
        Entry {
            name: name.to_string(),
            parent: parent.map(str::to_string),
            uuid: uuid_of(name),
            created,
            pushed: created,
            stream_bytes: 1,
            stored_bytes: 1,
            chunks: 1,
            encrypted,
        }
    }

    pub fn uuid_of(name: &str) -> Uuid {
        Uuid::from_bytes(
            blake3::hash(name.as_bytes()).as_bytes()[..16]
                .try_into()
                .expect("16 bytes"),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lineage() -> Lineage {
        Lineage::new("vol", "@home").unwrap()
    }

    fn record(name: &str, parent: Option<&str>, plains: &[u64]) -> SnapshotRecord {
        let lineage = lineage();
        let sent = Sent {
            lineage: &lineage,
            sequence: "S",
            name,
            parent: parent.map(|p| (p, Uuid::nil())),
            uuid: Uuid::new_v4(),
            source_uuid: None,
            generation: 7,
            created: Utc::now(),
            recipients: 0,
            chunk_size: 1 << 20,
        };
        let chunks = plains.iter().map(|&p| ChunkRef::new(&[1; 10], p)).collect();
        SnapshotRecord::new(&sent, chunks, Utc::now())
    }

    #[tokio::test]
    async fn a_record_round_trips_and_a_tampered_one_is_named_damaged() {
        let store = Store::memory();
        let lineage = lineage();
        let written = record("A", None, &[1 << 20, 5]);
        store
            .put(&lineage.record_key("S", "A"), encode(&written))
            .await
            .unwrap();
        let read = load_record(&store, &lineage, "S", "A")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(read, written);
        // The same record under another name: refused.
        store
            .put(&lineage.record_key("S", "B"), encode(&written))
            .await
            .unwrap();
        let error = load_record(&store, &lineage, "S", "B").await.unwrap_err();
        assert!(matches!(error, BackupError::Damaged { .. }), "{error}");
        // A chunk larger than the chunk size: refused.
        let oversized = record("C", None, &[2 << 20]);
        store
            .put(&lineage.record_key("S", "C"), encode(&oversized))
            .await
            .unwrap();
        let error = load_record(&store, &lineage, "S", "C").await.unwrap_err();
        assert!(error.to_string().contains("out of bounds"), "{error}");
    }

    #[tokio::test]
    async fn a_newer_format_is_refused_not_misread() {
        let store = Store::memory();
        let lineage = lineage();
        let newer = br#"{"format": 2, "sequence": "S"}"#;
        store
            .put(&lineage.head_key(), Bytes::from_static(newer))
            .await
            .unwrap();
        let error = load_head(&store, &lineage).await.unwrap_err();
        assert!(
            matches!(error, BackupError::NewerFormat { format: 2, .. }),
            "{error}"
        );
    }

    #[test]
    fn a_chain_runs_from_the_full_stream_to_the_snapshot_skipping_what_it_does_not_need() {
        let lineage = lineage();
        let mut sequence = Sequence::new(&lineage, "A");
        for (name, parent) in [
            ("A", None),
            ("B", Some("A")),
            ("C", Some("B")),
            ("D", Some("B")),
        ] {
            sequence.append(&record(name, parent, &[1]));
        }
        sequence.check(&lineage, "A").unwrap();
        let names = |chain: Vec<&Entry>| {
            chain
                .iter()
                .map(|e| e.name().to_string())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(sequence.chain_to("D").unwrap()), ["A", "B", "D"]);
        assert_eq!(names(sequence.chain_to("A").unwrap()), ["A"]);
        assert!(sequence.chain_to("E").is_err());
        let broken = sequence.without(&["B".to_string()]);
        assert!(broken.chain_to("D").unwrap_err().contains("B"));
        assert!(broken.check(&lineage, "A").is_err());
    }
}
