//! Counting every request a store makes, and the bytes it moves.
//!
//! [`CountingStore`] wraps an object store and counts each request it
//! passes on into [`StoreMetrics`], failed or not. It sits under the
//! retries (see the stack in `mod.rs`), so each attempt is a request, and
//! it is counted as it starts: one abandoned at its deadline counts too.
//! What counts as what:
//!
//! - a GET is a GET, and one answered "not found" a miss as well; a HEAD is
//!   counted with the GETs, never as a miss;
//! - the bytes read are those of GET bodies read to their end: a body that
//!   breaks off, or is dropped unread (an object too large to read), counts
//!   none. A local file's body is read in one go, as `GetResult::bytes`
//!   reads it, when the body is first polled;
//! - a PUT is a PUT with the bytes it sends; a multipart upload's start,
//!   parts and completion are PUTs (the parts with their bytes), its abort
//!   a DELETE;
//! - each location a delete is asked for is a DELETE;
//! - a listing is a LIST however many pages the backend fetches for it;
//! - a copy is a PUT of no bytes (S3's CopyObject), a rename a PUT and a
//!   DELETE (the copy and the delete it is on S3).
//!
//! A `get_ranges` is one GET, with the bytes of all its ranges.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions, UploadPart,
};

use super::metrics::{RequestKind, StoreMetrics};

/// Whether a store's error is a failure rather than an answer: "not
/// found", "already exists" and a failed precondition answer what was
/// asked.
fn is_failure(error: &object_store::Error) -> bool {
    !matches!(
        error,
        object_store::Error::NotFound { .. }
            | object_store::Error::AlreadyExists { .. }
            | object_store::Error::Precondition { .. }
            | object_store::Error::NotModified { .. }
    )
}

/// An object store that counts another's requests and bytes.
#[derive(Debug)]
pub(super) struct CountingStore {
    inner: Arc<dyn ObjectStore>,
    metrics: Arc<StoreMetrics>,
}

impl CountingStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>, metrics: Arc<StoreMetrics>) -> CountingStore {
        CountingStore { inner, metrics }
    }

    /// Notes how long a request took to be answered, and whether it failed.
    fn answered<T>(&self, kind: RequestKind, started: Instant, result: &object_store::Result<T>) {
        let ok = result.as_ref().err().is_none_or(|e| !is_failure(e));
        self.metrics.answered(kind, started, ok);
    }

    /// Counts a GET's answer (not a HEAD's): a miss, or a body counted as
    /// it is read.
    fn counted_reply(
        &self,
        head: bool,
        reply: object_store::Result<GetResult>,
    ) -> object_store::Result<GetResult> {
        match reply {
            Ok(reply) if head => Ok(reply),
            Ok(reply) => Ok(with_counted_body(reply, Arc::clone(&self.metrics))),
            Err(error) => {
                if !head && matches!(error, object_store::Error::NotFound { .. }) {
                    self.metrics.miss();
                }
                Err(error)
            }
        }
    }
}

impl CountingStore {
    /// `listing`, with each failure counted.
    fn listing_failures_counted(
        &self,
        listing: BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let metrics = Arc::clone(&self.metrics);
        listing
            .inspect_err(move |error| {
                if is_failure(error) {
                    metrics.failed(RequestKind::List);
                }
            })
            .boxed()
    }
}

/// `reply` with a body that adds its bytes to `metrics` once it has been
/// read to its end.
fn with_counted_body(reply: GetResult, metrics: Arc<StoreMetrics>) -> GetResult {
    let GetResult {
        payload,
        meta,
        range,
        attributes,
        extensions,
    } = reply;
    let body = match payload {
        GetResultPayload::Stream(body) => body,
        file @ GetResultPayload::File(..) => file_read_whole(file, meta.clone(), range.clone()),
    };
    GetResult {
        payload: GetResultPayload::Stream(counted(body, metrics)),
        meta,
        range,
        attributes,
        extensions,
    }
}

