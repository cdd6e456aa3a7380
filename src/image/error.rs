//! Why an import or an export failed; each says what to do about it.

use std::path::PathBuf;

use crate::engine::EngineError;
use crate::size::{ByteSize, human};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The I/O error is shown in this error's own line, so not a `source`.
    #[error("{what}: {cause}")]
    Io { what: String, cause: std::io::Error },
    #[error(
        "{} is empty: there is nothing to import; make an empty volume with `zeroblk volume create NAME --size SIZE`",
        file.display()
    )]
    Empty { file: PathBuf },
    #[error(
        "the image is {} ({image} bytes), larger than volume `{volume}` ({}): grow the volume first with `zeroblk volume resize {volume} --size SIZE`, or import into a new volume",
        human(*image),
        human(*size)
    )]
    TooLarge {
        image: u64,
        volume: String,
        size: u64,
    },
    #[error(
        "the image is {} ({image} bytes), larger than the --size {} given for volume `{volume}`: give a larger --size, or leave it out to size the volume after the image",
        human(*image),
        ByteSize(*size)
    )]
    SizeTooSmall {
        image: u64,
        volume: String,
        size: u64,
    },
    #[error(
        "volume `{volume}` exists, at {}: --size {} only sizes a volume the import makes; leave --size out to write over it as it is, or grow it first with `zeroblk volume resize {volume} --size SIZE`",
        human(*size),
        ByteSize(*asked)
    )]
    SizeOfExisting {
        volume: String,
        size: u64,
        asked: u64,
    },
    #[error(
        "volume `{volume}` exists, with {has}: {flag} only shapes a volume the import makes; leave it out to write over the volume as it is, or import into a new volume name"
    )]
    LayoutOfExisting {
        volume: String,
        has: String,
        flag: String,
    },
    #[error(
        "volume `{volume}` does not exist, and the image is a stream (standard input, a pipe) with no size to make it with: give the new volume's size with --size SIZE, or create it first with `zeroblk volume create {volume} --size SIZE`"
    )]
    SizeNeeded { volume: String },
    #[error(
        "the image (a stream) holds more than volume `{volume}` ({size} bytes); what fit is written and committed: grow the volume with `zeroblk volume resize {volume} --size SIZE` and import again"
    )]
    StreamTooLong { volume: String, size: u64 },
    #[error(
        "{cause}; the import into volume `{volume}` stopped part way, and what it wrote is committed: run it again to write the whole image"
    )]
    Interrupted {
        volume: String,
        /// Shown in this error's own line, so not a `source`.
        cause: Box<ImageError>,
    },
    #[error(
        "{} changed while it was imported (its size or time is not what it was): what was written is committed, but it matches no one version of the file; import it again once nothing writes to it",
        file.display()
    )]
    ChangedMeanwhile { file: PathBuf },
    #[error("{} exists: give another file name, or --force to replace it", file.display())]
    Exists { file: PathBuf },
    #[error(
        "{} is not a regular file: an export writes an image file; to copy a volume onto a device, `zeroblk volume export NAME - | dd of=DEVICE bs=1M`",
        file.display()
    )]
    NotAFile { file: PathBuf },
}

impl ImageError {
    /// An I/O error, saying what was being done.
    pub(super) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ImageError {
        let what = what.into();
        move |cause| ImageError::Io { what, cause }
    }
}
