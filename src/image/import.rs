//! `zeroblk volume import FILE NAME`: a raw image into a volume, moving
//! only its data (see the module documentation of [`super`]).

use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio::sync::mpsc;

use super::blocks::{self, Piece};
use super::error::ImageError;
use super::source::{ImageSource, Opened};
use crate::crypto::Password;
use crate::engine::{self, EngineError, EngineOptions, Meter, NewVolume, Unit, Volume};
use crate::format::{Compression, DEFAULT_CHUNK_SIZE};
use crate::size::ByteSize;
use crate::store::Store;

/// Pieces read ahead of the writes.
const PIECES_AHEAD: usize = 16;
/// Writes to the volume in flight at once.
const WRITES_IN_FLIGHT: usize = 8;

/// What `import` is asked to do.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub source: ImageSource,
    pub volume: String,
    /// How the volume is made if it does not exist.
    pub new_volume: NewShape,
    /// How the volume is opened to write.
    pub options: EngineOptions,
}

/// The volume an import makes when it does not exist yet. What is given
/// explicitly (`Some`, `encrypt`) must match an existing volume: it only
/// shapes a new one, and saying nothing would leave the user believing
/// the volume took it.
#[derive(Debug, Clone, Default)]
pub struct NewShape {
    /// Its size; by default the image's, rounded up to whole blocks.
    pub size: Option<u64>,
    /// By default [`DEFAULT_CHUNK_SIZE`].
    pub chunk_size: Option<u64>,
    /// By default [`Compression::default`].
    pub compression: Option<Compression>,
    /// Encryption was asked for (`--encrypt`).
    pub encrypt: bool,
    /// The new volume's password, if it is encrypted.
    pub encrypt_with: Option<Password>,
}

/// What `import` did.
#[derive(Debug, Clone, Serialize)]
pub struct ImportReport {
    pub source: String,
    pub volume: String,
    /// Whether the import made the volume.
    pub created: bool,
    pub volume_size: u64,
    pub chunk_size: u64,
    /// How the volume compresses its chunks (`zstd:3`, `none`).
    pub compression: String,
    /// The image's bytes (read, or known to be holes).
    pub image_bytes: u64,
    /// Bytes written: the image's data blocks.
    pub written_bytes: u64,
    /// Bytes zeroed where the volume held data and the image holes or
    /// zero blocks.
    pub zeroed_bytes: u64,
    /// The generation that committed it.
    pub generation: u64,
}

/// Writes the image `request` names over its volume (made if missing),
/// telling `meter` of the image's bytes done, and commits: when this
/// returns `Ok`, the store holds the image.
pub async fn import(
    store: &Store,
    request: &ImportRequest,
    meter: &dyn Meter,
) -> Result<ImportReport, ImageError> {
    let source = request.source.clone();
    let opened = crate::blocking::run(move || Opened::open(&source)).await?;
    let image_size = opened.size();
    let (volume, created) = open_or_create(store, request, image_size).await?;
    if let Err(error) = refuse_too_small(&volume, image_size) {
        close_after_failure(&volume).await;
        return Err(error);
    }
    meter.stage("importing", Unit::Bytes, image_size);
    let watch = opened.watch();
    let tail = match image_size {
        Some(size) if !created => match volume_tail(&volume, size).await {
            Ok(tail) => tail,
            Err(error) => {
                close_after_failure(&volume).await;
                return Err(error);
            }
        },
        _ => None,
    };
    let filled = fill(&volume, opened, created, meter).await;
    let filled = match (filled, tail) {
        (Ok(tally), Some(tail)) => tail.put_back(&volume).await.map(|()| tally),
        (filled, _) => filled,
    };
    let tally = match filled {
        Ok(tally) => tally,
        Err(error) => {
            close_after_failure(&volume).await;
            return Err(interrupted(&request.volume, error));
        }
    };
    volume.commit().await?;
    let generation = volume.counters().generation;
    volume.close().await?;
    if let (Some(watch), ImageSource::File(file)) = (&watch, &request.source)
        && !watch.still()
    {
        return Err(ImageError::ChangedMeanwhile { file: file.clone() });
    }
    Ok(ImportReport {
        source: request.source.describe(),
        volume: request.volume.clone(),
        created,
        volume_size: volume.size(),
        chunk_size: volume.superblock().chunk_size,
        compression: volume.superblock().compression.to_string(),
        image_bytes: image_size.unwrap_or(tally.image),
        written_bytes: tally.written,
        zeroed_bytes: tally.zeroed,
        generation,
    })
}

