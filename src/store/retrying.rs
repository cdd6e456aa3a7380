//! Retrying every request a store makes, under one [`RetryPolicy`].
//!
//! [`RetryingStore`] wraps an object store and runs each request under
//! the policy (`retry.rs`): a deadline per attempt, and backoff with
//! jitter after a failure that may pass. An attempt is the whole request:
//! a GET's body is read to its end inside it, so a body that stalls or
//! breaks off midway is tried again, and the GET comes back in memory; a
//! listing is collected inside it, and comes back as a stream over what
//! was collected. Each location of a delete is its own retried request.
//!
//! A conditional PUT (create-if-absent, or replace-if-version) may find,
//! when it is tried again, that an earlier attempt of its own landed: the
//! attempt failed after the store took it (its reply lost, its deadline
//! passed). The retry is then refused as if someone else had written. So a
//! refusal after a failed attempt reads the object back: if it holds
//! exactly the bytes sent, the PUT was ours, and it succeeds with the
//! version read back; otherwise the refusal stands. A refusal of the first
//! attempt is final at once, without a read-back: nothing of ours could
//! have landed. The volume's lease and its commits are fenced by these
//! refusals.
//!
//! Forwarded as they are, once, because no retry of them is safe:
//! multipart uploads (their parts and completion belong to one upload),
//! renames (a copy then a delete: a retry after the delete landed finds
//! nothing to rename) and copy-if-absent (a retry after the first attempt
//! landed would be refused, and nothing tells the copy apart as ours).
//!
//! Retries are counted, and warned of at most every 10 s; the others are
//! logged at debug level.

use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyMode, CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload,
    ObjectMeta, ObjectStore, ObjectStoreExt, PutMode, PutMultipartOptions, PutOptions, PutPayload,
    PutResult, RenameOptions,
};

use super::metrics::StoreMetrics;
use super::retry::{Outcome, RetryPolicy};

/// Asks a [`RetryingStore`] not to read the body of an object larger than
/// this many bytes (in [`GetOptions::extensions`]): the reply comes back
/// with its body unread, for the caller to refuse. Objects from the bucket
/// are untrusted: a huge one must not exhaust memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ReadAtMost(pub u64);

impl ReadAtMost {
    /// GET options that carry this limit.
    pub(super) fn options(self) -> GetOptions {
        let mut options = GetOptions::default();
        options.extensions.insert(self);
        options
    }
}

/// An object store that retries another's requests.
#[derive(Debug, Clone)]
pub(super) struct RetryingStore {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
    /// Where retries are counted, and how often they were warned of.
    metrics: Arc<StoreMetrics>,
    /// The store's URL, for the log.
    url: Arc<str>,
}

impl RetryingStore {
    pub(super) fn new(
        inner: Arc<dyn ObjectStore>,
        policy: RetryPolicy,
        metrics: Arc<StoreMetrics>,
        url: Arc<str>,
    ) -> RetryingStore {
        RetryingStore {
            inner,
            policy,
            metrics,
            url,
        }
    }

    /// One request under the policy, each retry counted and logged.
    async fn retried<T, F, Fut>(&self, op: &'static str, key: &Path, attempt: F) -> Outcome<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let on_retry = |error: &object_store::Error, wait| self.tell_retry(op, key, error, wait);
        self.policy.run(attempt, on_retry).await
    }

    fn tell_retry(&self, op: &str, key: &Path, error: &object_store::Error, wait: Duration) {
        let store = &*self.url;
        // Its request URL may carry a signature (an Azure SAS token).
        let error = super::redact_credentials(&error.to_string());
        if self.metrics.retry_should_warn() {
            tracing::warn!(store, op, %key, %error, "object store requests are failing; retrying with backoff (said at most every 10 s)");
        } else {
            tracing::debug!(store, op, %key, %error, ?wait, "store request failed; retrying");
        }
    }

    /// After a conditional PUT of `payload` was refused on a retry: the
    /// version of the object if it holds exactly `payload` (an earlier
    /// attempt of ours landed), else `refusal`.
    async fn ours_or(
        &self,
        location: &Path,
        payload: &PutPayload,
        refusal: object_store::Error,
    ) -> object_store::Result<PutResult> {
        match self.read_back(location, payload).await? {
            Some(ours) => Ok(ours),
            None => Err(refusal),
        }
    }

