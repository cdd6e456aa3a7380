//! Which of a set of objects a store holds, and their sizes: a HEAD each
//! when they are few, else a listing of each `XX/` folder they are in.
//!
//! A HEAD costs a request per object; a listing a request per 1,000
//! objects the folder holds, whoever they belong to. Up to [`HEAD_LIMIT`]
//! objects, HEADs cost at most that many requests, whatever the store
//! holds; beyond it, the folders (at most 256 per kind) are listed, several
//! at a time.

use std::collections::{BTreeSet, HashMap, HashSet};

use futures::{StreamExt, TryStreamExt};

use crate::store::{Store, StoreError};

/// Up to this many objects are looked up with a HEAD each.
pub(super) const HEAD_LIMIT: usize = 1000;

/// Requests in flight at once.
const CONCURRENCY: usize = 16;

/// The size of each of `keys` that `store` holds; those it lacks are not
/// in the answer.
pub(super) async fn sizes(
    store: &Store,
    keys: &[String],
) -> Result<HashMap<String, u64>, StoreError> {
    match keys.len() <= HEAD_LIMIT {
        true => heads(store, keys).await,
        false => listed(store, keys).await,
    }
}

async fn heads(store: &Store, keys: &[String]) -> Result<HashMap<String, u64>, StoreError> {
    // Owned keys: a stream of futures borrowing its items is not `Send`
    // for every lifetime, which a spawned task needs.
    let found: Vec<(String, Option<u64>)> = futures::stream::iter(keys.to_vec())
        .map(|key| async move {
            let size = store.size_of(&key).await?;
            Ok::<_, StoreError>((key, size))
        })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(found
        .into_iter()
        .filter_map(|(key, size)| Some((key, size?)))
        .collect())
}

async fn listed(store: &Store, keys: &[String]) -> Result<HashMap<String, u64>, StoreError> {
    let wanted: HashSet<&str> = keys.iter().map(String::as_str).collect();
    let folders: BTreeSet<String> = keys
        .iter()
        .filter_map(|key| Some(folder_of(key)?.to_string()))
        .collect();
    let listings: Vec<_> = futures::stream::iter(folders)
        .map(|folder| async move { store.list_objects(&folder).await })
        .buffer_unordered(CONCURRENCY)
        .try_collect()
        .await?;
    Ok(listings
        .into_iter()
        .flatten()
        .filter(|object| wanted.contains(object.key.as_str()))
        .map(|object| (object.key, object.size))
        .collect())
}

/// The folder a key is in, with its slash (`packs/ab/` of `packs/ab/ID`).
fn folder_of(key: &str) -> Option<&str> {
    key.rfind('/').map(|slash| &key[..=slash])
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn a_key_is_in_the_folder_before_its_last_slash() {
        assert_eq!(folder_of("packs/ab/abcdef"), Some("packs/ab/"));
        assert_eq!(folder_of("top"), None);
    }

    /// Both ways of looking give the same answer: the sizes of what is
    /// there, nothing of what is not, nor of what was not asked about; in
    /// memory and in a local directory.
    #[tokio::test]
    async fn heads_and_listings_agree() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let local = Store::open(&url, &crate::store::StoreOptions::default()).unwrap();
        for store in [Store::memory(), local] {
            agree_on(&store).await;
        }
    }

    async fn agree_on(store: &Store) {
        let mut keys = Vec::new();
        for n in 0..HEAD_LIMIT + 10 {
            let key = format!("pages/{:02x}/{n:08}", n % 7);
            if n % 3 != 0 {
                store.put(&key, Bytes::from(vec![0; n % 5])).await.unwrap();
            }
            keys.push(key);
        }
        store
            .put("pages/00/not-asked", Bytes::from_static(b"x"))
            .await
            .unwrap();
        let few = &keys[..HEAD_LIMIT];
        let by_heads = sizes(store, few).await.unwrap();
        let lists_before = store.counters().lists;
        let by_listing = listed(store, few).await.unwrap();
        assert_eq!(by_heads, by_listing, "{store:?}");
        assert_eq!(store.counters().lists - lists_before, 7, "one per folder");
        let all = sizes(store, &keys).await.unwrap();
        let there = keys.iter().enumerate().filter(|(n, _)| n % 3 != 0).count();
        assert_eq!(all.len(), there);
        assert_eq!(all.get(&keys[4]), Some(&4));
        assert!(!all.contains_key(&keys[3]));
        assert!(!all.contains_key("pages/00/not-asked"));
    }
}
