//! A store that fails the ways real object stores do, for testing zeroblk
//! against them in-process: errors (500, 503 SlowDown), connection resets,
//! requests that hang past any deadline, slow replies, replies lost
//! after the request took effect, and replies that break off partway.
//!
//! [`Faults`] is the switchboard: a share of requests to fault and the
//! kinds to pick from, changeable while the store is in use, with a count
//! of what was injected. The wrapper sits at the bottom of a
//! [`super::Store`]'s stack, under its counting, retries and deadlines,
//! exactly where a remote store's failures arrive.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, GetResultPayload, ListResult, MultipartUpload, ObjectMeta,
    ObjectStore, PutMultipartOptions, PutOptions, PutPayload, PutResult, RenameOptions,
};

/// One kind of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// 500 Internal Error; the request did nothing.
    ServerError,
    /// 503 SlowDown; the request did nothing.
    SlowDown,
    /// The connection reset before the request arrived.
    Reset,
    /// The request never answers (until the caller's deadline).
    Hang,
    /// The request is answered, late.
    Slow,
    /// The request took effect, then the reply was lost.
    LostReply,
    /// The reply breaks off partway: a GET's body after half its bytes, a
    /// listing after its first entry; any other reply is lost after its
    /// request took effect.
    BrokenBody,
}

impl Fault {
    pub const ALL: [Fault; 7] = [
        Fault::ServerError,
        Fault::SlowDown,
        Fault::Reset,
        Fault::Hang,
        Fault::Slow,
        Fault::LostReply,
        Fault::BrokenBody,
    ];
}

#[derive(Debug, Default)]
struct Plan {
    /// The share of requests that fail, 0.0 to 1.0; 1.0 with `[Reset]` is
    /// a store that is down.
    rate: f64,
    kinds: Vec<Fault>,
    rng: Option<fastrand::Rng>,
    injected: Vec<(Fault, u64)>,
    /// What the next requests get, before the rate is drawn from.
    scripted: std::collections::VecDeque<Option<Fault>>,
}

/// What a faulty store injects; cheap to clone, shared with the store.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    plan: Arc<Mutex<Plan>>,
    /// How long a hung request hangs (longer than any sane deadline).
    hang: Duration,
    /// How late a slow reply comes.
    slow: Duration,
}

impl Faults {
    /// No faults yet; `seed` makes the choices repeatable.
    pub fn new(seed: u64, hang: Duration, slow: Duration) -> Faults {
        let plan = Plan {
            rng: Some(fastrand::Rng::with_seed(seed)),
            ..Plan::default()
        };
        Faults {
            plan: Arc::new(Mutex::new(plan)),
            hang,
            slow,
        }
    }

    /// From now on, fails `rate` of requests with one of `kinds` each.
    pub fn set(&self, rate: f64, kinds: &[Fault]) {
        let mut plan = self.lock();
        plan.rate = if kinds.is_empty() { 0.0 } else { rate };
        plan.kinds = kinds.to_vec();
    }

    /// The next requests get `draws`, in order (`None`: no fault); then
    /// the rate applies again. For tests of one exact interleaving.
    pub fn script(&self, draws: &[Option<Fault>]) {
        self.lock().scripted.extend(draws.iter().copied());
    }

    /// How many times `fault` was injected.
    pub fn injected(&self, fault: Fault) -> u64 {
        self.lock()
            .injected
            .iter()
            .find(|(f, _)| *f == fault)
            .map_or(0, |(_, n)| *n)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Plan> {
        self.plan.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn draw(&self) -> Option<Fault> {
        let mut plan = self.lock();
        let Plan {
            rate,
            kinds,
            rng,
            injected,
            scripted,
        } = &mut *plan;
        let fault = match scripted.pop_front() {
            Some(scripted) => scripted?,
            None => {
                let rng = rng.get_or_insert_with(fastrand::Rng::new);
                if kinds.is_empty() || rng.f64() >= *rate {
                    return None;
                }
                kinds[rng.usize(..kinds.len())]
            }
        };
        match injected.iter_mut().find(|(f, _)| *f == fault) {
            Some((_, n)) => *n += 1,
            None => injected.push((fault, 1)),
        }
        Some(fault)
    }

    /// Runs one request through the plan.
    async fn run<T>(
        &self,
        op: &str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        self.inject(self.draw(), op, request).await
    }

    /// Runs one GET through the plan: a broken body breaks off halfway (a
    /// HEAD has none: its reply is lost instead).
    async fn run_get(
        &self,
        head: bool,
        request: impl Future<Output = object_store::Result<GetResult>>,
    ) -> object_store::Result<GetResult> {
        match self.draw() {
            Some(Fault::BrokenBody) if !head => broken_off(request.await?).await,
            fault => self.inject(fault, "GET", request).await,
        }
    }

    /// Runs `request` with `fault`.
    async fn inject<T>(
        &self,
        fault: Option<Fault>,
        op: &str,
        request: impl Future<Output = object_store::Result<T>>,
    ) -> object_store::Result<T> {
        match fault {
            None => request.await,
            Some(Fault::ServerError) => Err(injected(op, "500 InternalError")),
            Some(Fault::SlowDown) => Err(injected(op, "503 SlowDown")),
            Some(Fault::Reset) => Err(injected(op, "connection reset by peer")),
            Some(Fault::Hang) => {
                tokio::time::sleep(self.hang).await;
                Err(injected(op, "no reply"))
            }
            Some(Fault::Slow) => {
                tokio::time::sleep(self.slow).await;
                request.await
            }
            Some(Fault::LostReply | Fault::BrokenBody) => {
                request.await?;
                Err(injected(op, "the connection closed before the reply"))
            }
        }
    }
}

/// `reply` with a body that breaks off after half its bytes.
async fn broken_off(mut reply: GetResult) -> object_store::Result<GetResult> {
    let (meta, range) = (reply.meta.clone(), reply.range.clone());
    let attributes = std::mem::take(&mut reply.attributes);
    let extensions = std::mem::take(&mut reply.extensions);
    let whole = super::retrying::whole_body(reply).await?;
    let half = whole.slice(..whole.len() / 2);
    let broken = Err(injected("GET", "the connection reset in the body"));
    Ok(GetResult {
        payload: GetResultPayload::Stream(futures::stream::iter([Ok(half), broken]).boxed()),
        meta,
        range,
        attributes,
        extensions,
    })
}

fn injected(op: &str, what: &str) -> object_store::Error {
    object_store::Error::Generic {
        store: "faults",
        source: format!("injected fault on {op}: {what}").into(),
    }
}

/// An object store that injects [`Faults`] into another's requests.
#[derive(Debug)]
pub(super) struct FaultyStore {
    inner: Arc<dyn ObjectStore>,
    faults: Faults,
}

impl FaultyStore {
    pub(super) fn new(inner: Arc<dyn ObjectStore>, faults: Faults) -> FaultyStore {
        FaultyStore { inner, faults }
    }

    /// A listing, or one that fails at once when a fault is drawn (a slow
    /// fault lists as usual, a broken one fails after its first entry).
    fn listing(
        &self,
        list: impl FnOnce() -> BoxStream<'static, object_store::Result<ObjectMeta>>,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        match self.faults.draw() {
            None | Some(Fault::Slow) => list(),
            Some(Fault::BrokenBody) => {
                let broken = async { Err(injected("LIST", "the listing broke off")) };
                list().take(1).chain(futures::stream::once(broken)).boxed()
            }
            Some(_) => {
                futures::stream::once(async { Err(injected("LIST", "listing failed")) }).boxed()
            }
        }
    }
}

impl fmt::Display for FaultyStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "faulty({})", self.inner)
    }
}

