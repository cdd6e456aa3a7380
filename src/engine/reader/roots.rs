//! The root a read-only volume serves, and how a follower moves it on to
//! the writer's newer roots.
//!
//! It promises:
//! - the root is replaced as a whole ([`ArcSwap`]), and only by a newer
//!   generation: a request that loaded it once reads one root to its end;
//! - a root is never taken that would not back the size served (a volume
//!   only grows; a smaller root is a bucket changed behind our back);
//! - a follower finds each commit with one GET of the next generation per
//!   poll, and catches up with the newest root now and then, in case the
//!   generations it missed were collected meanwhile.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::engine::catalog;
use crate::engine::error::{EngineError, Result};
use crate::format::{Codec, Root, Superblock};
use crate::store::Store;

/// A follower reads the newest root, not just the next one, once in this
/// many polls: the next generation may be gone (collected by gc after a
/// long pause of this process), and the follower would never see another.
const CATCH_UP_EVERY: u64 = 30;

/// The root reads see, and where newer ones come from.
pub(super) struct Roots {
    store: Store,
    superblock: Superblock,
    codec: Codec,
    /// The size served: what the root had when the volume was opened.
    size: u64,
    current: ArcSwap<Root>,
    /// The last generation refused (see [`Roots::install`]), said once.
    refused: AtomicU64,
}

impl Roots {
    pub fn new(store: Store, superblock: Superblock, codec: Codec, root: Root) -> Roots {
        Roots {
            store,
            size: root.size,
            superblock,
            codec,
            current: ArcSwap::from_pointee(root),
            refused: AtomicU64::new(0),
        }
    }

