//! Backups of btrfs snapshots to object storage: `zeroblk backup push`,
//! `list`, `verify`, `restore` and `prune`.
//!
//! A backup is a chain of `btrfs send` streams: a full stream, then
//! streams sent against a parent (`btrfs send -p`), each holding only
//! what changed since. The streams are cut into chunks, compressed with
//! zstd and, when a push names age recipients, encrypted to every one of
//! them; they go to any store `store/` opens. The layout (`layout.rs`):
//! per volume and subvolume, a small head names the current sequence; a
//! sequence lists its snapshots in order; each snapshot's record holds
//! its parent, btrfs UUIDs, size and chunks (hash and size). Metadata
//! and data live under separate prefixes.
//!
//! What it promises:
//! - **Nothing half-written is listed.** A push stores its chunks, then
//!   its snapshot's record, then lists the snapshot in its sequence: that
//!   last write is the moment the push is complete. `list`, `verify`,
//!   `restore` and `prune` see only listed snapshots.
//! - **A listed snapshot can be restored** while its objects are intact:
//!   a prune never deletes a snapshot a kept one needs as a parent, and
//!   unlists before it deletes.
//! - **A push resumes** after an interruption, without sending again the
//!   chunks already stored (`journal.rs`, on the pushing host).
//! - **The bucket is untrusted.** Every object is bounded in size and
//!   checked before use; a chunk is checked against its record's hash
//!   before it is decrypted, and its decompressed size against the
//!   record; a received subvolume must carry the UUID its record names.
//!   Without the identity, encrypted backups reveal sizes, names and
//!   times, not contents (no plain hash of data is ever stored).
//!
//! It owns the backup format and the flow of each command; `provision/`
//! runs `btrfs send` and `receive`, `crypto/` does age, `store/` holds the
//! objects.

mod chunks;
mod codec;
mod destination;
mod error;
mod journal;
mod layout;
mod list;
mod prune;
mod push;
mod record;
mod restore;
mod verify;

pub use codec::Opener;
pub use destination::Destination;
pub use error::BackupError;
pub use list::{Chain, Listed, Listing, list};
pub use prune::{LineagePrune, Why, prune};
pub use push::{DEFAULT_CHUNK_SIZE, PushReport, PushRequest, Which, push};
pub use restore::{RestoreReport, restore};
pub use verify::{Bad, VerifyReport, verify};

/// What a long command shows as it runs; every method may do nothing.
pub trait Progress: Send + Sync {
    /// Whether a total is wanted before the work starts (a push then
    /// estimates its stream's size first).
    fn wants_total(&self) -> bool {
        false
    }
    /// The work starts: `total` bytes of send stream, if known.
    fn start(&self, _total: Option<u64>) {}
    /// `bytes` more of the stream were done.
    fn advance(&self, _bytes: u64) {}
}

/// Shows nothing.
pub struct Quiet;

impl Progress for Quiet {}
