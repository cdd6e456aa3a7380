//! The object store: the only module that talks to `object_store`.
//!
//! [`Store`] is a handle on one bucket (or container, directory, or memory)
//! named by a URL. It speaks in keys and bytes: `get` (absent is `None`,
//! not an error; `get_at_most` refuses a huge object unread), `put`, the
//! conditional writes that fence a second writer (`put_if_absent`,
//! `create_versioned`, `replace_if_unchanged`), `delete`, and listings. Its
//! errors say what to fix for the kind of store it is ([`StoreError`],
//! `kind.rs`). It says plainly, once per store, whether the store honours
//! conditional writes: some S3 clones silently ignore them, and fencing
//! must not trust them blindly.
//!
//! Every request goes down a stack of object stores, each with one job:
//!
//! ```text
//! Store            keys, errors, the fencing probe, local replaces (local.rs)
//!  RetryingStore   a deadline per attempt, backoff with jitter (retry.rs);
//!                  bodies and listings read whole inside the attempt; a
//!                  conditional PUT whose reply was lost told apart from
//!                  someone else's object by its bytes (retrying.rs)
//!  CountingStore   each attempt counted, with its bytes (counting.rs,
//!                  metrics.rs): what `Store::counters` reports
//!  [FaultyStore]   failures injected, in tests only (faults.rs)
//!  backend         S3, GCS, Azure, a local directory (fsynced), or memory
//!                  (url.rs)
//! ```
//!
//! `with_faults` and `with_retry_policy` build the stack again over the
//! same backend and counters.

mod counting;
pub mod faults;
mod kind;
mod local;
mod metrics;
mod redact;
mod retry;
mod retrying;
mod url;

use std::fmt::Display;
use std::path::{Path as LocalPath, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{
    GetResult, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, PutResult,
    UpdateVersion,
};
use tokio::sync::OnceCell;

pub use kind::StoreKind;
pub use metrics::{KindCounters, RequestKind, StoreCounters};
pub use redact::redact_credentials;
pub use retry::RetryPolicy;
pub use url::{StoreOptions, StoreUrl};

use counting::CountingStore;
use faults::{Faults, FaultyStore};
use metrics::StoreMetrics;
use retrying::{ReadAtMost, RetryingStore};

/// A failed store operation, said so that a user knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("`{}` is not a store URL: {reason}", redact_credentials(url))]
    BadUrl { url: String, reason: String },
    #[error("cannot create the store directory {}: {source} (check the path and its permissions)", path.display())]
    LocalDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot reach the object store {store}: {}. {}",
        redact_credentials(detail),
        kind.unreachable_advice()
    )]
    Unreachable {
        store: String,
        detail: String,
        kind: StoreKind,
    },
    #[error(
        "the object store {store} refused the request: {}. {}",
        redact_credentials(detail),
        kind.denied_advice()
    )]
    Denied {
        store: String,
        detail: String,
        kind: StoreKind,
    },
    #[error("the bucket of {store} does not exist: {}", kind.no_bucket_advice())]
    NoBucket { store: String, kind: StoreKind },
    #[error(
        "no credentials for the object store {store}: {}",
        kind.credentials_advice()
    )]
    NoCredentials { store: String, kind: StoreKind },
    #[error(
        "the object store returned {got} bytes of {key} where {expected} were asked for: the object is shorter than the map says (run `zeroblk volume verify`)"
    )]
    ShortRead {
        key: String,
        expected: u64,
        got: u64,
    },
    #[error(
        "{key} is {size} bytes, more than such an object ever is ({max}): the bucket was changed outside zeroblk; restore the object from a backup"
    )]
    TooLarge { key: String, size: u64, max: u64 },
    #[error(
        "{store} holds a key zeroblk cannot list past, at or under `{key}` (an empty segment, `..` or a control character; zeroblk never writes such keys): remove that object from the bucket (or move it out of zeroblk's prefix) and run the command again"
    )]
    UnlistableKey { store: String, key: String },
    #[error("object store {op} of {key} failed: {}", redact_credentials(&source.to_string()))]
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

/// Whether the store refuses conditional writes whose condition fails:
/// a create-if-absent of an existing key, a replace of a stale version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fencing {
    /// Conditional writes work: a second writer cannot take a held lease,
    /// and is refused at its commit.
    Enforced,
    /// The store wrote over an existing object on a conditional write:
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

