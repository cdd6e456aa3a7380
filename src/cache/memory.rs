//! The memory tier: a byte-bounded moka cache with single-flight loads.

use std::future::Future;
use std::hash::Hash;
use std::sync::Arc;

use moka::future::Cache;
use moka::policy::EvictionPolicy;

/// A value that knows how many bytes it holds.
pub trait Weighted {
    fn weight(&self) -> u32;
}

impl Weighted for bytes::Bytes {
    fn weight(&self) -> u32 {
        self.len().try_into().unwrap_or(u32::MAX)
    }
}

/// Values weighed by their bytes, least recently used out first; concurrent
/// loads of one key run once and all callers get its result.
#[derive(Clone)]
pub struct MemoryCache<K, V> {
    inner: Cache<K, V>,
}

impl<K, V> MemoryCache<K, V>
where
    K: Hash + Eq + Send + Sync + 'static,
    V: Weighted + Clone + Send + Sync + 'static,
{
    pub fn new(max_bytes: u64) -> Self {
        let inner = Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|_key: &K, value: &V| value.weight())
            .eviction_policy(EvictionPolicy::lru())
            .build();
        MemoryCache { inner }
    }

    pub async fn get(&self, key: &K) -> Option<V> {
        self.inner.get(key).await
    }

    /// Whether `key` is cached (not merely being loaded).
    pub fn contains(&self, key: &K) -> bool {
        self.inner.contains_key(key)
    }

    pub async fn insert(&self, key: K, value: V) {
        self.inner.insert(key, value).await;
    }

    pub async fn remove(&self, key: &K) {
        self.inner.invalidate(key).await;
    }

    /// The cached value, or the result of `load`, shared with every
    /// concurrent caller asking for the same key.
    pub async fn get_or_load<E, F>(&self, key: K, load: F) -> Result<V, Arc<E>>
    where
        F: Future<Output = Result<V, E>>,
        E: Send + Sync + 'static,
    {
        self.inner.try_get_with(key, load).await
    }

    pub fn weighted_size(&self) -> u64 {
        self.inner.weighted_size()
    }
}