/// Every method is forwarded, through the faults where it makes a
/// request: a default method would reach the inner store by way of this
/// one's, or not at all, and hide what the inner store does itself.
#[async_trait]
#[deny(clippy::missing_trait_methods)]
impl ObjectStore for FaultyStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let request = self.inner.put_opts(location, payload, opts);
        self.faults.run("PUT", request).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        let head = options.head;
        let request = self.inner.get_opts(location, options);
        self.faults.run_get(head, request).await
    }

    async fn get_ranges(
        &self,
        location: &Path,
        ranges: &[std::ops::Range<u64>],
    ) -> object_store::Result<Vec<bytes::Bytes>> {
        let request = self.inner.get_ranges(location, ranges);
        self.faults.run("GET", request).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        let (inner, faults) = (Arc::clone(&self.inner), self.faults.clone());
        locations
            .then(move |location| {
                let (inner, faults) = (Arc::clone(&inner), faults.clone());
                async move {
                    let location = location?;
                    let one = location.clone();
                    let request = async move {
                        let one = futures::stream::once(async move { Ok(one) }).boxed();
                        inner.delete_stream(one).next().await.transpose()
                    };
                    faults.run("DELETE", request).await?;
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.listing(|| self.inner.list(prefix))
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.listing(|| self.inner.list_with_offset(prefix, offset))
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let request = self.inner.list_with_delimiter(prefix);
        self.faults.run("LIST", request).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        let request = self.inner.copy_opts(from, to, options);
        self.faults.run("COPY", request).await
    }

    async fn rename_opts(
        &self,
        from: &Path,
        to: &Path,
        options: RenameOptions,
    ) -> object_store::Result<()> {
        let request = self.inner.rename_opts(from, to, options);
        self.faults.run("RENAME", request).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lost_reply_still_takes_effect_and_rates_hold() {
        let faults = Faults::new(1, Duration::from_millis(1), Duration::from_millis(1));
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = FaultyStore::new(Arc::clone(&memory), faults.clone());
        faults.set(1.0, &[Fault::LostReply]);
        let key = Path::from("k");
        assert!(
            store
                .put_opts(&key, "x".into(), PutOptions::default())
                .await
                .is_err()
        );
        assert!(
            memory.get_opts(&key, GetOptions::default()).await.is_ok(),
            "the put landed"
        );

        faults.set(0.25, &[Fault::ServerError]);
        for _ in 0..400 {
            let _ = store.get_opts(&key, GetOptions::default()).await;
        }
        let failed = faults.injected(Fault::ServerError);
        assert!((60..140).contains(&failed), "{failed} of 400 failed at 25%");
        faults.set(0.0, &[]);
        assert!(store.get_opts(&key, GetOptions::default()).await.is_ok());
    }

    #[tokio::test]
    async fn a_broken_body_breaks_off_halfway() {
        let faults = Faults::new(1, Duration::from_millis(1), Duration::from_millis(1));
        let memory: Arc<dyn ObjectStore> = Arc::new(object_store::memory::InMemory::new());
        let store = FaultyStore::new(Arc::clone(&memory), faults.clone());
        let key = Path::from("k");
        memory
            .put_opts(&key, "abcdef".into(), PutOptions::default())
            .await
            .unwrap();
        faults.script(&[Some(Fault::BrokenBody)]);
        let reply = store.get_opts(&key, GetOptions::default()).await.unwrap();
        let body: Vec<_> = reply.into_stream().collect().await;
        assert_eq!(body.len(), 2);
        assert_eq!(body[0].as_ref().unwrap(), "abc");
        assert!(body[1].is_err(), "then the body breaks off");
    }
}
