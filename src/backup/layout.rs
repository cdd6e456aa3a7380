//! Where a backup destination keeps what: the keys of its objects, and
//! the names that may appear in them.
//!
//! ```text
//! zeroblk-backups                              the marker: this prefix holds chains
//! meta/VOLUME/SUBVOLUME/head                   names the current sequence
//! meta/VOLUME/SUBVOLUME/SEQ/sequence           the sequence's snapshots, in order
//! meta/VOLUME/SUBVOLUME/SEQ/snapshots/SNAP     one snapshot: parent, UUIDs, chunks
//! data/VOLUME/SUBVOLUME/SEQ/SNAP/00000000      the snapshot's send stream, in chunks
//! ```
//!
//! A sequence is named after the snapshot its full stream holds. Metadata
//! and data live under separate prefixes: `backup list` reads only
//! `meta/`, and a storage class applies to `data/` alone.

use super::BackupError;

pub const MARKER: &str = "zeroblk-backups";
const META: &str = "meta";
const DATA: &str = "data";

/// The longest name zeroblk puts in a key: a volume, a subvolume or a
/// snapshot.
const NAME_MAX: usize = 200;

/// Checks a name before it goes into a key or, on restore, a path. Names
/// read from the destination are checked too: the bucket is untrusted.
pub fn check_name(what: &str, name: &str) -> Result<(), BackupError> {
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '@' | '.' | '-' | '_');
    let fine = !name.is_empty()
        && name.len() <= NAME_MAX
        && !name.starts_with('.')
        && name.chars().all(allowed);
    match fine {
        true => Ok(()),
        false => Err(BackupError::BadName {
            what: what.to_string(),
            name: name.chars().take(NAME_MAX).collect(),
        }),
    }
}

/// One subvolume of one volume: the unit a chain belongs to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Lineage {
    volume: String,
    subvolume: String,
}

impl Lineage {
    pub fn new(volume: &str, subvolume: &str) -> Result<Lineage, BackupError> {
        check_name("volume", volume)?;
        check_name("subvolume", subvolume)?;
        Ok(Lineage {
            volume: volume.to_string(),
            subvolume: subvolume.to_string(),
        })
    }

    pub fn volume(&self) -> &str {
        &self.volume
    }

    pub fn subvolume(&self) -> &str {
        &self.subvolume
    }

    /// Where every sequence of this lineage keeps its metadata.
    pub fn meta_prefix(&self) -> String {
        format!("{META}/{}/{}", self.volume, self.subvolume)
    }

    pub fn head_key(&self) -> String {
        format!("{}/head", self.meta_prefix())
    }

    pub fn sequence_key(&self, sequence: &str) -> String {
        format!("{}/{sequence}/sequence", self.meta_prefix())
    }

    pub fn record_key(&self, sequence: &str, snapshot: &str) -> String {
        format!("{}/{sequence}/snapshots/{snapshot}", self.meta_prefix())
    }

    /// Where one snapshot's chunks are.
    pub fn data_prefix(&self, sequence: &str, snapshot: &str) -> String {
        format!(
            "{DATA}/{}/{}/{sequence}/{snapshot}",
            self.volume, self.subvolume
        )
    }

    /// Where every sequence of this lineage keeps its chunks.
    pub fn data_lineage_prefix(&self) -> String {
        format!("{DATA}/{}/{}", self.volume, self.subvolume)
    }

    /// Where a whole sequence's chunks are.
    pub fn sequence_data_prefix(&self, sequence: &str) -> String {
        format!("{DATA}/{}/{}/{sequence}", self.volume, self.subvolume)
    }

    pub fn chunk_key(&self, sequence: &str, snapshot: &str, index: u32) -> String {
        format!("{}/{index:08}", self.data_prefix(sequence, snapshot))
    }
}

impl std::fmt::Display for Lineage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.volume, self.subvolume)
    }
}

/// The top-level prefixes a destination of chains may hold.
pub fn is_chain_prefix(name: &str) -> bool {
    name == META || name == DATA
}

pub fn meta_root() -> &'static str {
    META
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_could_escape_a_key_or_a_path_are_refused() {
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "a b",
            "a\0b",
            "ä",
            &"x".repeat(201),
        ] {
            assert!(check_name("snapshot", bad).is_err(), "{bad:?}");
        }
        for good in [
            "@",
            "@home",
            "@home.2026-11-22T055116Z.before-upgrade",
            "vol_1",
        ] {
            check_name("snapshot", good).unwrap();
        }
    }

    #[test]
    fn metadata_and_data_live_apart() {
        let lineage = Lineage::new("data", "@home").unwrap();
        assert_eq!(lineage.head_key(), "meta/data/@home/head");
        assert_eq!(lineage.sequence_key("S"), "meta/data/@home/S/sequence");
        assert_eq!(
            lineage.record_key("S", "X"),
            "meta/data/@home/S/snapshots/X"
        );
        assert_eq!(
            lineage.chunk_key("S", "X", 7),
            "data/data/@home/S/X/00000007"
        );
        assert!(
            lineage
                .chunk_key("S", "X", 7)
                .starts_with(&lineage.data_prefix("S", "X"))
        );
    }
}