    /// The version of the object at `location` if it holds exactly
    /// `payload`; an object of another size is not read.
    async fn read_back(
        &self,
        location: &Path,
        payload: &PutPayload,
    ) -> object_store::Result<Option<PutResult>> {
        let sent = payload.content_length() as u64;
        let found = match self.get_opts(location, ReadAtMost(sent).options()).await {
            Ok(found) if found.meta.size == sent => found,
            Ok(_) | Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(error) => return Err(error),
        };
        let version = PutResult {
            e_tag: found.meta.e_tag.clone(),
            version: found.meta.version.clone(),
            extensions: Default::default(),
        };
        let bytes = found.bytes().await?;
        Ok(holds_exactly(&bytes, payload).then_some(version))
    }

    /// One location deleted, retried.
    async fn delete_one(&self, location: Path) -> object_store::Result<Path> {
        let attempt = || self.inner.delete(&location);
        self.retried("DELETE", &location, attempt).await.result?;
        Ok(location)
    }

    /// A listing from `list`, collected whole in each attempt.
    fn collected(
        &self,
        prefix: Option<&Path>,
        list: impl Fn(
            &dyn ObjectStore,
            Option<&Path>,
        ) -> BoxStream<'static, object_store::Result<ObjectMeta>>
        + Send
        + Sync
        + 'static,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let (this, prefix) = (self.clone(), prefix.cloned());
        let listing = async move {
            let key = prefix.clone().unwrap_or_default();
            let attempt = || list(&*this.inner, prefix.as_ref()).try_collect::<Vec<_>>();
            this.retried("LIST", &key, attempt).await.result
        };
        futures::stream::once(listing)
            .map_ok(|all| futures::stream::iter(all.into_iter().map(Ok)))
            .try_flatten()
            .boxed()
    }
}

/// Whether `error` is `mode`'s condition refused: what the retry of an
/// attempt of ours that landed gets.
fn refused(mode: &PutMode, error: &object_store::Error) -> bool {
    use object_store::Error::*;
    match error {
        AlreadyExists { .. } | Precondition { .. } => !matches!(mode, PutMode::Overwrite),
        NotFound { .. } => matches!(mode, PutMode::Update(_)),
        _ => false,
    }
}

/// Whether `found` is exactly the bytes of `payload`.
fn holds_exactly(found: &[u8], payload: &PutPayload) -> bool {
    let mut rest = found;
    for part in payload {
        match rest.strip_prefix(part.as_ref()) {
            Some(after) => rest = after,
            None => return false,
        }
    }
    rest.is_empty()
}

