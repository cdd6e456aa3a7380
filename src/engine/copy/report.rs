//! What a copy did (or, in a dry run, would do).

use serde::Serialize;

use super::plan::{Kind, Needed, Plan};
use super::source::Source;
use crate::store::Store;

/// A count of objects and their bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Tally {
    objects: u64,
    bytes: u64,
}

impl Tally {
    pub fn objects(&self) -> u64 {
        self.objects
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    fn add(&mut self, need: &Needed) {
        self.objects += 1;
        self.bytes += need.size();
    }

    pub(super) fn of<'a>(needed: impl IntoIterator<Item = &'a Needed>) -> Tally {
        let mut tally = Tally::default();
        needed.into_iter().for_each(|need| tally.add(need));
        tally
    }
}

/// The objects a copy moved (would move, in a dry run), by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Moved {
    pages: Tally,
    packs: Tally,
    chunks: Tally,
}

impl Moved {
    pub(super) fn of<'a>(needed: impl IntoIterator<Item = &'a Needed>) -> Moved {
        let mut moved = Moved::default();
        for need in needed {
            match need.kind() {
                Kind::Page => moved.pages.add(need),
                Kind::Pack => moved.packs.add(need),
                Kind::Chunk => moved.chunks.add(need),
            }
        }
        moved
    }

    /// Map pages.
    pub fn pages(&self) -> Tally {
        self.pages
    }

    /// Packs, copied whole.
    pub fn packs(&self) -> Tally {
        self.packs
    }

    /// Chunks, as objects of their own.
    pub fn chunks(&self) -> Tally {
        self.chunks
    }

    pub fn total(&self) -> Tally {
        Tally {
            objects: self.pages.objects + self.packs.objects + self.chunks.objects,
            bytes: self.pages.bytes + self.packs.bytes + self.chunks.bytes,
        }
    }
}

/// What `copy` did.
#[derive(Debug, Clone, Serialize)]
pub struct CopyReport {
    source: String,
    /// `DST@SNAP`, or `DST` in a dry run without a snapshot.
    destination: String,
    /// The store written to.
    store: String,
    /// The snapshot copied (`None` in a dry run of a volume without
    /// `@SNAP`, which takes none).
    snapshot: Option<String>,
    /// Whether the copy took the snapshot it copied.
    snapshot_taken: bool,
    dry_run: bool,
    /// The destination volume's newest generation, which reads as the
    /// snapshot (`None` in a dry run).
    generation: Option<u64>,
    /// Whether the destination volume read as the snapshot already.
    up_to_date: bool,
    /// Objects copied (would be, in a dry run), each checked first.
    copied: Moved,
    /// Objects the destination held already.
    already_there: Tally,
    /// Objects gone from the destination by the final check (a gc there
    /// deleted what an interrupted run had left), and copied again.
    copied_again: Tally,
    /// Objects found at the destination with their size by the final
    /// check: every object the snapshot references.
    verified: u64,
}

impl CopyReport {
    /// What copying `source` to volume `destination` of `to` as `plan`
    /// says will do, before it is done.
    pub(super) fn planned(
        source: &Source,
        destination: &str,
        to: &Store,
        dry_run: bool,
        plan: &Plan,
    ) -> CopyReport {
        CopyReport {
            source: source.describe(),
            destination: match source.snapshot() {
                Some(snapshot) => format!("{destination}@{snapshot}"),
                None => destination.to_string(),
            },
            store: to.url().to_string(),
            snapshot: source.snapshot().map(str::to_string),
            snapshot_taken: source.taken(),
            dry_run,
            generation: None,
            up_to_date: false,
            copied: Moved::of(plan.missing()),
            already_there: Tally::of(plan.present()),
            copied_again: Tally::default(),
            verified: 0,
        }
    }

    /// The report of a copy that ended: `copied_again` after the final
    /// check found `verified` objects there, and `published` as the
    /// destination's generation and whether it read so already.
    pub(super) fn finished(
        self,
        copied_again: Tally,
        verified: u64,
        (generation, up_to_date): (u64, bool),
    ) -> CopyReport {
        CopyReport {
            copied_again,
            verified,
            generation: Some(generation),
            up_to_date,
            ..self
        }
    }

    /// `NAME@SNAP` copied (`NAME` in a dry run without a snapshot).
    pub fn source(&self) -> &str {
        &self.source
    }

    pub fn destination(&self) -> &str {
        &self.destination
    }

    pub fn store(&self) -> &str {
        &self.store
    }

    pub fn snapshot(&self) -> Option<&str> {
        self.snapshot.as_deref()
    }

    pub fn snapshot_taken(&self) -> bool {
        self.snapshot_taken
    }

    pub fn dry_run(&self) -> bool {
        self.dry_run
    }

    pub fn generation(&self) -> Option<u64> {
        self.generation
    }

    pub fn up_to_date(&self) -> bool {
        self.up_to_date
    }

    pub fn copied(&self) -> Moved {
        self.copied
    }

    pub fn already_there(&self) -> Tally {
        self.already_there
    }

    pub fn copied_again(&self) -> Tally {
        self.copied_again
    }

    pub fn verified(&self) -> u64 {
        self.verified
    }
}
