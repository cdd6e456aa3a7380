//! The superblock: what a volume is, written once when it is created.
//!
//! It is JSON so that `aws s3 cp s3://bucket/volumes/NAME/superblock.json -`
//! tells an operator what they are looking at. The volume's current size
//! lives in its newest [`Root`](super::Root) (it grows with `volume
//! resize`); `size` here is the size it was created with.
//!
//! An encrypted volume's superblock holds its data key, wrapped with the
//! password ([`KeyEnvelope`]), and says version 4. It is the one object a
//! `volume rekey` overwrites; every version of it wraps the same data key.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{CLEAR_VOLUME_VERSION, Compression, FORMAT_VERSION, FormatError};
use crate::crypto::KeyEnvelope;

/// The superblock version of an encrypted volume.
const ENCRYPTED_VOLUME_VERSION: u32 = 4;
/// The superblock version of a volume with snapshots, or a clone: its
/// objects may be referenced from outside its roots (snapshots, other
/// volumes), which a zeroblk older than snapshots would not see, and its
/// gc would delete them. Encrypted or not, as `encryption` says.
pub const SNAPSHOTS_VOLUME_VERSION: u32 = 5;

const FORMAT_NAME: &str = "zeroblk-volume";
/// No superblock is larger: a larger one is refused before it is read.
pub const MAX_LEN: u64 = 64 << 10;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Superblock {
    pub format: String,
    pub version: u32,
    pub uuid: Uuid,
    pub name: String,
    pub size: u64,
    pub chunk_size: u64,
    pub compression: Compression,
    pub created_at_ms: u64,
    /// The wrapped data key of an encrypted volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<KeyEnvelope>,
}

impl Superblock {
    /// A volume in the clear; see [`Superblock::encrypt`].
    pub fn new(name: &str, size: u64, chunk_size: u64, compression: Compression) -> Self {
        Superblock {
            format: FORMAT_NAME.to_string(),
            version: CLEAR_VOLUME_VERSION,
            uuid: Uuid::new_v4(),
            name: name.to_string(),
            size,
            chunk_size,
            compression,
            created_at_ms: super::root::now_ms(),
            encryption: None,
        }
    }

    /// Makes the volume an encrypted one, its data key in `envelope`
    /// (which must be bound to [`Superblock::key_binding`]).
    pub fn encrypt(&mut self, envelope: KeyEnvelope) {
        self.encryption = Some(envelope);
        self.version = ENCRYPTED_VOLUME_VERSION;
    }

    /// What an encrypted volume's key envelope is bound to: its name and
    /// uuid. A superblock moved under another volume's name, or given
    /// another's envelope, does not open.
    /// Marks the volume as one whose objects snapshots or clones may
    /// reference ([`SNAPSHOTS_VOLUME_VERSION`]); says whether that changed
    /// it.
    pub fn allow_snapshots(&mut self) -> bool {
        let changed = self.version < SNAPSHOTS_VOLUME_VERSION;
        self.version = self.version.max(SNAPSHOTS_VOLUME_VERSION);
        changed
    }

    pub fn key_binding(&self) -> Vec<u8> {
        format!("{}/{}", self.name, self.uuid).into_bytes()
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut json = serde_json::to_vec_pretty(self).expect("a superblock always serializes");
        json.push(b'\n');
        json
    }

    pub fn decode(what: &str, bytes: &[u8]) -> Result<Self, FormatError> {
        #[derive(Deserialize)]
        struct Version {
            format: String,
            version: u32,
        }
        let corrupt = |e: serde_json::Error| FormatError::corrupt(what, e.to_string());
        let head: Version = serde_json::from_slice(bytes).map_err(corrupt)?;
        if head.format != FORMAT_NAME {
            return Err(FormatError::corrupt(what, "not a zeroblk superblock"));
        }
        if head.version > FORMAT_VERSION {
            return Err(FormatError::NewerVersion {
                what: what.to_string(),
                found: head.version,
                supported: FORMAT_VERSION,
            });
        }
        let superblock: Superblock = serde_json::from_slice(bytes).map_err(corrupt)?;
        let encrypted = match superblock.version {
            SNAPSHOTS_VOLUME_VERSION.. => superblock.encryption.is_some(),
            version => version >= ENCRYPTED_VOLUME_VERSION,
        };
        if superblock.encryption.is_some() != encrypted {
            return Err(FormatError::corrupt(
                what,
                "its version and its encryption disagree: the bucket was changed outside zeroblk",
            ));
        }
        Ok(superblock)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let sb = Superblock::new("vol", 1 << 30, 1 << 20, Compression::default());
        let bytes = sb.encode();
        assert!(String::from_utf8_lossy(&bytes).contains("\"compression\": \"zstd:3\""));
        assert!(!String::from_utf8_lossy(&bytes).contains("encryption"));
        assert_eq!(Superblock::decode("sb", &bytes).unwrap(), sb);
    }

    #[test]
    fn a_volume_with_snapshots_is_version_5_encrypted_or_not() {
        let mut clear = Superblock::new("vol", 1 << 30, 1 << 20, Compression::None);
        assert!(clear.allow_snapshots());
        assert!(!clear.allow_snapshots());
        assert_eq!(clear.version, SNAPSHOTS_VOLUME_VERSION);
        assert_eq!(Superblock::decode("sb", &clear.encode()).unwrap(), clear);
        let mut downgraded = clear.clone();
        downgraded.version = ENCRYPTED_VOLUME_VERSION;
        assert!(Superblock::decode("sb", &downgraded.encode()).is_err());
    }

    #[test]
    fn newer_versions_are_refused() {
        let mut sb = Superblock::new("vol", 1 << 30, 1 << 20, Compression::None);
        sb.version = FORMAT_VERSION + 1;
        let error = Superblock::decode("sb", &sb.encode()).unwrap_err();
        assert!(matches!(error, FormatError::NewerVersion { .. }));
    }
}
