//! Why a backup command failed; each says what to do about it.

use crate::crypto::CryptoError;
use crate::provision::ProvisionError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    #[error(transparent)]
    Crypto(#[from] CryptoError),
    #[error(
        "{url} holds objects that are not zeroblk backups (`{found}`): backups need a prefix of their own, such as s3://bucket/backups"
    )]
    NotAChain { url: String, found: String },
    #[error(
        "{url} holds no zeroblk backups (it has no `zeroblk-backups` object): check the URL; `zeroblk backup push` makes the first"
    )]
    NoBackups { url: String },
    #[error(
        "{key} is format {format}, newer than this zeroblk reads: upgrade zeroblk to use these backups"
    )]
    NewerFormat { key: String, format: u32 },
    #[error(
        "{key} is damaged: {reason}. The bucket was changed outside zeroblk: `zeroblk backup verify` names every damaged object"
    )]
    Damaged { key: String, reason: String },
    #[error(
        "`{name}` cannot name a {what} in a backup: use letters, digits, `@`, `.`, `-` and `_`, not starting with `.`"
    )]
    BadName { what: String, name: String },
    #[error("{url} has no backup named {name}: `zeroblk backup list {url}` shows them")]
    NoSuchSnapshot { url: String, name: String },
    #[error("{name} names backups of several volumes in {url}: give one of {choices}")]
    Ambiguous {
        url: String,
        name: String,
        choices: String,
    },
    #[error(
        "{snapshot} is encrypted: give --age-identity FILE, the age identity of one of its recipients"
    )]
    IdentityNeeded { snapshot: String },
    #[error(
        "the backups of {lineage} in {url} are encrypted: give --age-recipient KEY (a push never stores an encrypted chain's next snapshot in the clear)"
    )]
    RecipientsNeeded { lineage: String, url: String },
    #[error(
        "the chain {sequence} of {lineage} was pruned while this push sent a snapshot against it (a prune elsewhere): nothing of this push is listed; push again"
    )]
    ChainPruned { lineage: String, sequence: String },
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{failed} of {checked} objects the backups need are bad or missing (listed above)")]
    VerifyFailed { failed: usize, checked: usize },
}

impl BackupError {
    /// Whether the command stopped part way for a reason outside it (the
    /// store, the disk), so that running it again goes on.
    pub fn is_interruption(&self) -> bool {
        matches!(self, BackupError::Store(_) | BackupError::Io { .. })
    }

    pub(super) fn damaged(key: &str, reason: impl std::fmt::Display) -> BackupError {
        BackupError::Damaged {
            key: key.to_string(),
            reason: reason.to_string(),
        }
    }

    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> BackupError {
        let what = what.into();
        move |source| BackupError::Io { what, source }
    }
}
