//! Property test: random writes, snapshots, clones, rollbacks, deletes of
//! volumes and snapshots, and gc runs, against a simple model of what each
//! volume and snapshot holds. After every gc every surviving snapshot
//! verifies (every object it references is there and whole), and every
//! volume, and at the end every snapshot, reads exactly what the model
//! says: gc never takes live data, whoever shares it.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{Backend, TestStore, engine_options, new_volume, read_tags, write_tags};
use proptest::prelude::*;
use zeroblk::engine::{self, GcOptions, Volume, VolumeRef};
use zeroblk::store::Store;

const CHUNK: u64 = 64 << 10;
const BLOCKS: u64 = 4 * CHUNK / 4096;
/// A step that takes longer is stuck: fail, don't hang.
const STEP_LIMIT: Duration = Duration::from_secs(30);
const GC_NOW: GcOptions = GcOptions {
    grace: Duration::ZERO,
    dry_run: false,
    password: None,
};

#[derive(Debug, Clone)]
enum Op {
    /// Writes a new tag to `block` of the `volume`-th volume.
    Write {
        volume: usize,
        block: u64,
    },
    Snapshot {
        volume: usize,
    },
    /// Clones the `source`-th of the volumes and snapshots, in order.
    Clone {
        source: usize,
    },
    DeleteSnapshot {
        snapshot: usize,
    },
    DeleteVolume {
        volume: usize,
    },
    Rollback {
        snapshot: usize,
    },
    Gc,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0..8usize, 0..BLOCKS).prop_map(|(volume, block)| Op::Write { volume, block }),
        3 => (0..8usize).prop_map(|volume| Op::Snapshot { volume }),
        2 => (0..16usize).prop_map(|source| Op::Clone { source }),
        2 => (0..16usize).prop_map(|snapshot| Op::DeleteSnapshot { snapshot }),
        1 => (0..8usize).prop_map(|volume| Op::DeleteVolume { volume }),
        1 => (0..16usize).prop_map(|snapshot| Op::Rollback { snapshot }),
        3 => Just(Op::Gc),
    ]
}

/// What every volume and snapshot holds (a tag per block), and the open
/// volumes with their cache directories.
struct World {
    store: Store,
    volumes: BTreeMap<String, Vec<u64>>,
    snapshots: BTreeMap<(String, String), Vec<u64>>,
    open: HashMap<String, Volume>,
    caches: HashMap<String, tempfile::TempDir>,
    next_tag: u64,
    next_clone: u64,
}

impl World {
    async fn new(store: Store) -> World {
        engine::create(&store, &new_volume("v", BLOCKS * 4096, CHUNK))
            .await
            .unwrap();
        let mut world = World {
            store,
            volumes: BTreeMap::new(),
            snapshots: BTreeMap::new(),
            open: HashMap::new(),
            caches: HashMap::new(),
            next_tag: 1,
            next_clone: 0,
        };
        world.volumes.insert("v".into(), vec![0; BLOCKS as usize]);
        world
    }

    fn nth_volume(&self, index: usize) -> Option<String> {
        let count = self.volumes.len();
        (count > 0).then(|| self.volumes.keys().nth(index % count).unwrap().clone())
    }

    fn nth_snapshot(&self, index: usize) -> Option<(String, String)> {
        let count = self.snapshots.len();
        (count > 0).then(|| self.snapshots.keys().nth(index % count).unwrap().clone())
    }

    async fn opened(&mut self, name: &str) -> &Volume {
        if !self.open.contains_key(name) {
            let cache = self
                .caches
                .entry(name.to_string())
                .or_insert_with(|| tempfile::tempdir().unwrap());
            let options = engine_options(cache.path());
            let volume = Volume::open(&self.store, name, options).await.unwrap();
            self.open.insert(name.to_string(), volume);
        }
        &self.open[name]
    }

    async fn close(&mut self, name: &str) {
        if let Some(volume) = self.open.remove(name) {
            volume.close().await.unwrap();
        }
    }

    async fn close_all(&mut self) {
        let names: Vec<String> = self.open.keys().cloned().collect();
        for name in names {
            self.close(&name).await;
        }
    }

