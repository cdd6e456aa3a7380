//! `zeroblk gc`: deletes what no volume needs any more.
//!
//! What it keeps, for every volume in the store: the newest root, and every
//! root younger than the grace period; and every map page and chunk those
//! roots reference. Everything else under `chunks/` and `pages/` goes once
//! it is older than the grace period, as do the older roots.
//!
//! Why that is safe with writers running: a writer uploads a chunk or page
//! (a plain put, which renews the age of one that exists already) before
//! it publishes the root that references it, and does so within seconds.
//! An object young enough to belong to a commit in flight is never
//! deleted, so the grace period must exceed the longest commit, retries
//! included: the default is an hour. A page that cannot be read stops the
//! collection before anything is deleted: what it references is unknown.

use std::collections::HashSet;
use std::time::{Duration, SystemTime};

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;

use super::catalog::{self, superblock};
use super::error::{EngineError, Result};
use crate::format::{ObjectId, Root, Superblock, keys, page::MapPage};
use crate::store::{ObjectInfo, Store};

const CONCURRENCY: usize = 16;

/// How `gc` runs.
#[derive(Debug, Clone, Copy)]
pub struct GcOptions {
    /// Objects and roots younger than this are kept.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

/// What `gc` deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, Serialize)]
pub struct GcReport {
    pub dry_run: bool,
    pub volumes: u64,
    pub roots_deleted: u64,
    pub pages_deleted: u64,
    pub chunks_deleted: u64,
    pub bytes_freed: u64,
    pub pages_kept: u64,
    pub chunks_kept: u64,
}

/// The pages and chunks the kept roots reference.
#[derive(Default)]
struct Live {
    pages: HashSet<ObjectId>,
    chunks: HashSet<ObjectId>,
}

/// Collects garbage in the whole store.
pub async fn collect(store: &Store, options: GcOptions) -> Result<GcReport> {
    let now = SystemTime::now();
    let is_old = |object: &ObjectInfo| {
        now.duration_since(object.last_modified)
            .is_ok_and(|age| age >= options.grace)
    };
    let mut report = GcReport {
        dry_run: options.dry_run,
        ..GcReport::default()
    };
    let mut live = Live::default();
    let mut old_roots = Vec::new();
    for name in catalog::list(store).await? {
        let superblock = superblock(store, &name).await?;
        report.volumes += 1;
        let roots = store
            .list_objects(&format!("{}/roots/", keys::volume_dir(&name)))
            .await?;
        let newest = roots.iter().filter_map(|r| generation_of(&r.key)).max();
        for root in roots {
            let older = matches!((generation_of(&root.key), newest), (Some(g), Some(n)) if g < n);
            if older && is_old(&root) {
                old_roots.push(root);
                continue;
            }
            mark_live(store, &superblock, &root.key, &mut live).await?;
        }
    }
    let pages = store.list_objects("pages/").await?;
    let chunks = store.list_objects("chunks/").await?;
    let dead_pages: Vec<_> = pages
        .into_iter()
        .filter(|o| !is_live(&o.key, &live.pages) && is_old(o))
        .collect();
    let dead_chunks: Vec<_> = chunks
        .into_iter()
        .filter(|o| !is_live(&o.key, &live.chunks) && is_old(o))
        .collect();
    report.pages_kept = live.pages.len() as u64;
    report.chunks_kept = live.chunks.len() as u64;
    report.roots_deleted = old_roots.len() as u64;
    report.pages_deleted = dead_pages.len() as u64;
    report.chunks_deleted = dead_chunks.len() as u64;
    let all_dead: Vec<ObjectInfo> = old_roots
        .into_iter()
        .chain(dead_pages)
        .chain(dead_chunks)
        .collect();
    report.bytes_freed = all_dead.iter().map(|o| o.size).sum();
    if !options.dry_run {
        futures::stream::iter(all_dead)
            .map(|object| async move { store.delete(&object.key).await })
            .buffer_unordered(CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;
    }
    Ok(report)
}

/// The generation a root's key names (`volumes/NAME/roots/GEN`).
fn generation_of(key: &str) -> Option<u64> {
    key.rsplit('/').next()?.parse().ok()
}

/// Whether the object at `key` (`chunks/xx/HEX` or `pages/xx/HEX`) is in
/// `live`. A key that names no object id is kept: gc deletes only what it
/// understands.
fn is_live(key: &str, live: &HashSet<ObjectId>) -> bool {
    let id = key
        .rsplit('/')
        .next()
        .and_then(|hex| hex::decode(hex).ok())
        .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
    match id {
        Some(id) => live.contains(&ObjectId(id)),
        None => true,
    }
}

/// Adds what the root at `key` references to `live`.
async fn mark_live(
    store: &Store,
    superblock: &Superblock,
    key: &str,
    live: &mut Live,
) -> Result<()> {
    let Some(bytes) = store.get(key).await? else {
        return Ok(()); // deleted since the listing: it protects nothing
    };
    let root = Root::decode(key, &bytes)?;
    if root.volume != superblock.uuid {
        return Ok(());
    }
    let ids: Vec<ObjectId> = root
        .pages
        .iter()
        .filter(|s| !s.is_empty() && !live.pages.contains(&s.id))
        .map(|s| s.id)
        .collect();
    let generation = root.generation;
    let pages: Vec<(ObjectId, MapPage)> = futures::stream::iter(ids)
        .map(|id| async move {
            let key = keys::page(&id);
            let object = store
                .get(&key)
                .await?
                .ok_or(EngineError::MissingObject { key, generation })?;
            Ok::<_, EngineError>((id, MapPage::decode(id, &object)?))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    for (id, page) in pages {
        live.pages.insert(id);
        live.chunks
            .extend(page.entries().iter().filter(|e| !e.is_zero()).map(|e| e.id));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_read_back() {
        assert_eq!(
            generation_of("volumes/v/roots/00000000000000000042"),
            Some(42)
        );
        assert_eq!(generation_of("volumes/v/roots/junk"), None);
        let id = ObjectId::of(b"x");
        let live: HashSet<_> = [id].into();
        assert!(is_live(&keys::chunk(&id), &live));
        assert!(!is_live(&keys::chunk(&ObjectId::of(b"y")), &live));
        assert!(
            is_live("chunks/ab/not-an-id", &live),
            "unknown keys are kept"
        );
    }
}