    /// The root to read, loaded once per request.
    pub fn current(&self) -> Arc<Root> {
        self.current.load_full()
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    /// Fails with `EngineError::NoSuchSnapshot` if snapshot `snapshot`
    /// of the volume was deleted.
    pub async fn check_snapshot(&self, snapshot: &str) -> Result<()> {
        let store = &self.store;
        catalog::read_snapshot(store, &self.superblock, &self.codec, snapshot)
            .await
            .map(drop)
    }

    /// Takes the next generations, as far as they go; says whether any
    /// was taken.
    pub async fn step(&self) -> Result<bool> {
        let mut newest = None;
        let mut generation = self.current.load().generation;
        while let Some(next) = self.root_at(generation + 1).await? {
            generation = next.generation;
            newest = Some(next);
        }
        Ok(newest.is_some_and(|root| self.install(root)))
    }

    /// Takes the newest root, however far ahead it is; says whether it
    /// was newer.
    pub async fn catch_up(&self) -> Result<bool> {
        let newest = catalog::newest_root(&self.store, &self.superblock, &self.codec).await;
        if let Err(EngineError::Unfinished(_)) = &newest {
            // No root at all: deleted since it was opened, most likely.
            catalog::superblock(&self.store, &self.superblock.name).await?;
        }
        Ok(self.install(newest?))
    }

    /// Whether a newer generation than `generation` exists in the store
    /// (the next ones may be collected already: the newest is read).
    pub async fn replaced(&self, generation: u64) -> Result<bool> {
        let newest = catalog::newest_root(&self.store, &self.superblock, &self.codec).await?;
        Ok(newest.generation > generation)
    }

    async fn root_at(&self, generation: u64) -> Result<Option<Root>> {
        catalog::root_at(&self.store, &self.superblock, &self.codec, generation).await
    }

    /// Serves `root` from the next request on, if it is newer than the
    /// current one and backs the size served; says whether it did.
    fn install(&self, root: Root) -> bool {
        let name = &self.superblock.name;
        if root.size < self.size {
            if self.refused.swap(root.generation, Relaxed) == root.generation {
                return false;
            }
            tracing::warn!(
                volume = %name,
                generation = root.generation,
                size = root.size,
                served = self.size,
                "not following a root smaller than the volume served (volumes only grow: the bucket was changed behind zeroblk's back); reads stay on the root before it"
            );
            return false;
        }
        let root = Arc::new(root);
        let previous = self
            .current
            .rcu(|current| match root.generation > current.generation {
                true => Arc::clone(&root),
                false => Arc::clone(current),
            });
        if previous.generation >= root.generation {
            return false;
        }
        if root.size > previous.size && previous.size == self.size {
            tracing::info!(
                volume = %name,
                size = root.size,
                served = self.size,
                "the volume grew; this reader keeps serving the size it was opened with (open it again to see the rest)"
            );
        }
        tracing::debug!(volume = %name, generation = root.generation, "following a new root");
        true
    }
}

/// Polls for the writer's new roots every `every` until aborted, taking
/// each between requests. A failed poll is tried again at the next one:
/// reads go on from the root they have.
pub(super) async fn follow(roots: Arc<Roots>, every: Duration) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await; // the first tick is now: the root was just read
    let mut failing = false;
    for poll in 1u64.. {
        ticks.tick().await;
        let polled = match poll.is_multiple_of(CATCH_UP_EVERY) {
            true => roots.catch_up().await,
            false => roots.step().await,
        };
        // Only a full look (catch_up) says the trouble is over: the next
        // generation's absence proves nothing.
        let full_look = poll.is_multiple_of(CATCH_UP_EVERY);
        match polled {
            Ok(_) if full_look && std::mem::replace(&mut failing, false) => {
                tracing::info!(volume = %roots.superblock.name, "following the writer again");
            }
            Ok(_) => {}
            Err(error) if !std::mem::replace(&mut failing, true) => {
                tracing::warn!(
                    volume = %roots.superblock.name,
                    %error,
                    "cannot look for the writer's new commits; reads go on from generation {}, and the next poll tries again",
                    roots.current.load().generation
                );
            }
            Err(error) => tracing::debug!(%error, "still cannot poll for new commits"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::catalog::{self, NewVolume};
    use crate::format::{Compression, RootKind};

    async fn volume(store: &Store) -> (Superblock, Root) {
        let new = NewVolume {
            name: "v".into(),
            size: 1 << 30,
            chunk_size: 1 << 20,
            compression: Compression::default(),
            encrypt_with: None,
        };
        let superblock = catalog::create(store, &new).await.unwrap();
        let root = catalog::newest_root(store, &superblock, &Codec::clear())
            .await
            .unwrap();
        (superblock, root)
    }

    /// The next generation of `root`, `size` bytes long.
    fn resized(root: &Root, size: u64) -> Root {
        let mut next = root.succeeded_by(RootKind::Commit);
        next.size = size;
        let pages = crate::format::root::page_count(size, next.chunk_size);
        next.pages.resize(pages, crate::format::PageSlot::EMPTY);
        next
    }

    async fn publish(store: &Store, root: &Root) {
        catalog::publish_root(store, "v", &Codec::clear(), root)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn roots_move_only_forward_and_never_shrink() {
        let store = Store::memory();
        let (superblock, first) = volume(&store).await;
        let roots = Roots::new(store.clone(), superblock, Codec::clear(), first.clone());
        assert!(!roots.step().await.unwrap(), "nothing new yet");
        let second = first.succeeded_by(RootKind::Commit);
        let third = resized(&second, 2 << 30);
        publish(&store, &second).await;
        publish(&store, &third).await;
        assert!(roots.step().await.unwrap());
        assert_eq!(roots.current().generation, 2, "both steps at once");
        assert_eq!(roots.size(), 1 << 30, "the size opened with is served");
        assert!(!roots.install(second.clone()), "an older root is not taken");
        let smaller = resized(&third, 1 << 20);
        publish(&store, &smaller).await;
        assert!(!roots.step().await.unwrap());
        assert_eq!(roots.current().generation, 2, "a smaller root is refused");
        assert!(roots.replaced(2).await.unwrap());
        assert!(!roots.replaced(3).await.unwrap());
    }

    #[tokio::test]
    async fn catching_up_skips_generations_that_are_gone() {
        let store = Store::memory();
        let (superblock, first) = volume(&store).await;
        let roots = Roots::new(store.clone(), superblock, Codec::clear(), first.clone());
        let mut newest = first.clone();
        for _ in 0..3 {
            newest = newest.succeeded_by(RootKind::Commit);
            publish(&store, &newest).await;
        }
        // Collected by gc while this reader slept.
        store
            .delete(&crate::format::keys::root("v", 1))
            .await
            .unwrap();
        assert!(!roots.step().await.unwrap(), "the next generation is gone");
        assert!(roots.catch_up().await.unwrap());
        assert_eq!(roots.current().generation, 3);
    }
}