/// The bytes of an existing volume past the end of an image of `size`
/// bytes, within the image's last block: the import writes whole blocks,
/// and these must read as they did (the volume past the image's end stays
/// as it was, as `dd` leaves a disk).
struct Tail {
    block: u64,
    image_part: usize,
    volume_bytes: Vec<u8>,
}

async fn volume_tail(volume: &Volume, size: u64) -> Result<Option<Tail>, ImageError> {
    let block_size = crate::format::BLOCK_SIZE;
    let image_part = (size % block_size) as usize;
    let block = size - image_part as u64;
    if image_part == 0 || block + block_size > volume.size() {
        return Ok(None);
    }
    let mut volume_bytes = vec![0u8; block_size as usize];
    volume.read(block, &mut volume_bytes).await?;
    Ok(Some(Tail {
        block,
        image_part,
        volume_bytes,
    }))
}

impl Tail {
    /// Writes the volume's own bytes back after the image's in its last
    /// block.
    async fn put_back(self, volume: &Volume) -> Result<(), ImageError> {
        let mut block = vec![0u8; self.volume_bytes.len()];
        volume.read(self.block, &mut block).await?;
        block[self.image_part..].copy_from_slice(&self.volume_bytes[self.image_part..]);
        volume.write(self.block, &block, false).await?;
        Ok(())
    }
}

/// Opens the volume to write (its lease keeps out any other writer), or
/// makes it for an image of `image_size` bytes first; says whether it
/// made it.
async fn open_or_create(
    store: &Store,
    request: &ImportRequest,
    image_size: Option<u64>,
) -> Result<(Volume, bool), ImageError> {
    let name = &request.volume;
    match Volume::open(store, name, request.options.clone()).await {
        Ok(volume) => {
            return match another_shape(&volume, request) {
                None => Ok((volume, false)),
                Some(refusal) => {
                    close_after_failure(&volume).await;
                    Err(refusal)
                }
            };
        }
        Err(EngineError::NoSuchVolume(_)) => {}
        Err(error) => return Err(error.into()),
    }
    let new = NewVolume {
        name: name.clone(),
        size: new_size(name, &request.new_volume, image_size)?,
        chunk_size: request.new_volume.chunk_size.unwrap_or(DEFAULT_CHUNK_SIZE),
        compression: request.new_volume.compression.unwrap_or_default(),
        encrypt_with: request.new_volume.encrypt_with.clone(),
    };
    let created = match engine::create(store, &new).await {
        Ok(_) => true,
        // Made meanwhile by someone else: written over like any other.
        Err(EngineError::VolumeExists(_)) => false,
        Err(error) => return Err(error.into()),
    };
    let volume = Volume::open(store, name, request.options.clone()).await?;
    Ok((volume, created))
}

/// Why an existing `volume` is not the one the request shapes, if it is
/// not: a size, chunk size, compression or encryption given explicitly
/// that it does not have.
fn another_shape(volume: &Volume, request: &ImportRequest) -> Option<ImageError> {
    let (shape, superblock) = (&request.new_volume, volume.superblock());
    let name = request.volume.clone();
    if let Some(asked) = shape.size.filter(|&asked| asked != superblock.size) {
        return Some(ImageError::SizeOfExisting {
            volume: name,
            size: superblock.size,
            asked,
        });
    }
    let layout = |has: String, flag: String| ImageError::LayoutOfExisting {
        volume: name.clone(),
        has,
        flag,
    };
    if let Some(asked) = shape.chunk_size.filter(|&c| c != superblock.chunk_size) {
        return Some(layout(
            format!("{} chunks", ByteSize(superblock.chunk_size)),
            format!("--chunk-size {}", ByteSize(asked)),
        ));
    }
    if let Some(asked) = shape.compression.filter(|&c| c != superblock.compression) {
        return Some(layout(
            format!("compression {}", superblock.compression),
            format!("--compression {asked}"),
        ));
    }
    if shape.encrypt && superblock.encryption.is_none() {
        return Some(layout("no encryption".into(), "--encrypt".into()));
    }
    None
}

/// The size of a volume made for an image of `image_size` bytes.
fn new_size(name: &str, shape: &NewShape, image_size: Option<u64>) -> Result<u64, ImageError> {
    match (shape.size, image_size) {
        (Some(size), Some(image)) if image > size => Err(ImageError::SizeTooSmall {
            image,
            volume: name.to_string(),
            size,
        }),
        (Some(size), _) => Ok(size),
        (None, Some(image)) => Ok(blocks::round_up(image)),
        (None, None) => Err(ImageError::SizeNeeded {
            volume: name.to_string(),
        }),
    }
}