impl Version {
    /// The version `meta` describes.
    fn of(meta: &ObjectMeta) -> Version {
        Version(UpdateVersion {
            e_tag: meta.e_tag.clone(),
            version: meta.version.clone(),
        })
    }
}

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
    /// Somebody wrote or deleted the object since that version: nothing
    /// written. (An attempt of ours that landed, its reply lost, is told
    /// apart by its bytes and is `Replaced`: see `retrying.rs`.)
    Changed,
}

/// A handle on one object store; cheap to clone.
#[derive(Clone)]
pub struct Store {
    /// The top of the stack every request goes down (see the module's doc).
    requests: Arc<dyn ObjectStore>,
    /// The bottom of the stack (with faults, in tests), and what builds
    /// the stack on it again: its counters and retry policy.
    backend: Arc<dyn ObjectStore>,
    metrics: Arc<StoreMetrics>,
    retry: RetryPolicy,
    url: Arc<str>,
    /// What the URL names: what errors advise to check.
    kind: StoreKind,
    fencing: Arc<OnceCell<Fencing>>,
    /// The directory of a `file://` store, whose conditional replaces are
    /// emulated under a lock (see `local.rs`).
    local_root: Option<Arc<PathBuf>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("url", &self.url).finish()
    }
}

impl Store {
    /// Opens the store a URL names. No request is made yet.
    pub fn open(url: &str, options: &StoreOptions) -> Result<Store, StoreError> {
        let parsed = StoreUrl::parse(url)?;
        let backend = parsed.build(options)?;
        let retry = options
            .request_timeout
            .map_or_else(RetryPolicy::default, RetryPolicy::with_attempt_timeout);
        let mut store = Store::stacked(url.into(), parsed.kind(), backend, Arc::default(), retry);
        if let StoreUrl::File(root) = parsed {
            store.local_root = Some(Arc::new(root));
        }
        Ok(store)
    }

    /// A fresh, empty store in memory.
    pub fn memory() -> Store {
        let backend = Arc::new(object_store::memory::InMemory::new());
        Store::stacked(
            "memory://".into(),
            StoreKind::Memory,
            backend,
            Arc::default(),
            RetryPolicy::default(),
        )
    }

    /// A store whose requests go down a [`RetryingStore`] retrying as
    /// `retry` says and a [`CountingStore`] counting into `metrics` to
    /// `backend`.
    fn stacked(
        url: Arc<str>,
        kind: StoreKind,
        backend: Arc<dyn ObjectStore>,
        metrics: Arc<StoreMetrics>,
        retry: RetryPolicy,
    ) -> Store {
        let counting = CountingStore::new(Arc::clone(&backend), Arc::clone(&metrics));
        let retrying = RetryingStore::new(
            Arc::new(counting),
            retry,
            Arc::clone(&metrics),
            Arc::clone(&url),
        );
        Store {
            requests: Arc::new(retrying),
            backend,
            metrics,
            retry,
            url,
            kind,
            fencing: Arc::default(),
            local_root: None,
        }
    }

    /// This store with its requests failing as `faults` says, under the
    /// same counters, retries and deadlines (for tests).
    pub fn with_faults(&self, faults: Faults) -> Store {
        let faulty = Arc::new(FaultyStore::new(Arc::clone(&self.backend), faults));
        let metrics = Arc::clone(&self.metrics);
        let url = Arc::clone(&self.url);
        let stacked = Store::stacked(url, self.kind, faulty, metrics, self.retry);
        Store {
            local_root: self.local_root.clone(),
            ..stacked
        }
    }

