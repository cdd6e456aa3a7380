//! The sealed epochs of a volume's view: every epoch a flush sealed that
//! no commit has installed yet.
//!
//! A view is replaced as a whole on every seal, and a flush seals one
//! epoch, so with a flush after each write (a database's fdatasync) the
//! epochs of a whole commit interval pile up: thousands of them. Copying
//! them into each new view made a flush cost time in proportion to the
//! flushes before it (a third of the daemon's CPU in the fdatasync
//! profile). Here they are a persistent list, newest first: a new view
//! shares every node of the old one and adds one, and a commit, which
//! takes the oldest epochs away, rebuilds only what is left.

use std::collections::HashSet;
use std::sync::Arc;

use super::epoch::Epoch;

/// Sealed epochs, shared between views; cloning costs one reference.
#[derive(Clone, Default)]
pub(super) struct SealedEpochs {
    newest: Option<Arc<Node>>,
}

struct Node {
    epoch: Arc<Epoch>,
    older: Option<Arc<Node>>,
}

impl SealedEpochs {
    /// The epochs `oldest_first`, as replay finds them.
    pub fn from_oldest_first(oldest_first: Vec<Arc<Epoch>>) -> SealedEpochs {
        oldest_first
            .into_iter()
            .fold(SealedEpochs::default(), |sealed, epoch| {
                sealed.with_newest(epoch)
            })
    }

    /// These epochs and `epoch`, sealed after all of them.
    pub fn with_newest(&self, epoch: Arc<Epoch>) -> SealedEpochs {
        SealedEpochs {
            newest: Some(Arc::new(Node {
                epoch,
                older: self.newest.clone(),
            })),
        }
    }

    /// These epochs without `committed` (a commit takes the oldest ones;
    /// epochs sealed while it ran stay).
    pub fn without(&self, committed: &[Arc<Epoch>]) -> SealedEpochs {
        let gone: HashSet<*const Epoch> = committed.iter().map(Arc::as_ptr).collect();
        let mut kept: Vec<Arc<Epoch>> = self
            .newest_first()
            .filter(|epoch| !gone.contains(&Arc::as_ptr(epoch)))
            .cloned()
            .collect();
        kept.reverse();
        SealedEpochs::from_oldest_first(kept)
    }

    pub fn newest_first(&self) -> impl Iterator<Item = &Arc<Epoch>> {
        std::iter::successors(self.newest.as_deref(), |node| node.older.as_deref())
            .map(|node| &node.epoch)
    }

    /// Every epoch, oldest first: what a commit takes.
    pub fn oldest_first(&self) -> Vec<Arc<Epoch>> {
        let mut epochs: Vec<Arc<Epoch>> = self.newest_first().cloned().collect();
        epochs.reverse();
        epochs
    }

    pub fn oldest(&self) -> Option<&Arc<Epoch>> {
        self.newest_first().last()
    }
}

impl Drop for SealedEpochs {
    /// Frees the nodes only this list holds one by one: dropping a long
    /// list recursively would take a stack frame per epoch.
    fn drop(&mut self) {
        let mut next = self.newest.take();
        while let Some(node) = next {
            next = match Arc::try_unwrap(node) {
                Ok(mut node) => node.older.take(),
                // Another list shares the rest; it frees it.
                Err(_) => None,
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use proptest::prelude::*;

    use crate::engine::log::{RecordFormat, SEGMENT_HEADER_LEN, Segment, SegmentIdentity};

    fn ids<'a>(epochs: impl Iterator<Item = &'a Arc<Epoch>>) -> Vec<u64> {
        epochs.map(|epoch| epoch.id()).collect()
    }

    /// `count` epochs, numbered from 1, of one segment in `dir`.
    fn epochs(dir: &std::path::Path, count: u64) -> Vec<Arc<Epoch>> {
        let identity = SegmentIdentity {
            log_id: uuid::Uuid::new_v4(),
            volume: uuid::Uuid::new_v4(),
            seq: 1,
            first_epoch: 1,
            format: RecordFormat::Sequenced,
        };
        let segment = Arc::new(Segment::create(dir, identity).unwrap());
        (1..=count)
            .map(|id| {
                let segment = Arc::clone(&segment);
                Arc::new(Epoch::new(id, segment, SEGMENT_HEADER_LEN, 1 << 20, None))
            })
            .collect()
    }

    #[test]
    fn a_long_list_drops_without_recursing() {
        let dir = tempfile::tempdir().unwrap();
        let epoch = epochs(dir.path(), 1).remove(0);
        let mut sealed = SealedEpochs::default();
        for _ in 0..1_000_000 {
            sealed = sealed.with_newest(Arc::clone(&epoch));
        }
        drop(sealed);
        assert_eq!(Arc::strong_count(&epoch), 1);
    }

    proptest! {
        /// Against a vector of ids: seals add the newest, commits take the
        /// oldest ones (as many as had been sealed when they started), and
        /// views taken along the way stay as they were.
        #[test]
        fn behaves_as_a_vector(steps in prop::collection::vec(0u8..4, 1..200)) {
            let dir = tempfile::tempdir().unwrap();
            let all = epochs(dir.path(), steps.len() as u64);
            let (mut sealed, mut model) = (SealedEpochs::default(), Vec::<u64>::new());
            let mut views: Vec<(SealedEpochs, Vec<u64>)> = Vec::new();
            for (step, epoch) in steps.iter().zip(&all) {
                match step {
                    0 | 1 => {
                        sealed = sealed.with_newest(Arc::clone(epoch));
                        model.push(epoch.id());
                    }
                    2 => {
                        let taken = sealed.oldest_first();
                        let half = taken.len() / 2;
                        sealed = sealed.without(&taken[..half]);
                        model.drain(..half);
                    }
                    _ => views.push((sealed.clone(), model.clone())),
                }
                prop_assert_eq!(ids(sealed.oldest_first().iter()), model.clone());
                prop_assert_eq!(sealed.oldest().map(|e| e.id()), model.first().copied());
            }
            for (view, expected) in views {
                let mut newest_first = expected.clone();
                newest_first.reverse();
                prop_assert_eq!(ids(view.newest_first()), newest_first);
            }
        }
    }
}
