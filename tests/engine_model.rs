//! Property test: random writes, zeroings, flushes, reads, crashes and
//! lost cache directories against a simple in-memory model of a disk, on
//! every backend. Every read is checked; after a crash every block must
//! hold what the durability contract allows:
//!
//! - a process crash (`kill -9`) loses nothing acknowledged;
//! - a power cut keeps, per block, the value at the last flush or a value
//!   written after it. The cut undoes whatever the log had not made
//!   durable, in every file and directory of the cache dir: unsynced
//!   pages of any segment (replayed and recycled ones too), lengths, and
//!   directory entries not yet synced (`engine::simulate_power_cuts`);
//! - losing the cache directory keeps, with remote durability, the same;
//!   with local durability, some value the block once held.

mod common;

use std::time::Duration;

use common::{Backend, TestStore, block_of, engine_options, new_volume, tag_of};
use proptest::prelude::*;
use zeroblk::crypto::Password;
use zeroblk::engine::{self, Durability, EngineOptions, NewVolume, Volume};

const CHUNK: u64 = 64 << 10;
const BLOCKS_PER_CHUNK: u64 = CHUNK / 4096;
const CHUNKS: u64 = 8;
const BLOCKS: u64 = CHUNKS * BLOCKS_PER_CHUNK;
/// A step that takes longer is stuck: fail, don't hang.
const STEP_LIMIT: Duration = Duration::from_secs(20);

#[derive(Debug, Clone)]
enum Op {
    Write { block: u64, blocks: u64, fua: bool },
    Zero { block: u64, blocks: u64 },
    Flush,
    Read { block: u64, blocks: u64 },
    Settle,
    Crash { power_loss: bool },
    LoseCache,
    Reopen,
}

fn range() -> impl Strategy<Value = (u64, u64)> {
    prop_oneof![
        (0..BLOCKS).prop_flat_map(|b| (Just(b), 1..=(BLOCKS - b).min(40))),
        (0..CHUNKS)
            .prop_flat_map(|c| (Just(c * BLOCKS_PER_CHUNK), 1..=(CHUNKS - c)))
            .prop_map(|(b, chunks)| (b, chunks * BLOCKS_PER_CHUNK)),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (range(), any::<bool>()).prop_map(|((block, blocks), fua)| Op::Write { block, blocks, fua: fua && blocks % 3 == 0 }),
        3 => range().prop_map(|(block, blocks)| Op::Zero { block, blocks }),
        4 => Just(Op::Flush),
        4 => range().prop_map(|(block, blocks)| Op::Read { block, blocks }),
        2 => Just(Op::Settle),
        2 => any::<bool>().prop_map(|power_loss| Op::Crash { power_loss }),
        1 => Just(Op::LoseCache),
        1 => Just(Op::Reopen),
    ]
}

/// What the disk should hold, and what a crash may leave.
struct Model {
    current: Vec<u64>,
    flushed: Vec<u64>,
    since_flush: Vec<Vec<u64>>,
    history: Vec<Vec<u64>>,
    next_tag: u64,
}

impl Model {
    fn new() -> Model {
        let n = BLOCKS as usize;
        Model {
            current: vec![0; n],
            flushed: vec![0; n],
            since_flush: vec![Vec::new(); n],
            history: vec![vec![0]; n],
            next_tag: 1,
        }
    }

    fn set(&mut self, block: u64, tag: u64) {
        let b = block as usize;
        self.current[b] = tag;
        self.since_flush[b].push(tag);
        self.history[b].push(tag);
    }

    fn flush(&mut self) {
        self.flushed.clone_from(&self.current);
        self.since_flush.iter_mut().for_each(Vec::clear);
    }

    /// Accepts what the disk holds after a crash, if the contract allows
    /// it. What survived without a flush stays "written since the last
    /// flush": a later crash may still lose it.
    fn recover(&mut self, found: &[u64], allowed: impl Fn(&Model, usize, u64) -> bool, what: &str) {
        for (b, &tag) in found.iter().enumerate() {
            assert!(
                allowed(self, b, tag),
                "after {what}, block {b} holds {tag}; current {}, flushed {}, since flush {:?}",
                self.current[b],
                self.flushed[b],
                self.since_flush[b]
            );
        }
        for (b, &tag) in found.iter().enumerate() {
            self.current[b] = tag;
            self.since_flush[b].push(tag);
        }
    }
}

