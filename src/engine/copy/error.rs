//! What can stop a copy, each said with what to do about it.

use uuid::Uuid;

use super::super::error::EngineError;
use crate::format::FormatError;
use crate::store::StoreError;

/// A copy that did not finish. Whatever it copied stays at the
/// destination, and the next run copies only the rest.
#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Format(#[from] FormatError),
    #[error(
        "{store} already holds a different volume named `{name}` (uuid {found}; the copy's is {copying}): copy under another name (`zeroblk volume copy SRC --to URL NEWNAME`), or delete that volume there first"
    )]
    OtherVolume {
        store: String,
        name: String,
        found: Uuid,
        copying: Uuid,
    },
    #[error(
        "volume `{name}` in {store} was partly deleted: finish with `zeroblk --store {store} volume delete {name}`, then copy again"
    )]
    PartlyDeleted { store: String, name: String },
    #[error(
        "volume `{name}` in {store} is attached ({holder}), and a copy would replace its state under its writer: detach it there first, then copy again"
    )]
    Attached {
        store: String,
        name: String,
        holder: String,
    },
    #[error(
        "volume `{name}` in {store} was not detached by its last writer, whose log may hold writes the store lacks: on the host that wrote it, open it with that writer's --cache-dir so its log is replayed (`zeroblk attach` then `detach`, or `zeroblk serve` then Ctrl-C), then copy again"
    )]
    NotDetached { store: String, name: String },
    #[error(
        "{store} already has a snapshot `{name}@{snapshot}` that is not the one being copied: delete it there (`zeroblk --store {store} volume snapshot delete {name} {snapshot}`), or copy under another name"
    )]
    OtherSnapshot {
        store: String,
        name: String,
        snapshot: String,
    },
    #[error(
        "{key} is missing from {store}, though `{what}` references it: the snapshot was deleted, or gc split a pack, while the copy ran; run the copy again (it goes on where it stopped)"
    )]
    SourceMissing {
        store: String,
        key: String,
        what: String,
    },
    #[error(
        "{key} is not in {store} with its {size} bytes, though it was just copied there: that store loses or changes objects; check it, then copy again"
    )]
    NotKept {
        store: String,
        key: String,
        size: u64,
    },
}
