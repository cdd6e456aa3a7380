//! The object store: the only module that talks to `object_store`.
//!
//! [`Store`] is a handle on one bucket (or directory, or memory) named by a
//! URL. It speaks in keys and bytes: `get` (absent is `None`, not an error),
//! `put`, `put_if_absent` (the conditional write that fences a second
//! writer), `delete`, and listings of "directories". It counts every request
//! and byte, and it says plainly, once per store, whether the store honours
//! create-if-absent: some S3 clones silently ignore it, and fencing must not
//! trust them blindly.
//!
//! Local directories are written with fsync. Every request has a deadline
//! and is retried with backoff and jitter when it fails in a way that may
//! pass ([`RetryPolicy`]); a conditional create whose first reply was lost
//! is told apart from someone else's object by its bytes.

pub mod faults;
mod metrics;
mod retry;
mod url;

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult, UpdateVersion,
};
use tokio::sync::OnceCell;

pub use metrics::StoreCounters;
pub use retry::RetryPolicy;
pub use url::{StoreOptions, StoreUrl};

use faults::{Faults, FaultyStore};
use metrics::StoreMetrics;

/// A failed store operation, said so that a user knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{url}` is not a store URL: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot create the store directory {}: {source} (check the path and its permissions)", path.display())]
    LocalDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the object store {store}: {detail}. Check the endpoint (--s3-endpoint or AWS_ENDPOINT_URL) and that the server is up"
    )]
    Unreachable { store: String, detail: String },
    #[error(
        "the object store {store} refused the request: {detail}. Check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY and the bucket's permissions"
    )]
    Denied { store: String, detail: String },
    #[error("the bucket of {store} does not exist: create it first (for example `aws s3 mb`)")]
    NoBucket { store: String },
    #[error(
        "no credentials for the object store {store}: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL or --s3-endpoint for a server other than AWS)"
    )]
    NoCredentials { store: String },
    #[error(
        "the object store returned {got} bytes of {key} where {expected} were asked for: the object is shorter than the map says (run `zeroblk volume verify`)"
    )]
    ShortRead {
        key: String,
        expected: u64,
        got: u64,
    },
    #[error("object store {op} of {key} failed: {source}")]
    Request {
        op: &'static str,
        key: String,
        #[source]
        source: object_store::Error,
    },
}

impl StoreError {
    fn from_object_store(op: &'static str, key: impl Display, source: object_store::Error) -> Self {
        StoreError::Request {
            op,
            key: key.to_string(),
            source,
        }
    }

    /// Whether trying again later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Unreachable { .. } | StoreError::Request { .. }
        )
    }
}

/// An object as a listing describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
    pub last_modified: std::time::SystemTime,
}

/// Whether the store refuses a create-if-absent put of an existing key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// Conditional creates work: a second writer is refused at its commit.
    Enforced,
    /// The store overwrote an existing object on a conditional create:
    /// nothing stops two writers of one volume from interleaving.
    Unsupported,
}

/// What a conditional create did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    Created,
    AlreadyExists,
}

/// Which version of an object a write left, for a later write that must
/// replace exactly that version (see [`Store::replace_if_unchanged`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version(UpdateVersion);

impl From<PutResult> for Version {
    fn from(written: PutResult) -> Version {
        Version(UpdateVersion {
            e_tag: written.e_tag,
            version: written.version,
        })
    }
}

/// What a conditional replace did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replaced {
    /// The object was the version given, and now holds the new bytes.
    Replaced(Version),
    /// Somebody wrote or deleted the object since that version (or an
    /// attempt of ours landed and only its reply was lost): nothing written.
    Changed,
    /// The store cannot replace conditionally (a local directory): nothing
    /// written.
    Unsupported,
}