/// A local file's `range` as a body of one chunk, read (on a blocking
/// thread, by `GetResult::bytes`) only when first polled.
fn file_read_whole(
    file: GetResultPayload,
    meta: ObjectMeta,
    range: Range<u64>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let reply = GetResult {
        payload: file,
        meta,
        range,
        attributes: Default::default(),
        extensions: Default::default(),
    };
    futures::stream::once(reply.bytes()).boxed()
}

/// A body being read, and how many bytes it has given so far.
struct Reading {
    body: BoxStream<'static, object_store::Result<Bytes>>,
    read: u64,
    metrics: Arc<StoreMetrics>,
}

/// `body`, whose bytes count once it ends; after an error it ends and
/// counts nothing.
fn counted(
    body: BoxStream<'static, object_store::Result<Bytes>>,
    metrics: Arc<StoreMetrics>,
) -> BoxStream<'static, object_store::Result<Bytes>> {
    let reading = Reading {
        body,
        read: 0,
        metrics,
    };
    futures::stream::unfold(Some(reading), |reading| async move {
        let mut reading = reading?;
        match reading.body.next().await {
            Some(Ok(chunk)) => {
                reading.read += chunk.len() as u64;
                Some((Ok(chunk), Some(reading)))
            }
            Some(Err(error)) => Some((Err(error), None)),
            None => {
                reading.metrics.read(reading.read);
                None
            }
        }
    })
    .boxed()
}

/// A multipart upload whose requests are counted.
#[derive(Debug)]
struct CountingUpload {
    inner: Box<dyn MultipartUpload>,
    metrics: Arc<StoreMetrics>,
}

#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl MultipartUpload for CountingUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.metrics.put(data.content_length());
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        self.metrics.put(0);
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.metrics.delete();
        self.inner.abort().await
    }
}

impl fmt::Display for CountingStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "counting({})", self.inner)
    }
}