fn at_flush_or_later(model: &Model, b: usize, tag: u64) -> bool {
    tag == model.flushed[b] || model.since_flush[b].contains(&tag)
}

async fn read_all(volume: &Volume) -> Vec<u64> {
    let mut buf = vec![0u8; (BLOCKS * 4096) as usize];
    volume.read(0, &mut buf).await.unwrap();
    buf.chunks(4096).map(tag_of).collect()
}

/// A volume under test, its cache dir and the model it is checked against.
struct Run {
    store: TestStore,
    durability: Durability,
    /// The password of an encrypted volume.
    password: Option<Password>,
    cache: tempfile::TempDir,
    volume: Option<Volume>,
    model: Model,
}

impl Run {
    async fn start(backend: Backend, durability: Durability, encrypted: bool) -> Run {
        let store = TestStore::new(backend);
        let password = encrypted.then(|| Password::new("model".into()).unwrap());
        let new = NewVolume {
            encrypt_with: password.clone(),
            ..new_volume("m", BLOCKS * 4096, CHUNK)
        };
        engine::create(&store.store, &new).await.unwrap();
        let mut run = Run {
            store,
            durability,
            password,
            cache: armed_cache_dir(),
            volume: None,
            model: Model::new(),
        };
        run.open().await;
        run
    }

    fn options(&self) -> EngineOptions {
        let mut options = engine_options(self.cache.path());
        options.durability = self.durability;
        options.commit_interval = Duration::from_millis(20);
        options.max_dirty_bytes = 256 << 10;
        // A few writes fill a segment: rotation, end records and reuse of
        // committed segments are in almost every case.
        options.log_segment_bytes = 32 << 10;
        options.password = self.password.clone();
        options
    }

    async fn open(&mut self) {
        let volume = Volume::open(&self.store.reopen(), "m", self.options())
            .await
            .unwrap();
        self.volume = Some(volume);
    }

    /// Opens the volume after its cache dir was lost: with local
    /// durability, its flushed writes went with it, which zeroblk cannot
    /// tell from a log in another cache dir, so only --force opens it.
    async fn open_without_the_log(&mut self) {
        if self.durability == Durability::Local {
            let refused = Volume::open(&self.store.reopen(), "m", self.options()).await;
            assert!(
                matches!(refused, Err(engine::EngineError::LogElsewhere { .. })),
                "a lost log was taken over from without --force"
            );
        }
        let mut forced = self.options();
        forced.take_over = true;
        let volume = Volume::open(&self.store.reopen(), "m", forced)
            .await
            .unwrap();
        self.volume = Some(volume);
    }

    fn volume(&self) -> &Volume {
        self.volume.as_ref().expect("the volume is open")
    }

