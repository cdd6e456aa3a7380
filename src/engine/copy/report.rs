//! What a copy did (or, in a dry run, would do).

use serde::Serialize;

use super::plan::{Kind, Needed};

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
    pub(super) source: String,
    /// `DST@SNAP`, or `DST` in a dry run without a snapshot.
    pub(super) destination: String,
    /// The store written to.
    pub(super) store: String,
    /// The snapshot copied (`None` in a dry run of a volume without
    /// `@SNAP`, which takes none).
    pub(super) snapshot: Option<String>,
    /// Whether the copy took the snapshot it copied.
    pub(super) snapshot_taken: bool,
    pub(super) dry_run: bool,
    /// The destination volume's newest generation, which reads as the
    /// snapshot (`None` in a dry run).
    pub(super) generation: Option<u64>,
    /// Whether the destination volume read as the snapshot already.
    pub(super) up_to_date: bool,
    /// Objects copied (would be, in a dry run), each checked first.
    pub(super) copied: Moved,
    /// Objects the destination held already.
    pub(super) already_there: Tally,
    /// Objects gone from the destination by the final check (a gc there
    /// deleted what an interrupted run had left), and copied again.
    pub(super) copied_again: Tally,
    /// Objects found at the destination with their size by the final
    /// check: every object the snapshot references.
    pub(super) verified: u64,
}

impl CopyReport {
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