/// Every method is forwarded and counted: a default method would reach
/// the inner store by way of this one's, counted as something else or
/// twice.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for CountingStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.metrics.put(payload.content_length());
        let started = Instant::now();
        let put = self.inner.put_opts(location, payload, opts).await;
        self.answered(RequestKind::Put, started, &put);
        put
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.metrics.put(0);
        let inner = self.inner.put_multipart_opts(location, opts).await?;
        let metrics = Arc::clone(&self.metrics);
        Ok(Box::new(CountingUpload { inner, metrics }))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.metrics.get();
        let head = options.head;
        let started = Instant::now();
        let reply = self.inner.get_opts(location, options).await;
        self.answered(RequestKind::Get, started, &reply);
        self.counted_reply(head, reply)
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[Range<u64>],
    ) -> object_store::Result<Vec<Bytes>> {
        self.metrics.get();
        let started = Instant::now();
        let got = self.inner.get_ranges(location, ranges).await;
        self.answered(RequestKind::Get, started, &got);
        match &got {
            Ok(parts) => self
                .metrics
                .read(parts.iter().map(|p| p.len() as u64).sum()),
            Err(object_store::Error::NotFound { .. }) => self.metrics.miss(),
            Err(_) => {}
        }
        got
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let metrics = Arc::clone(&self.metrics);
        let counted = locations.inspect_ok(move |_| metrics.delete());
        let metrics = Arc::clone(&self.metrics);
        let failures = move |error: &object_store::Error| {
            if is_failure(error) {
                metrics.failed(RequestKind::Delete);
            }
        };
        self.inner
            .delete_stream(counted.boxed())
            .inspect_err(failures)
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.metrics.list();
        self.listing_failures_counted(self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.metrics.list();
        self.listing_failures_counted(self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.metrics.list();
        let started = Instant::now();
        let listed = self.inner.list_with_delimiter(prefix).await;
        self.answered(RequestKind::List, started, &listed);
        listed
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.metrics.put(0);
        self.inner.copy_opts(from, to, options).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        self.metrics.put(0);
        self.metrics.delete();
        self.inner.rename_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreCounters;
    use crate::store::faults::{Fault, Faults, FaultyStore};
    use object_store::ObjectStoreExt;
    use std::time::Duration;

    /// A counting store over a faulty one over memory, as a `Store` stacks
    /// them, and the counters they share.
    fn counting_over_faults() -> (CountingStore, Faults, Arc<StoreMetrics>) {
        let faults = Faults::new(3, Duration::from_millis(1), Duration::ZERO);
        let memory = Arc::new(object_store::memory::InMemory::new());
        let faulty = Arc::new(FaultyStore::new(memory, faults.clone()));
        let metrics = Arc::new(StoreMetrics::default());
        (
            CountingStore::new(faulty, Arc::clone(&metrics)),
            faults,
            metrics,
        )
    }

    #[tokio::test]
    async fn each_request_counts_as_what_it_is() {
        let (store, _, metrics) = counting_over_faults();
        let key = Path::from("a/b");
        assert!(store.get(&key).await.is_err());
        store.put(&key, "hello".into()).await.unwrap();
        assert_eq!(
            store.get(&key).await.unwrap().bytes().await.unwrap(),
            "hello"
        );
        assert_eq!(store.get_range(&key, 1..3).await.unwrap(), "el");
        assert_eq!(store.head(&key).await.unwrap().size, 5);
        assert!(store.head(&Path::from("a/none")).await.is_err());
        let listed: Vec<_> = store.list(None).try_collect().await.unwrap();
        assert_eq!(listed.len(), 1);
        store.list_with_delimiter(None).await.unwrap();
        store.delete(&key).await.unwrap();
        assert_eq!(
            metrics.snapshot(),
            StoreCounters {
                gets: 5,
                get_misses: 1,
                puts: 1,
                deletes: 1,
                lists: 2,
                retries: 0,
                bytes_read: 7,
                bytes_written: 5,
            }
        );
    }

    /// Each attempt is a request: a failed one counts as one, and a GET
    /// whose body breaks off counts no bytes.
    #[tokio::test]
    async fn failed_attempts_count_as_requests_and_broken_bodies_read_nothing() {
        let (store, faults, metrics) = counting_over_faults();
        let key = Path::from("k");
        faults.script(&[Some(Fault::ServerError), None]);
        assert!(store.put(&key, "abcd".into()).await.is_err());
        store.put(&key, "abcd".into()).await.unwrap();
        faults.script(&[Some(Fault::Reset), Some(Fault::BrokenBody), None]);
        assert!(store.get(&key).await.is_err());
        let broken = store.get(&key).await.unwrap().bytes().await;
        assert!(broken.is_err(), "the body broke off");
        assert_eq!(
            store.get(&key).await.unwrap().bytes().await.unwrap(),
            "abcd"
        );
        let counters = metrics.snapshot();
        assert_eq!((counters.puts, counters.bytes_written), (2, 8));
        assert_eq!((counters.gets, counters.get_misses), (3, 0));
        assert_eq!(counters.bytes_read, 4, "only the body read whole");
    }

    #[tokio::test]
    async fn a_local_file_is_counted_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let local = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let metrics = Arc::new(StoreMetrics::default());
        let store = CountingStore::new(Arc::new(local), Arc::clone(&metrics));
        let key = Path::from("f");
        store.put(&key, "0123456789".into()).await.unwrap();
        let unread = store.get(&key).await.unwrap();
        drop(unread);
        assert_eq!(metrics.snapshot().bytes_read, 0, "a body dropped unread");
        assert_eq!(store.get_range(&key, 2..6).await.unwrap(), "2345");
        assert_eq!(metrics.snapshot().bytes_read, 4);
    }

    #[tokio::test]
    async fn each_location_deleted_is_a_delete() {
        let (store, _, metrics) = counting_over_faults();
        let keys = ["x", "y", "z"].map(|k| Ok(Path::from(k)));
        let deleted: Vec<_> = store
            .delete_stream(futures::stream::iter(keys).boxed())
            .try_collect()
            .await
            .unwrap();
        assert_eq!(deleted.len(), 3);
        assert_eq!(metrics.snapshot().deletes, 3);
    }
}