    async fn apply(&mut self, op: Op) {
        match op {
            Op::Write { volume, block } => {
                let Some(name) = self.nth_volume(volume) else {
                    return;
                };
                let tag = self.next_tag;
                self.next_tag += 1;
                write_tags(self.opened(&name).await, block, &[tag]).await;
                self.volumes.get_mut(&name).unwrap()[block as usize] = tag;
            }
            Op::Snapshot { volume } => {
                let Some(name) = self.nth_volume(volume) else {
                    return;
                };
                let taken = match self.open.get(&name) {
                    Some(volume) => volume.snapshot(None).await.unwrap(),
                    None => engine::create_snapshot(&self.store, &name, None, None)
                        .await
                        .unwrap(),
                };
                let state = self.volumes[&name].clone();
                self.snapshots.insert((name, taken.name().into()), state);
            }
            Op::Clone { source } => self.clone_one(source).await,
            Op::DeleteSnapshot { snapshot } => {
                let Some(key) = self.nth_snapshot(snapshot) else {
                    return;
                };
                engine::delete_snapshot(&self.store, &key.0, &key.1)
                    .await
                    .unwrap();
                self.snapshots.remove(&key);
            }
            Op::DeleteVolume { volume } => {
                let Some(name) = self.nth_volume(volume) else {
                    return;
                };
                self.close(&name).await;
                engine::delete(&self.store, &name).await.unwrap();
                self.volumes.remove(&name);
                self.caches.remove(&name);
                self.snapshots.retain(|(volume, _), _| *volume != name);
            }
            Op::Rollback { snapshot } => {
                let Some((name, snapshot)) = self.nth_snapshot(snapshot) else {
                    return;
                };
                self.close(&name).await;
                let cache = self
                    .caches
                    .entry(name.clone())
                    .or_insert_with(|| tempfile::tempdir().unwrap());
                let options = engine_options(cache.path());
                let rolled = engine::rollback(&self.store, &name, &snapshot, options)
                    .await
                    .unwrap();
                let before = self.volumes[&name].clone();
                let pinned = self.snapshots[&(name.clone(), snapshot)].clone();
                self.snapshots
                    .insert((name.clone(), rolled.kept().name().into()), before);
                self.volumes.insert(name, pinned);
            }
            Op::Gc => {
                self.close_all().await;
                engine::collect_garbage(&self.store, GC_NOW).await.unwrap();
                self.check_snapshots_verify().await;
                self.check_volumes().await;
            }
        }
    }

    async fn clone_one(&mut self, source: usize) {
        let count = self.volumes.len() + self.snapshots.len();
        if count == 0 {
            return;
        }
        let index = source % count;
        let (from, state) = match index.checked_sub(self.volumes.len()) {
            None => {
                let name = self.nth_volume(index).unwrap();
                if let Some(volume) = self.open.get(&name) {
                    volume.commit().await.unwrap();
                }
                (VolumeRef::volume(&name), self.volumes[&name].clone())
            }
            Some(snapshot) => {
                let (name, snap) = self.nth_snapshot(snapshot).unwrap();
                let state = self.snapshots[&(name.clone(), snap.clone())].clone();
                (format!("{name}@{snap}").parse().unwrap(), state)
            }
        };
        let target = format!("c{}", self.next_clone);
        self.next_clone += 1;
        engine::clone_volume(&self.store, &from, &target, None)
            .await
            .unwrap();
        self.volumes.insert(target, state);
    }

    async fn check_volumes(&mut self) {
        let names: Vec<String> = self.volumes.keys().cloned().collect();
        for name in names {
            let read = read_tags(self.opened(&name).await, 0, BLOCKS).await;
            assert_eq!(read, self.volumes[&name], "volume {name}");
        }
    }

    async fn check_snapshots_verify(&self) {
        for (volume, snapshot) in self.snapshots.keys() {
            let name = format!("{volume}@{snapshot}");
            let report = engine::verify(&self.store, &name, None).await.unwrap();
            assert!(report.is_clean(), "{name}: {report:?}");
        }
    }

    /// Reads every snapshot through a clone of it (deleted after).
    async fn check_snapshots_read(&mut self) {
        let snapshots: Vec<_> = self.snapshots.clone().into_iter().collect();
        for ((volume, snapshot), state) in snapshots {
            let from: VolumeRef = format!("{volume}@{snapshot}").parse().unwrap();
            engine::clone_volume(&self.store, &from, "reading", None)
                .await
                .unwrap();
            let read = read_tags(self.opened("reading").await, 0, BLOCKS).await;
            assert_eq!(read, state, "snapshot {from}");
            self.close("reading").await;
            engine::delete(&self.store, "reading").await.unwrap();
            self.caches.remove("reading");
        }
    }
}

async fn run(backend: Backend, ops: Vec<Op>) {
    let store = TestStore::new(backend);
    let mut world = World::new(store.store.clone()).await;
    for op in ops {
        let step = format!("{op:?}");
        tokio::time::timeout(STEP_LIMIT, world.apply(op))
            .await
            .unwrap_or_else(|_| panic!("stuck at {step}"));
    }
    world.apply(Op::Gc).await;
    world.check_snapshots_read().await;
    world.close_all().await;
}

fn check(backend: Backend, ops: Vec<Op>) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(run(backend, ops));
}

proptest! {
    #![proptest_config(common::model_cases(64))]
    #[test]
    fn memory_store(ops in prop::collection::vec(op(), 1..40)) {
        check(Backend::Memory, ops);
    }
}

proptest! {
    #![proptest_config(common::model_cases(16))]
    #[test]
    fn file_store(ops in prop::collection::vec(op(), 1..30)) {
        check(Backend::File, ops);
    }
}