/// Refuses an image larger than `volume`, before anything is written.
fn refuse_too_small(volume: &Volume, image_size: Option<u64>) -> Result<(), ImageError> {
    match image_size {
        Some(image) if image > volume.size() => Err(ImageError::TooLarge {
            image,
            volume: volume.name().to_string(),
            size: volume.size(),
        }),
        _ => Ok(()),
    }
}

/// Closes a volume an import gives up on: what it wrote is committed, and
/// the lease let go. A failure to is logged; the import's error is the one
/// to report.
async fn close_after_failure(volume: &Volume) {
    if let Err(error) = volume.close().await {
        tracing::warn!(%error, "could not close volume {} after the import failed", volume.name());
    }
}

/// `error`, which stopped an import into `volume` part way, saying so
/// (an error that says what was written already stays as it is).
fn interrupted(volume: &str, error: ImageError) -> ImageError {
    match error {
        ImageError::StreamTooLong { .. } => error,
        error => ImageError::Interrupted {
            volume: volume.to_string(),
            cause: Box::new(error),
        },
    }
}

/// What an import moved.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    image: u64,
    written: u64,
    zeroed: u64,
}

impl Tally {
    fn add(mut self, other: Tally) -> Tally {
        self.image += other.image;
        self.written += other.written;
        self.zeroed += other.zeroed;
        self
    }
}

/// Reads the image on a thread of its own and writes its pieces to
/// `volume` as they come. A volume the import `created` reads as zeroes
/// everywhere, so zero pieces cost nothing there.
async fn fill(
    volume: &Volume,
    opened: Opened,
    created: bool,
    meter: &dyn Meter,
) -> Result<Tally, ImageError> {
    let (sender, receiver) = mpsc::channel(PIECES_AHEAD);
    let reading = crate::blocking::run(move || opened.send_pieces(sender));
    let pieces = futures::stream::unfold(receiver, |mut receiver| async move {
        receiver.recv().await.map(|piece| (piece, receiver))
    });
    let writing = pieces
        .map(|piece| async move {
            let tally = put(volume, piece?, created).await?;
            meter.advance(tally.image);
            Ok::<_, ImageError>(tally)
        })
        .buffer_unordered(WRITES_IN_FLIGHT)
        .try_fold(Tally::default(), |sum, tally| async move {
            Ok::<_, ImageError>(sum.add(tally))
        });
    // A failed write drops the receiver, which stops the reading.
    let ((), written) = tokio::join!(reading, writing);
    written
}

/// Puts one piece of the image in `volume`.
async fn put(volume: &Volume, piece: Piece, created: bool) -> Result<Tally, ImageError> {
    if piece.end() > volume.size() {
        return Err(ImageError::StreamTooLong {
            volume: volume.name().to_string(),
            size: volume.size(),
        });
    }
    let image = piece.len();
    match piece {
        Piece::Data { offset, bytes } => {
            volume.write(offset, &bytes, false).await?;
            Ok(Tally {
                image,
                written: image,
                zeroed: 0,
            })
        }
        Piece::Tail { offset, bytes } => {
            let mut block = vec![0u8; crate::format::BLOCK_SIZE as usize];
            volume.read(offset, &mut block).await?;
            block[..bytes.len()].copy_from_slice(&bytes);
            volume.write(offset, &block, false).await?;
            Ok(Tally {
                image,
                written: image,
                zeroed: 0,
            })
        }
        Piece::Zero { .. } if created => Ok(Tally {
            image,
            ..Tally::default()
        }),
        Piece::Zero { offset, len } => {
            let zeroed = zero_where_data(volume, offset, len).await?;
            Ok(Tally {
                image,
                written: 0,
                zeroed,
            })
        }
    }
}

/// Zeroes the parts of `len` bytes at `offset` where `volume` holds data;
/// returns how many bytes that was.
async fn zero_where_data(volume: &Volume, offset: u64, len: u64) -> Result<u64, ImageError> {
    let mut at = offset;
    let mut zeroed = 0;
    for extent in volume.allocation(offset, len).await? {
        if !extent.zero {
            volume.write_zeroes(at, extent.len, false).await?;
            zeroed += extent.len;
        }
        at += extent.len;
    }
    Ok(zeroed)
}