/// `reply` with its body read into memory; a HEAD's (none to read) and
/// one larger than the [`ReadAtMost`] in `options` are left unread.
async fn in_memory(mut reply: GetResult, options: &GetOptions) -> object_store::Result<GetResult> {
    let limit = options.extensions.get::<ReadAtMost>();
    if options.head || limit.is_some_and(|max| reply.meta.size > max.0) {
        return Ok(reply);
    }
    let (meta, range) = (reply.meta.clone(), reply.range.clone());
    let attributes = std::mem::take(&mut reply.attributes);
    let extensions = std::mem::take(&mut reply.extensions);
    let body = whole_body(reply).await?;
    Ok(GetResult {
        payload: GetResultPayload::Stream(futures::stream::once(async { Ok(body) }).boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

/// The whole body of `reply`. object_store's `GetResult::bytes` polls a
/// body stream once more after it ended, which the S3 client's stream of
/// an empty object panics on; fused, it answers that it ended again.
pub(super) async fn whole_body(reply: GetResult) -> object_store::Result<Bytes> {
    if !matches!(reply.payload, GetResultPayload::Stream(_)) {
        return reply.bytes().await;
    }
    let mut chunks: Vec<Bytes> = reply.into_stream().fuse().try_collect().await?;
    Ok(match chunks.len() {
        1 => chunks.pop().expect("one chunk"),
        _ => chunks.concat().into(),
    })
}

impl fmt::Display for RetryingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "retrying({})", self.inner)
    }
}

/// Every method is forwarded, retried where it is safe: a default method
/// would reach the inner store by way of this one's, or not at all.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for RetryingStore {
    /// Retried; a conditional PUT refused after a failed attempt is ours
    /// if the object holds exactly `payload` (see the module's doc).
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mode = opts.mode.clone();
        let attempt = || self.inner.put_opts(location, payload.clone(), opts.clone());
        let outcome = self.retried("PUT", location, attempt).await;
        match outcome.result {
            Err(refusal) if outcome.retried && refused(&mode, &refusal) => {
                self.ours_or(location, &payload, refusal).await
            }
            result => result,
        }
    }

    /// Not retried: an upload's parts and completion belong to it.
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    /// Retried with the body read whole in each attempt; the reply comes
    /// back in memory.
    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let op = if options.head { "HEAD" } else { "GET" };
        let attempt = || async {
            let reply = self.inner.get_opts(location, options.clone()).await?;
            in_memory(reply, &options).await
        };
        self.retried(op, location, attempt).await.result
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        let attempt = || self.inner.get_ranges(location, ranges);
        self.retried("GET", location, attempt).await.result
    }

    /// Each location deleted as a request of its own, retried.
    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let this = self.clone();
        locations
            .and_then(move |location| {
                let this = this.clone();
                async move { this.delete_one(location).await }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.collected(prefix, |inner, prefix| inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let offset = offset.clone();
        self.collected(prefix, move |inner, prefix| {
            inner.list_with_offset(prefix, &offset)
        })
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let key = prefix.cloned().unwrap_or_default();
        let attempt = || self.inner.list_with_delimiter(prefix);
        self.retried("LIST", &key, attempt).await.result
    }

    /// Retried when it overwrites; a copy-if-absent is not (see the
    /// module's doc).
    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        if options.mode == CopyMode::Create {
            return self.inner.copy_opts(from, to, options).await;
        }
        let attempt = || self.inner.copy_opts(from, to, options.clone());
        self.retried("COPY", to, attempt).await.result
    }

    /// Not retried: a copy then a delete.
    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreCounters;
    use crate::store::counting::CountingStore;
    use crate::store::faults::{Fault, Faults, FaultyStore};
    use object_store::memory::InMemory;
    use object_store::{Error, UpdateVersion};

    /// The S3 client's body stream of an empty object panics when polled
    /// after it ended, as object_store's `bytes()` does (a red team's
    /// empty `head` panicked every command that read it).
    #[tokio::test]
    async fn an_empty_body_that_must_not_be_polled_again_reads_as_empty() {
        // An unfold panics when polled after it ended, as S3's stream does.
        let ended_once =
            futures::stream::unfold((), |()| async { None::<(object_store::Result<Bytes>, ())> });
        let reply = |payload| GetResult {
            payload,
            meta: object_store::ObjectMeta {
                location: Path::from("volumes/v/head"),
                last_modified: chrono::Utc::now(),
                size: 0,
                e_tag: None,
                version: None,
            },
            range: 0..0,
            attributes: Default::default(),
            extensions: Default::default(),
        };
        let body = whole_body(reply(GetResultPayload::Stream(ended_once.boxed())))
            .await
            .unwrap();
        assert!(body.is_empty());
        let pieces = futures::stream::iter([Ok(Bytes::from("ab")), Ok(Bytes::from("cd"))]);
        let body = whole_body(reply(GetResultPayload::Stream(pieces.boxed())))
            .await
            .unwrap();
        assert_eq!(body, "abcd");
    }

    /// A retrying store over a counting one over a faulty one over
    /// memory, as a `Store` stacks them; the memory beneath, to write
    /// around the stack as another writer would; and the counters.
    struct Stack {
        store: RetryingStore,
        faults: Faults,
        memory: Arc<InMemory>,
        metrics: Arc<StoreMetrics>,
    }

    fn stack() -> Stack {
        let faults = Faults::new(5, Duration::from_secs(60), Duration::ZERO);
        let memory = Arc::new(InMemory::new());
        let faulty = FaultyStore::new(memory.clone(), faults.clone());
        let metrics = Arc::new(StoreMetrics::default());
        let counting = CountingStore::new(Arc::new(faulty), Arc::clone(&metrics));
        let policy = RetryPolicy {
            attempt_timeout: Duration::from_millis(200),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        };
        let store = RetryingStore::new(
            Arc::new(counting),
            policy,
            Arc::clone(&metrics),
            "memory://".into(),
        );
        Stack {
            store,
            faults,
            memory,
            metrics,
        }
    }

    impl Stack {
        fn counters(&self) -> StoreCounters {
            self.metrics.snapshot()
        }

        /// Writes `key` beneath the stack, as another writer.
        async fn theirs(&self, key: &Path, bytes: &'static str) -> UpdateVersion {
            self.memory.put(key, bytes.into()).await.unwrap().into()
        }

        async fn current(&self, key: &Path) -> ObjectMeta {
            self.memory.head(key).await.unwrap()
        }

        async fn create(&self, key: &Path, bytes: &'static str) -> object_store::Result<PutResult> {
            let create = PutOptions::from(PutMode::Create);
            self.store.put_opts(key, bytes.into(), create).await
        }

        async fn update(
            &self,
            key: &Path,
            bytes: &'static str,
            version: &UpdateVersion,
        ) -> object_store::Result<PutResult> {
            let update = PutOptions::from(PutMode::Update(version.clone()));
            self.store.put_opts(key, bytes.into(), update).await
        }
    }

    /// An update's refusal when the object is gone: S3 says not found,
    /// memory a failed precondition.
    fn is_gone(refusal: &Error) -> bool {
        matches!(refusal, Error::NotFound { .. } | Error::Precondition { .. })
    }

    fn same_version(written: &PutResult, meta: &ObjectMeta) -> bool {
        (&written.e_tag, &written.version) == (&meta.e_tag, &meta.version)
    }

    #[tokio::test]
    async fn a_create_whose_first_reply_was_lost_is_ours() {
        let stack = stack();
        let key = Path::from("lease");
        stack.faults.script(&[Some(Fault::LostReply)]);
        let written = stack.create(&key, "ours").await.expect("our own create");
        assert_eq!(stack.faults.injected(Fault::LostReply), 1);
        assert!(same_version(&written, &stack.current(&key).await));
        assert_eq!((stack.counters().puts, stack.counters().gets), (2, 1));
    }

    /// Nothing of ours can be there when the first attempt is refused:
    /// the refusal stands even over our very bytes, and nothing is read.
    #[tokio::test]
    async fn a_create_refused_at_its_first_attempt_is_refused_without_a_read_back() {
        let stack = stack();
        let key = Path::from("lease");
        stack.theirs(&key, "same").await;
        let refused = stack.create(&key, "same").await.unwrap_err();
        assert!(matches!(refused, Error::AlreadyExists { .. }), "{refused}");
        assert_eq!((stack.counters().puts, stack.counters().gets), (1, 0));
    }

    #[tokio::test]
    async fn a_retried_create_that_finds_someone_elses_bytes_is_refused() {
        let stack = stack();
        let key = Path::from("lease");
        stack.theirs(&key, "their").await;
        stack.faults.script(&[Some(Fault::ServerError)]);
        let refused = stack.create(&key, "ours!").await.unwrap_err();
        assert!(matches!(refused, Error::AlreadyExists { .. }), "{refused}");
        assert_eq!(stack.counters().gets, 1, "read back, and not ours");
        // Longer than ours: not even read.
        stack.theirs(&key, "their longer object").await;
        stack.faults.script(&[Some(Fault::Reset)]);
        let refused = stack.create(&key, "ours!").await.unwrap_err();
        assert!(matches!(refused, Error::AlreadyExists { .. }), "{refused}");
        assert_eq!(stack.counters().bytes_read, 5, "the first read-back only");
    }

    #[tokio::test]
    async fn an_update_whose_first_reply_was_lost_is_ours() {
        let stack = stack();
        let key = Path::from("lease");
        let first = stack.theirs(&key, "a1").await;
        stack.faults.script(&[Some(Fault::LostReply)]);
        let written = stack.update(&key, "a2", &first).await.expect("ours");
        assert!(same_version(&written, &stack.current(&key).await));
        assert_eq!((stack.counters().puts, stack.counters().gets), (2, 1));
    }

    #[tokio::test]
    async fn an_update_refused_at_its_first_attempt_is_refused_without_a_read_back() {
        let stack = stack();
        let key = Path::from("lease");
        let first = stack.theirs(&key, "a1").await;
        stack.theirs(&key, "a2").await;
        let refused = stack.update(&key, "a2", &first).await.unwrap_err();
        assert!(matches!(refused, Error::Precondition { .. }), "{refused}");
        stack.memory.delete(&key).await.unwrap();
        let refused = stack.update(&key, "a2", &first).await.unwrap_err();
        assert!(is_gone(&refused), "{refused}");
        assert_eq!((stack.counters().puts, stack.counters().gets), (2, 0));
    }

    #[tokio::test]
    async fn a_retried_update_that_finds_someone_elses_bytes_is_refused() {
        let stack = stack();
        let key = Path::from("lease");
        let first = stack.theirs(&key, "a1").await;
        stack.theirs(&key, "b2").await;
        stack.faults.script(&[Some(Fault::SlowDown)]);
        let refused = stack.update(&key, "a2", &first).await.unwrap_err();
        assert!(matches!(refused, Error::Precondition { .. }), "{refused}");
        assert_eq!(stack.counters().gets, 1, "read back, and not ours");
        // Deleted since: nothing to read back, still refused.
        stack.memory.delete(&key).await.unwrap();
        stack.faults.script(&[Some(Fault::ServerError)]);
        let refused = stack.update(&key, "a2", &first).await.unwrap_err();
        assert!(is_gone(&refused), "{refused}");
        assert_eq!(stack.counters().get_misses, 1, "read back: gone");
    }

    #[tokio::test]
    async fn a_get_whose_body_breaks_off_is_retried_and_returns_the_whole_object() {
        let stack = stack();
        let key = Path::from("chunk");
        stack.theirs(&key, "0123456789").await;
        stack.faults.script(&[Some(Fault::BrokenBody)]);
        let got = stack.store.get(&key).await.unwrap();
        assert!(matches!(got.payload, GetResultPayload::Stream(_)));
        assert_eq!(got.bytes().await.unwrap(), "0123456789");
        assert_eq!(stack.faults.injected(Fault::BrokenBody), 1);
        let counters = stack.counters();
        assert_eq!((counters.gets, counters.retries), (2, 1));
        assert_eq!(counters.bytes_read, 10, "the whole body, once");
    }

    #[tokio::test]
    async fn a_get_past_its_deadline_is_retried() {
        let stack = stack();
        let key = Path::from("chunk");
        stack.theirs(&key, "abc").await;
        stack.faults.script(&[Some(Fault::Hang)]);
        let got = stack.store.get(&key).await.unwrap();
        assert_eq!(got.bytes().await.unwrap(), "abc");
        assert_eq!(stack.counters().gets, 2);
    }

    #[tokio::test]
    async fn an_object_larger_than_asked_for_is_not_read() {
        let stack = stack();
        let key = Path::from("page");
        stack.theirs(&key, "0123456789").await;
        let large = stack
            .store
            .get_opts(&key, ReadAtMost(9).options())
            .await
            .unwrap();
        assert_eq!(large.meta.size, 10);
        drop(large);
        assert_eq!(stack.counters().bytes_read, 0);
        let fits = stack.store.get_opts(&key, ReadAtMost(10).options()).await;
        assert_eq!(fits.unwrap().bytes().await.unwrap(), "0123456789");
        assert_eq!(stack.counters().bytes_read, 10);
    }

    #[tokio::test]
    async fn a_listing_that_breaks_off_is_collected_whole_by_a_retry() {
        let stack = stack();
        for key in ["d/a", "d/b", "d/c"] {
            stack.theirs(&Path::from(key), "x").await;
        }
        stack.faults.script(&[Some(Fault::BrokenBody)]);
        let listed: Vec<_> = stack.store.list(None).try_collect().await.unwrap();
        let mut keys: Vec<_> = listed.iter().map(|m| m.location.to_string()).collect();
        keys.sort();
        assert_eq!(keys, ["d/a", "d/b", "d/c"]);
        let counters = stack.counters();
        assert_eq!((counters.lists, counters.retries), (2, 1));
    }

    #[tokio::test]
    async fn each_attempt_is_counted_as_a_request() {
        let stack = stack();
        let key = Path::from("k");
        let failures = [Fault::ServerError, Fault::SlowDown, Fault::Reset];
        stack.faults.script(&failures.map(Some));
        stack.store.put(&key, "abcd".into()).await.unwrap();
        stack.faults.script(&[Some(Fault::Reset)]);
        stack.store.delete(&key).await.unwrap();
        let counters = stack.counters();
        assert_eq!((counters.puts, counters.bytes_written), (4, 16));
        assert_eq!((counters.deletes, counters.retries), (2, 4));
    }

    #[tokio::test]
    async fn a_final_answer_is_not_retried() {
        let stack = stack();
        let missing = stack.store.get(&Path::from("none")).await.unwrap_err();
        assert!(matches!(missing, Error::NotFound { .. }));
        let counters = stack.counters();
        assert_eq!((counters.gets, counters.get_misses), (1, 1));
        assert_eq!(counters.retries, 0);
    }

    #[test]
    fn a_payload_in_parts_is_compared_whole() {
        let parts: PutPayload = [&b"ab"[..], b"c"]
            .map(Bytes::from_static)
            .into_iter()
            .collect();
        assert!(holds_exactly(b"abc", &parts));
        for other in [&b"ab"[..], b"abcd", b"abd", b""] {
            assert!(!holds_exactly(other, &parts), "{other:?}");
        }
    }
}