    async fn apply(&mut self, step: usize, op: Op) {
        let model = &mut self.model;
        match op {
            Op::Write { block, blocks, fua } => {
                let tags: Vec<u64> = (0..blocks).map(|i| model.next_tag + i).collect();
                model.next_tag += blocks;
                let data: Vec<u8> = tags.iter().flat_map(|&t| block_of(t)).collect();
                let volume = self.volume.as_ref().expect("open");
                volume.write(block * 4096, &data, fua).await.unwrap();
                for (i, tag) in tags.into_iter().enumerate() {
                    model.set(block + i as u64, tag);
                }
                if fua {
                    model.flush();
                }
            }
            Op::Zero { block, blocks } => {
                let volume = self.volume.as_ref().expect("open");
                volume
                    .discard(block * 4096, blocks * 4096, false)
                    .await
                    .unwrap();
                (block..block + blocks).for_each(|b| model.set(b, 0));
            }
            Op::Flush => {
                self.volume.as_ref().expect("open").flush().await.unwrap();
                model.flush();
            }
            Op::Read { block, blocks } => {
                let mut buf = vec![0u8; (blocks * 4096) as usize];
                let volume = self.volume.as_ref().expect("open");
                volume.read(block * 4096, &mut buf).await.unwrap();
                let found: Vec<u64> = buf.chunks(4096).map(tag_of).collect();
                let expected = &model.current[block as usize..(block + blocks) as usize];
                assert_eq!(
                    found, expected,
                    "step {step}: read of {blocks} blocks at {block}"
                );
            }
            Op::Settle => tokio::time::sleep(Duration::from_millis(30)).await,
            Op::Crash { power_loss } => {
                let volume = self.volume.take().expect("open");
                volume.crash(power_loss, step as u64).await;
                self.open().await;
                let found = read_all(self.volume()).await;
                if power_loss {
                    self.model.recover(&found, at_flush_or_later, "a power cut");
                } else {
                    self.model
                        .recover(&found, |m, b, t| m.current[b] == t, "a process crash");
                }
            }
            Op::LoseCache => {
                let volume = self.volume.take().expect("open");
                volume.crash(true, step as u64).await;
                self.cache = armed_cache_dir();
                self.open_without_the_log().await;
                let found = read_all(self.volume()).await;
                match self.durability {
                    Durability::Remote => {
                        self.model
                            .recover(&found, at_flush_or_later, "losing the cache")
                    }
                    Durability::Local => self.model.recover(
                        &found,
                        |m, b, t| m.history[b].contains(&t),
                        "losing the cache",
                    ),
                }
            }
            Op::Reopen => {
                let volume = self.volume.take().expect("open");
                volume.close().await.unwrap();
                drop(volume);
                self.open().await;
                let found = read_all(self.volume()).await;
                self.model
                    .recover(&found, |m, b, t| m.current[b] == t, "a clean close");
            }
        }
    }
}

/// A fresh cache dir whose changes a simulated power cut may undo.
fn armed_cache_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    engine::simulate_power_cuts(dir.path());
    dir
}

async fn run(backend: Backend, durability: Durability, encrypted: bool, ops: Vec<Op>) {
    let mut run = Run::start(backend, durability, encrypted).await;
    for (step, op) in ops.into_iter().enumerate() {
        let what = format!("{op:?}");
        let applied = tokio::time::timeout(STEP_LIMIT, run.apply(step, op)).await;
        assert!(
            applied.is_ok(),
            "step {step}: {what} did not finish within {STEP_LIMIT:?}"
        );
    }
    let found = read_all(run.volume()).await;
    assert_eq!(found, run.model.current, "final state");
    run.volume().close().await.unwrap();
}

fn check(backend: Backend, durability: Durability, ops: Vec<Op>) {
    check_volume(backend, durability, false, ops);
}

fn check_volume(backend: Backend, durability: Durability, encrypted: bool, ops: Vec<Op>) {
    common::init_tracing();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(backend, durability, encrypted, ops));
}

proptest! {
    #![proptest_config(common::model_cases(48))]
    #[test]
    fn memory_store_local_durability(ops in prop::collection::vec(op(), 1..60)) {
        check(Backend::Memory, Durability::Local, ops);
    }

    #[test]
    fn memory_store_remote_durability(ops in prop::collection::vec(op(), 1..60)) {
        check(Backend::Memory, Durability::Remote, ops);
    }
}

proptest! {
    #![proptest_config(common::model_cases(16))]
    #[test]
    fn file_store(ops in prop::collection::vec(op(), 1..60), remote in any::<bool>()) {
        let durability = if remote { Durability::Remote } else { Durability::Local };
        check(Backend::File, durability, ops);
    }

    /// Half the cases on an encrypted volume: sealed chunks, packs, pages
    /// and roots through every path the model reaches.
    #[test]
    fn s3_store(
        ops in prop::collection::vec(op(), 1..60),
        remote in any::<bool>(),
        encrypted in any::<bool>(),
    ) {
        let durability = if remote { Durability::Remote } else { Durability::Local };
        check_volume(Backend::S3, durability, encrypted, ops);
    }
}