/// A handle on one object store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    url: Arc<str>,
    metrics: Arc<StoreMetrics>,
    fencing: Arc<OnceCell<Fencing>>,
    retry: RetryPolicy,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the store a URL names. No request is made yet.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let inner = StoreUrl::parse(url)?.build(options)?;
        let mut store = Store::from_object_store(url, inner);
        if let Some(timeout) = options.request_timeout {
            store.retry = RetryPolicy::with_attempt_timeout(timeout);
        }
        Ok(store)
    }

    /// A fresh, empty store in memory.
    pub fn memory() -> Store {
        Store::from_object_store("memory://", Arc::new(object_store::memory::InMemory::new()))
    }

    fn from_object_store(url: &str, inner: Arc<dyn ObjectStore>) -> Store {
        Store {
            inner,
            url: url.into(),
            metrics: Arc::default(),
            fencing: Arc::default(),
            retry: RetryPolicy::default(),
        }
    }

    /// This store with its requests failing as `faults` says, under the
    /// same retries and deadlines (for tests).
    pub fn with_faults(&self, faults: Faults) -> Store {
        let faulty = FaultyStore::new(Arc::clone(&self.inner), faults);
        Store {
            inner: Arc::new(faulty),
            fencing: Arc::default(),
            ..self.clone()
        }
    }

    /// This store, retrying as `policy` says.
    pub fn with_retry_policy(mut self, policy: RetryPolicy) -> Store {
        self.retry = policy;
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn counters(&self) -> StoreCounters {
        self.metrics.snapshot()
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let path = Path::from(key);
        let attempt = || self.counted_get(async { self.inner.get(&path).await?.bytes().await });
        self.found("GET", key, self.retrying("GET", key, attempt).await.result)
    }

    /// Bytes `range` of the object at `key`, or `None` when there is no
    /// such object. A range past the object's end is an error.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, StoreError> {
        let path = Path::from(key);
        let attempt = || self.counted_get(self.inner.get_range(&path, range.clone()));
        let found = self.found("GET", key, self.retrying("GET", key, attempt).await.result)?;
        match found {
            Some(bytes) if bytes.len() as u64 != range.end - range.start => {
                Err(StoreError::ShortRead {
                    key: key.to_string(),
                    expected: range.end - range.start,
                    got: bytes.len() as u64,
                })
            }
            found => Ok(found),
        }
    }

    /// One GET attempt, counted.
    async fn counted_get(
        &self,
        request: impl std::future::Future<Output = object_store::Result<Bytes>>,
    ) -> object_store::Result<Bytes> {
        let result = request.await;
        match &result {
            Ok(bytes) => self.metrics.get(Some(bytes.len())),
            Err(object_store::Error::NotFound { .. }) => self.metrics.get(None),
            Err(_) => self.metrics.get_failed(),
        }
        result
    }

    /// A GET's outcome: not found is `None`, not an error.
    fn found(
        &self,
        op: &'static str,
        key: &str,
        result: object_store::Result<Bytes>,
    ) -> Result<Option<Bytes>, StoreError> {
        match result {
            Ok(bytes) => Ok(Some(bytes)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.classify(op, key, e)),
        }
    }

    /// Writes `key`, replacing what was there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        self.put_with_mode(key, bytes.into(), PutMode::Overwrite)
            .await
            .map(|_| ())
    }

    /// Writes `key`, replacing what was there; returns the version written.
    pub async fn put_versioned(&self, key: &str, bytes: Bytes) -> Result<Version, StoreError> {
        match self
            .put_retried(key, bytes.into(), PutMode::Overwrite)
            .await
            .result
        {
            Ok(written) => Ok(written.into()),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// Writes `key` only if it still holds `version` (If-Match). Stores that
    /// ignore the condition (Garage) replace whatever is there: callers
    /// that must notice another writer read the object first as well.
    pub async fn replace_if_unchanged(
        &self,
        key: &str,
        bytes: Bytes,
        version: &Version,
    ) -> Result<Replaced, StoreError> {
        let mode = PutMode::Update(version.0.clone());
        match self.put_retried(key, bytes.into(), mode).await.result {
            Ok(written) => Ok(Replaced::Replaced(written.into())),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(Replaced::Changed),
            Err(object_store::Error::NotImplemented { .. }) => Ok(Replaced::Unsupported),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// Writes `key` from `parts`, one after the other, without copying
    /// them into one buffer first.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StoreError> {
        self.put_with_mode(key, parts.into_iter().collect(), PutMode::Overwrite)
            .await
            .map(|_| ())
    }

    /// Writes `key` only if no object is there (see [`Store::fencing`] for
    /// stores that ignore the condition). When an attempt failed and a later
    /// one finds the object, it is ours if it holds our bytes: the first
    /// attempt landed and only its reply was lost.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
        let (created, retried) = self
            .put_with_mode(key, bytes.clone().into(), PutMode::Create)
            .await?;
        let landed_before = created == Created::AlreadyExists
            && retried
            && self.get(key).await?.is_some_and(|found| found == bytes);
        Ok(if landed_before {
            Created::Created
        } else {
            created
        })
    }

    /// Writes `key` as `mode` says; also says whether an attempt failed.
    async fn put_with_mode(
        &self,
        key: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> Result<(Created, bool), StoreError> {
        let outcome = self.put_retried(key, payload, mode).await;
        match outcome.result {
            Ok(_) => Ok((Created::Created, outcome.retried)),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => Ok((Created::AlreadyExists, outcome.retried)),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// One PUT of `payload` to `key` as `mode` says, counted and retried.
    async fn put_retried(
        &self,
        key: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> retry::Outcome<PutResult> {
        let path = Path::from(key);
        let attempt = || {
            let options = PutOptions {
                mode: mode.clone(),
                ..PutOptions::default()
            };
            self.metrics.put(payload.content_length());
            self.inner.put_opts(&path, payload.clone(), options)
        };
        self.retrying("PUT", key, attempt).await
    }

    /// Deletes `key`; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let path = Path::from(key);
        let attempt = || {
            self.metrics.delete();
            self.inner.delete(&path)
        };
        match self.retrying("DELETE", key, attempt).await.result {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.classify("DELETE", key, e)),
        }
    }

    /// The names of the "directories" directly under `prefix`.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let path = Path::from(prefix);
        let attempt = || {
            self.metrics.list();
            self.inner.list_with_delimiter(Some(&path))
        };
        let listing = match self.retrying("LIST", prefix, attempt).await.result {
            Ok(listing) => listing,
            Err(object_store::Error::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.classify("LIST", prefix, e)),
        };
        let mut names: Vec<String> = listing
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every key under `prefix`, recursively.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let objects = self.list_objects(prefix).await?;
        Ok(objects.into_iter().map(|o| o.key).collect())
    }

    /// Every object under `prefix`, recursively, with its size and age.
    pub async fn list_objects(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let path = Path::from(prefix);
        let attempt = || {
            self.metrics.list();
            self.inner.list(Some(&path)).try_collect::<Vec<_>>()
        };
        match self.retrying("LIST", prefix, attempt).await.result {
            Ok(objects) => Ok(objects
                .into_iter()
                .map(|m| ObjectInfo {
                    key: m.location.to_string(),
                    size: m.size,
                    last_modified: m.last_modified.into(),
                })
                .collect()),
            Err(object_store::Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(self.classify("LIST", prefix, e)),
        }
    }

    /// One request under the retry policy, each retry counted and logged.
    async fn retrying<T, F, Fut>(
        &self,
        op: &'static str,
        key: &str,
        attempt: F,
    ) -> retry::Outcome<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = object_store::Result<T>>,
    {
        let on_retry = |error: &object_store::Error, wait| {
            if self.metrics.retry_should_warn() {
                tracing::warn!(store = %self.url, op, key, %error, "object store requests are failing; retrying with backoff (said at most every 10 s)");
            } else {
                tracing::debug!(store = %self.url, op, key, %error, ?wait, "store request failed; retrying");
            }
        };
        self.retry.run(attempt, on_retry).await
    }

    /// Whether this store enforces create-if-absent, probed once per handle
    /// with two conditional puts of one fresh key.
    pub async fn fencing(&self) -> Result<Fencing, StoreError> {
        self.fencing
            .get_or_try_init(|| async {
                let key = format!("probes/fencing-{}", uuid::Uuid::new_v4());
                let first = self.put_if_absent(&key, Bytes::from_static(b"1")).await?;
                let second = self.put_if_absent(&key, Bytes::from_static(b"2")).await?;
                self.delete(&key).await?;
                let fencing = match (first, second) {
                    (Created::Created, Created::AlreadyExists) => Fencing::Enforced,
                    _ => Fencing::Unsupported,
                };
                if fencing == Fencing::Unsupported {
                    tracing::warn!(
                        store = %self.url,
                        "this object store ignores conditional writes (If-None-Match): zeroblk cannot stop a second writer of a volume from overwriting the first's commits; attach each volume from one place only"
                    );
                }
                Ok(fencing)
            })
            .await
            .copied()
    }

    fn classify(&self, op: &'static str, key: &str, error: object_store::Error) -> StoreError {
        let store = self.url.to_string();
        let detail = root_cause(&error);
        let full = error.to_string();
        match error {
            _ if full.contains("169.254.169.254") => StoreError::NoCredentials { store },
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => StoreError::Denied { store, detail },
            _ if full.contains("NoSuchBucket") => StoreError::NoBucket { store },
            _ if looks_unreachable(&full) => StoreError::Unreachable { store, detail },
            _ if full.contains("InvalidAccessKeyId") || full.contains("SignatureDoesNotMatch") => {
                StoreError::Denied { store, detail }
            }
            source => StoreError::from_object_store(op, key, source),
        }
    }
}

/// The innermost error of a chain: what actually went wrong.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut cause = error;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    cause.to_string()
}

fn looks_unreachable(detail: &str) -> bool {
    [
        "error sending request",
        "Connection refused",
        "dns error",
        "timed out",
        "connect",
    ]
    .iter()
    .any(|needle| detail.contains(needle))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_store_basics_and_counters() {
        let store = Store::memory();
        assert_eq!(store.get("a/b").await.unwrap(), None);
        store
            .put("a/b", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(store.get("a/b").await.unwrap().unwrap(), "hello");
        let again = store
            .put_if_absent("a/b", Bytes::from_static(b"x"))
            .await
            .unwrap();
        assert_eq!(again, Created::AlreadyExists);
        assert_eq!(store.get("a/b").await.unwrap().unwrap(), "hello");
        assert_eq!(store.get_range("a/b", 1..4).await.unwrap().unwrap(), "ell");
        assert_eq!(store.get_range("a/c", 1..4).await.unwrap(), None);
        let short = store.get_range("a/b", 3..9).await.unwrap_err();
        assert!(
            matches!(short, StoreError::ShortRead { got: 2, .. }),
            "{short}"
        );
        store
            .put_parts(
                "a/p",
                vec![Bytes::from_static(b"he"), Bytes::from_static(b"y")],
            )
            .await
            .unwrap();
        assert_eq!(store.get("a/p").await.unwrap().unwrap(), "hey");
        store.delete("a/p").await.unwrap();
        assert_eq!(store.list_dirs("").await.unwrap(), vec!["a".to_string()]);
        store.delete("a/b").await.unwrap();
        store.delete("a/b").await.unwrap();
        let counters = store.counters();
        assert_eq!(counters.gets, 7);
        assert_eq!(counters.get_misses, 2);
        assert_eq!(counters.bytes_read, 18);
    }

    #[tokio::test]
    async fn local_directories_enforce_create_if_absent() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&url, &StoreOptions::default()).unwrap();
        assert_eq!(store.fencing().await.unwrap(), Fencing::Enforced);
        assert_eq!(Store::memory().fencing().await.unwrap(), Fencing::Enforced);
    }

    #[tokio::test]
    async fn a_conditional_replace_writes_only_over_the_version_given() {
        let store = Store::memory();
        let first = store
            .put_versioned("lease", Bytes::from_static(b"a1"))
            .await
            .unwrap();
        let Replaced::Replaced(second) = store
            .replace_if_unchanged("lease", Bytes::from_static(b"a2"), &first)
            .await
            .unwrap()
        else {
            panic!("the version given was the object's");
        };
        store.put("lease", Bytes::from_static(b"b1")).await.unwrap();
        assert_eq!(
            store
                .replace_if_unchanged("lease", Bytes::from_static(b"a3"), &second)
                .await
                .unwrap(),
            Replaced::Changed
        );
        assert_eq!(
            store.get("lease").await.unwrap().unwrap(),
            Bytes::from_static(b"b1"),
            "another writer's object stays"
        );
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let local = Store::open(&url, &StoreOptions::default()).unwrap();
        let version = local
            .put_versioned("lease", Bytes::from_static(b"a1"))
            .await
            .unwrap();
        assert_eq!(
            local
                .replace_if_unchanged("lease", Bytes::from_static(b"a2"), &version)
                .await
                .unwrap(),
            Replaced::Unsupported
        );
    }
}