    /// This store, retrying as `policy` says.
    pub fn with_retry_policy(self, policy: RetryPolicy) -> Store {
        let stacked = Store::stacked(self.url, self.kind, self.backend, self.metrics, policy);
        Store {
            fencing: self.fencing,
            local_root: self.local_root,
            ..stacked
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn counters(&self) -> StoreCounters {
        self.metrics.snapshot()
    }

    /// Each kind of request's count, failures and latencies.
    pub fn request_kinds(&self) -> Vec<KindCounters> {
        self.metrics.kinds()
    }

    /// The object at `key`, or `None` when there is none.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, StoreError> {
        let got = self.requests.get(&Path::from(key)).await;
        match self.found("GET", key, got)? {
            Some(reply) => self.body(key, reply).await.map(Some),
            None => Ok(None),
        }
    }

    /// The size of the object at `key`, or `None` when there is none (a
    /// HEAD request: no bytes are read).
    pub async fn size_of(&self, key: &str) -> Result<Option<u64>, StoreError> {
        let found = self.requests.head(&Path::from(key)).await;
        Ok(self.found("HEAD", key, found)?.map(|meta| meta.size))
    }

    /// The object at `key`, or `None`; one larger than `max` bytes is
    /// refused before its bytes are read (objects from the bucket are
    /// untrusted: a huge one must not exhaust memory).
    pub async fn get_at_most(&self, key: &str, max: u64) -> Result<Option<Bytes>, StoreError> {
        let options = ReadAtMost(max).options();
        let got = self.requests.get_opts(&Path::from(key), options).await;
        let Some(reply) = self.found("GET", key, got)? else {
            return Ok(None);
        };
        if reply.meta.size > max {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size: reply.meta.size,
                max,
            });
        }
        self.body(key, reply).await.map(Some)
    }

    /// Bytes `range` of the object at `key`, or `None` when there is no
    /// such object. A range past the object's end is an error.
    pub async fn get_range(
        &self,
        key: &str,
        range: std::ops::Range<u64>,
    ) -> Result<Option<Bytes>, StoreError> {
        let got = self
            .requests
            .get_range(&Path::from(key), range.clone())
            .await;
        match self.found("GET", key, got)? {
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

    /// The object at `key` and the version it is, or `None` when there is
    /// none.
    pub async fn get_versioned(&self, key: &str) -> Result<Option<(Bytes, Version)>, StoreError> {
        let got = self.requests.get(&Path::from(key)).await;
        let Some(reply) = self.found("GET", key, got)? else {
            return Ok(None);
        };
        let version = Version::of(&reply.meta);
        Ok(Some((self.body(key, reply).await?, version)))
    }

    /// [`Store::get_versioned`] of an object no larger than `max` bytes
    /// (see [`Store::get_at_most`]).
    pub async fn get_versioned_at_most(
        &self,
        key: &str,
        max: u64,
    ) -> Result<Option<(Bytes, Version)>, StoreError> {
        let options = ReadAtMost(max).options();
        let got = self.requests.get_opts(&Path::from(key), options).await;
        let Some(reply) = self.found("GET", key, got)? else {
            return Ok(None);
        };
        if reply.meta.size > max {
            return Err(StoreError::TooLarge {
                key: key.to_string(),
                size: reply.meta.size,
                max,
            });
        }
        let version = Version::of(&reply.meta);
        Ok(Some((self.body(key, reply).await?, version)))
    }

    /// What a request answered: not found is `None`, not an error.
    fn found<T>(
        &self,
        op: &'static str,
        key: &str,
        result: object_store::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        match result {
            Ok(found) => Ok(Some(found)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.classify(op, key, e)),
        }
    }

    /// The body of a GET's reply (in memory already: the retries read it).
    async fn body(&self, key: &str, reply: GetResult) -> Result<Bytes, StoreError> {
        let body = reply.bytes().await;
        body.map_err(|e| self.classify("GET", key, e))
    }

    /// Writes `key`, replacing what was there.
    pub async fn put(&self, key: &str, bytes: Bytes) -> Result<(), StoreError> {
        let written = self.put_as(key, bytes.into(), PutMode::Overwrite).await;
        written.map(drop).map_err(|e| self.classify("PUT", key, e))
    }

    /// Writes `key` from `parts`, one after the other, without copying
    /// them into one buffer first.
    pub async fn put_parts(&self, key: &str, parts: Vec<Bytes>) -> Result<(), StoreError> {
        let payload = parts.into_iter().collect();
        let written = self.put_as(key, payload, PutMode::Overwrite).await;
        written.map(drop).map_err(|e| self.classify("PUT", key, e))
    }

    /// Writes `key`, replacing what was there, in storage class `class`
    /// (S3's `x-amz-storage-class`, GCS's class, Azure's access tier).
    /// A local directory has no classes: it refuses one.
    pub async fn put_in_class(
        &self,
        key: &str,
        bytes: Bytes,
        class: &str,
    ) -> Result<(), StoreError> {
        let mut options = PutOptions::from(PutMode::Overwrite);
        options.attributes.insert(
            object_store::Attribute::StorageClass,
            class.to_string().into(),
        );
        let written = self
            .requests
            .put_opts(&Path::from(key), bytes.into(), options)
            .await;
        written.map(drop).map_err(|e| self.classify("PUT", key, e))
    }

    /// Writes `key` only if no object is there (see [`Store::fencing`] for
    /// stores that ignore the condition). A create whose reply was lost is
    /// still ours: the retries tell it apart by its bytes.
    pub async fn put_if_absent(&self, key: &str, bytes: Bytes) -> Result<Created, StoreError> {
        match self.put_as(key, bytes.into(), PutMode::Create).await {
            Ok(_) => Ok(Created::Created),
            Err(e) if exists(&e) => Ok(Created::AlreadyExists),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// Writes `key` only if no object is there; returns the version
    /// written, or `None` when an object was there (see [`Store::fencing`]
    /// for stores that ignore the condition).
    pub async fn create_versioned(
        &self,
        key: &str,
        bytes: Bytes,
    ) -> Result<Option<Version>, StoreError> {
        match self.put_as(key, bytes.into(), PutMode::Create).await {
            Ok(written) => Ok(Some(written.into())),
            Err(e) if exists(&e) => Ok(None),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// Writes `key` only if it still holds `version` (If-Match). Stores that
    /// ignore the condition (Garage) replace whatever is there:
    /// [`Store::fencing`] says which do. A local directory, which cannot
    /// replace conditionally, does it under a lock (see `local.rs`).
    pub async fn replace_if_unchanged(
        &self,
        key: &str,
        bytes: Bytes,
        version: &Version,
    ) -> Result<Replaced, StoreError> {
        if self.local_root.is_some() {
            return self.replace_locally(key, bytes, version).await;
        }
        let mode = PutMode::Update(version.0.clone());
        match self.put_as(key, bytes.into(), mode).await {
            Ok(written) => Ok(Replaced::Replaced(written.into())),
            Err(
                object_store::Error::Precondition { .. } | object_store::Error::NotFound { .. },
            ) => Ok(Replaced::Changed),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// [`Store::replace_if_unchanged`] for a local directory.
    async fn replace_locally(
        &self,
        key: &str,
        bytes: Bytes,
        version: &Version,
    ) -> Result<Replaced, StoreError> {
        let root = self.local_root.as_deref().expect("a local store");
        let _lock = local::lock(root)
            .await
            .map_err(|source| StoreError::LocalDir {
                path: LocalPath::new(root.as_path()).to_path_buf(),
                source,
            })?;
        if self.head_version(key).await?.as_ref() != Some(version) {
            return Ok(Replaced::Changed);
        }
        match self.put_as(key, bytes.into(), PutMode::Overwrite).await {
            Ok(written) => Ok(Replaced::Replaced(written.into())),
            Err(e) => Err(self.classify("PUT", key, e)),
        }
    }

    /// The version of the object at `key`, if there is one.
    async fn head_version(&self, key: &str) -> Result<Option<Version>, StoreError> {
        let got = self.requests.head(&Path::from(key)).await;
        Ok(self.found("HEAD", key, got)?.map(|meta| Version::of(&meta)))
    }

    /// Writes `key` as `mode` says.
    async fn put_as(
        &self,
        key: &str,
        payload: PutPayload,
        mode: PutMode,
    ) -> object_store::Result<PutResult> {
        let options = PutOptions::from(mode);
        self.requests
            .put_opts(&Path::from(key), payload, options)
            .await
    }

    /// Deletes `key`; deleting what is not there is not an error.
    pub async fn delete(&self, key: &str) -> Result<(), StoreError> {
        let deleted = self.requests.delete(&Path::from(key)).await;
        self.found("DELETE", key, deleted).map(drop)
    }

    /// The names of the "directories" directly under `prefix`.
    pub async fn list_dirs(&self, prefix: &str) -> Result<Vec<String>, StoreError> {
        let listed = self
            .requests
            .list_with_delimiter(Some(&Path::from(prefix)))
            .await;
        let Some(listing) = self.found("LIST", prefix, listed)? else {
            return Ok(Vec::new());
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
        let listing = self.requests.list(Some(&Path::from(prefix)));
        let listed = listing.try_collect::<Vec<_>>().await;
        let objects = self.found("LIST", prefix, listed)?.unwrap_or_default();
        Ok(objects
            .into_iter()
            .map(|m| ObjectInfo {
                key: m.location.to_string(),
                size: m.size,
                last_modified: m.last_modified.into(),
            })
            .collect())
    }

    /// Whether this store enforces conditional writes, probed once per
    /// handle on a fresh key: a second create-if-absent must be refused,
    /// and so must a replace of a version that is not the object's any
    /// more (If-Match).
    pub async fn fencing(&self) -> Result<Fencing, StoreError> {
        self.fencing
            .get_or_try_init(|| async {
                let key = format!("probes/fencing-{}", uuid::Uuid::new_v4());
                let enforced = self.conditions_hold(&key).await;
                self.delete(&key).await?;
                let fencing = match enforced? {
                    true => Fencing::Enforced,
                    false => Fencing::Unsupported,
                };
                if fencing == Fencing::Unsupported {
                    tracing::warn!(
                        store = %self.url,
                        "this object store ignores conditional writes (If-None-Match, If-Match): zeroblk cannot stop a second writer of a volume from overwriting the first's commits or lease; attach each volume from one place only, and take one over with --force only when its old writer is surely gone"
                    );
                }
                Ok(fencing)
            })
            .await
            .copied()
    }

    /// Whether conditional creates and replaces of `key` are refused when
    /// their condition does not hold.
    async fn conditions_hold(&self, key: &str) -> Result<bool, StoreError> {
        let Some(first) = self.create_versioned(key, Bytes::from_static(b"1")).await? else {
            return Ok(false);
        };
        let created_twice = self
            .create_versioned(key, Bytes::from_static(b"2"))
            .await?
            .is_some();
        let replaced = self
            .replace_if_unchanged(key, Bytes::from_static(b"3"), &first)
            .await?;
        let stale_replaced = self
            .replace_if_unchanged(key, Bytes::from_static(b"4"), &first)
            .await?;
        Ok(!created_twice
            && matches!(replaced, Replaced::Replaced(_))
            && stale_replaced == Replaced::Changed)
    }

    fn classify(&self, op: &'static str, key: &str, error: object_store::Error) -> StoreError {
        let store = self.url.to_string();
        let kind = self.kind;
        let detail = root_cause(&error);
        let full = error.to_string();
        match error {
            // The cloud instance's metadata service, asked for credentials
            // when none were set (AWS, GCS and Azure all have one there).
            _ if full.contains("169.254.169.254") => StoreError::NoCredentials { store, kind },
            object_store::Error::Unauthenticated { .. }
            | object_store::Error::PermissionDenied { .. } => StoreError::Denied {
                store,
                detail,
                kind,
            },
            _ if full.contains("NoSuchBucket") || full.contains("ContainerNotFound") => {
                StoreError::NoBucket { store, kind }
            }
            _ if looks_unreachable(&full) => StoreError::Unreachable {
                store,
                detail,
                kind,
            },
            _ if let Some(key) = unlistable_key(&error) => StoreError::UnlistableKey { store, key },
            _ if full.contains("InvalidAccessKeyId") || full.contains("SignatureDoesNotMatch") => {
                StoreError::Denied {
                    store,
                    detail,
                    kind,
                }
            }
            source => StoreError::from_object_store(op, key, source),
        }
    }
}

/// Whether a conditional create was refused: an object is there.
fn exists(error: &object_store::Error) -> bool {
    matches!(
        error,
        object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }
    )
}

/// The innermost error of a chain: what actually went wrong.
/// The key (or the prefix of keys) a listing met that object_store
/// refuses as a path, shown escaped: it comes from the bucket, and may
/// hold escape sequences.
fn unlistable_key(error: &object_store::Error) -> Option<String> {
    use object_store::path::Error as PathError;
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(error) = cause {
        if let Some(refused) = error.downcast_ref::<PathError>() {
            return match refused {
                PathError::EmptySegment { path }
                | PathError::BadSegment { path, .. }
                | PathError::NonUnicode { path, .. } => Some(
                    path.chars()
                        .take(255)
                        .flat_map(char::escape_debug)
                        .collect(),
                ),
                _ => None,
            };
        }
        cause = error.source();
    }
    None
}

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
    use faults::Fault;
    use std::time::Duration;

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

    /// Faults go under the counting, so each failed attempt is a request;
    /// the counters are the original store's; a retry policy given later
    /// keeps the faults.
    #[tokio::test]
    async fn faults_and_retry_policies_stack_under_the_same_counters() {
        let store = Store::memory();
        let faults = Faults::new(3, Duration::from_secs(60), Duration::ZERO);
        let faulty = store.with_faults(faults.clone());
        faults.script(&[Some(Fault::ServerError), Some(Fault::Reset)]);
        faulty.put("k", Bytes::from_static(b"abc")).await.unwrap();
        let counters = store.counters();
        assert_eq!((counters.puts, counters.retries), (3, 2));
        assert_eq!(counters.bytes_written, 9);

        let impatient = RetryPolicy {
            min_attempts: 1,
            max_attempts: 1,
            ..RetryPolicy::default()
        };
        let once = faulty.with_retry_policy(impatient);
        faults.script(&[Some(Fault::SlowDown)]);
        let failed = once.get("k").await.unwrap_err();
        assert!(failed.is_transient(), "{failed}");
        assert_eq!(faults.injected(Fault::SlowDown), 1);
        assert_eq!(store.counters().gets, 1);
        // And faults given later keep the policy.
        let once = Store::memory().with_retry_policy(impatient);
        let faults = Faults::new(3, Duration::from_secs(60), Duration::ZERO);
        faults.script(&[Some(Fault::ServerError)]);
        let failed = once.with_faults(faults).get("k").await.unwrap_err();
        assert!(failed.is_transient(), "{failed}");
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
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let local = Store::open(&url, &StoreOptions::default()).unwrap();
        for store in [Store::memory(), local] {
            let first = store
                .create_versioned("lease", Bytes::from_static(b"a1"))
                .await
                .unwrap()
                .expect("created");
            assert_eq!(
                store
                    .create_versioned("lease", Bytes::from_static(b"x"))
                    .await
                    .unwrap(),
                None,
                "{store:?}: created only if absent"
            );
            let Replaced::Replaced(second) = store
                .replace_if_unchanged("lease", Bytes::from_static(b"a2"), &first)
                .await
                .unwrap()
            else {
                panic!("{store:?}: the version given was the object's");
            };
            let (read, read_version) = store.get_versioned("lease").await.unwrap().unwrap();
            assert_eq!((read, &read_version), (Bytes::from_static(b"a2"), &second));
            store.put("lease", Bytes::from_static(b"b1")).await.unwrap();
            assert_eq!(
                store
                    .replace_if_unchanged("lease", Bytes::from_static(b"a3"), &second)
                    .await
                    .unwrap(),
                Replaced::Changed,
                "{store:?}"
            );
            assert_eq!(
                store.get("lease").await.unwrap().unwrap(),
                Bytes::from_static(b"b1"),
                "{store:?}: another writer's object stays"
            );
        }
    }

    /// A conditional replace whose first attempt landed and lost its reply
    /// is ours: the retry finds the version moved, and the object holding
    /// our bytes. Before, it said `Changed`, and `volume rekey` told its
    /// user nothing was written (run it again) when the superblock already
    /// took the new password.
    #[tokio::test]
    async fn a_conditional_replace_whose_reply_was_lost_is_ours() {
        let faults = Faults::new(7, Duration::from_secs(60), Duration::ZERO);
        let store = Store::memory().with_faults(faults.clone());
        let first = store
            .create_versioned("lease", Bytes::from_static(b"a1"))
            .await
            .unwrap()
            .expect("created");
        faults.script(&[Some(Fault::LostReply)]);
        let replaced = store
            .replace_if_unchanged("lease", Bytes::from_static(b"a2"), &first)
            .await
            .unwrap();
        assert_eq!(faults.injected(Fault::LostReply), 1);
        let Replaced::Replaced(second) = replaced else {
            panic!("our own replace, its reply lost, read as someone else's");
        };
        let (_, current) = store.get_versioned("lease").await.unwrap().unwrap();
        assert_eq!(second, current, "the version our bytes have");
        // Someone else's replace is still someone else's.
        store.put("lease", Bytes::from_static(b"b1")).await.unwrap();
        faults.script(&[Some(Fault::LostReply)]);
        let theirs = store
            .replace_if_unchanged("lease", Bytes::from_static(b"a3"), &first)
            .await
            .unwrap();
        assert!(matches!(theirs, Replaced::Changed));
    }
}
