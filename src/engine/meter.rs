//! How far a long operation got (`volume verify`, `gc`, an image import
//! or export), told to whoever watches: the command line draws a progress
//! bar from it. A narrow trait, so that nothing here knows of terminals.

/// What a stage counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unit {
    Bytes,
    Objects,
}

/// Told how a long operation advances; every method may do nothing.
pub trait Meter: Send + Sync {
    /// A stage starts: `what` it does, counted in `unit`, `total` of them
    /// if known. What was counted of the stage before starts over.
    fn stage(&self, _what: &str, _unit: Unit, _total: Option<u64>) {}
    /// `done` more of the stage are done.
    fn advance(&self, _done: u64) {}
}

/// A meter nobody reads.
pub struct Unmetered;

impl Meter for Unmetered {}
