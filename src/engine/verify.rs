//! `zeroblk volume verify`: fetches every map page and chunk the newest
//! generation of a volume (or a snapshot) references, and checks each against its name
//! (the BLAKE3 hash of its contents) and the length the map recorded.
//! A packed chunk is fetched with a ranged GET of its pack. A [`Meter`]
//! hears of each page and chunk checked.

use std::collections::HashSet;

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::chunks::{chunk_object, key_of};
use super::error::{EngineError, Result};
use super::meter::{Meter, Unit, Unmetered};
use super::snapshot::open_root;
use crate::crypto::Password;
use crate::format::{ChunkRef, Codec, PageSlot, chunk, keys, page, page::MapPage};
use crate::store::{Store, StoreError};

/// Objects fetched at once.
const CONCURRENCY: usize = 16;

/// What `verify` found.
#[derive(Debug, Clone, Serialize)]
pub struct VerifyReport {
    pub name: String,
    pub generation: u64,
    pub pages: u64,
    pub chunks: u64,
    pub bytes: u64,
    pub bad: Vec<BadObject>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.bad.is_empty()
    }
}

/// An object that is missing or does not hold what its name says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BadObject {
    pub key: String,
    pub problem: String,
}

/// Reads and checks everything volume `name` (or snapshot `NAME@SNAP`)
/// references, opening it with `password` if it is encrypted.
pub async fn verify(store: &Store, name: &str, password: Option<Password>) -> Result<VerifyReport> {
    verify_metered(store, name, password, &Unmetered).await
}

/// [`verify`], telling `meter` of the map pages checked, then of the
/// chunks' stored bytes.
pub async fn verify_metered(
    store: &Store,
    name: &str,
    password: Option<Password>,
    meter: &dyn Meter,
) -> Result<VerifyReport> {
    let (_, codec, root) = open_root(store, &name.parse()?, password).await?;
    let codec = &codec;
    let mut report = VerifyReport {
        name: name.to_string(),
        generation: root.generation,
        pages: 0,
        chunks: 0,
        bytes: 0,
        bad: Vec::new(),
    };
    let slots: Vec<PageSlot> = root
        .pages
        .iter()
        .filter(|s| !s.is_empty())
        .copied()
        .collect();
    meter.stage("map pages", Unit::Objects, Some(slots.len() as u64));
    let pages: Vec<_> = futures::stream::iter(slots)
        .map(|slot| check_page(store, codec, slot))
        .buffer_unordered(CONCURRENCY)
        .inspect_ok(|_| meter.advance(1))
        .try_collect()
        .await?;
    let mut chunks = HashSet::new();
    for (slot, outcome) in pages {
        report.pages += 1;
        match outcome {
            Ok(page) => chunks.extend(page.entries().iter().filter(|e| !e.is_zero()).copied()),
            Err(problem) => report.bad.push(BadObject {
                key: keys::page(&slot.id),
                problem,
            }),
        }
    }
    let total = chunks.iter().map(|e| u64::from(e.stored_len)).sum();
    meter.stage("chunks", Unit::Bytes, Some(total));
    let checked: Vec<_> = futures::stream::iter(chunks)
        .map(|entry| check_chunk(store, codec, entry))
        .buffer_unordered(CONCURRENCY)
        .inspect_ok(|(entry, _)| meter.advance(u64::from(entry.stored_len)))
        .try_collect()
        .await?;
    for (entry, outcome) in checked {
        report.chunks += 1;
        match outcome {
            Ok(len) => report.bytes += len,
            Err(problem) if entry.pack().is_some() => report.bad.push(BadObject {
                key: key_of(&entry),
                problem: format!("chunk {}: {problem}", entry.id),
            }),
            Err(problem) => report.bad.push(BadObject {
                key: key_of(&entry),
                problem,
            }),
        }
    }
    report.bad.sort_by(|a, b| a.key.cmp(&b.key));
    Ok(report)
}

/// Fetches and decodes one page; a store failure aborts, a bad page is
/// reported.
async fn check_page(
    store: &Store,
    codec: &Codec,
    slot: PageSlot,
) -> Result<(PageSlot, std::result::Result<MapPage, String>)> {
    let key = keys::page(&slot.id);
    let Some(object) = store.get_at_most(&key, page::MAX_STORED_LEN).await? else {
        return Ok((slot, Err("missing".into())));
    };
    Ok((
        slot,
        MapPage::decode(slot.id, &object, codec).map_err(|e| e.to_string()),
    ))
}

/// Fetches and decodes one chunk; returns its stored length.
async fn check_chunk(
    store: &Store,
    codec: &Codec,
    entry: ChunkRef,
) -> Result<(ChunkRef, std::result::Result<u64, String>)> {
    let object = match chunk_object(store, &entry).await {
        Ok(Some(object)) => object,
        Ok(None) => return Ok((entry, Err("missing".into()))),
        Err(EngineError::Store(StoreError::ShortRead { got, .. })) => {
            return Ok((entry, Err(format!("the pack ends {got} bytes into it"))));
        }
        Err(error) => return Err(error),
    };
    let stored_len = entry.stored_len;
    if object.len() != stored_len as usize {
        let problem = format!("{} bytes, but the map says {stored_len}", object.len());
        return Ok((entry, Err(problem)));
    }
    let codec = codec.clone();
    let decoded =
        crate::blocking::run(move || chunk::decode(entry.id, &object, &codec).map(|_| ())).await;
    Ok((
        entry,
        decoded
            .map(|()| u64::from(stored_len))
            .map_err(|e| e.to_string()),
    ))
}
