//! `zeroblk volume export NAME[@SNAP] FILE`: a volume into a raw image,
//! writing only its data (see the module documentation of [`super`]).

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use super::blocks::{self, Piece};
use super::error::ImageError;
use super::target::{ImageTarget, Sink};
use crate::engine::{EngineOptions, Follow, Meter, Unit, Volume, VolumeRef};
use crate::store::Store;

/// The volume's map is asked about this much at once.
const SPAN: u64 = 1 << 30;
/// Data is read this much at once.
const WINDOW: u64 = 4 << 20;
/// Pieces read ahead of the writes.
const PIECES_AHEAD: usize = 16;

/// What `export` is asked to do.
#[derive(Debug, Clone)]
pub struct ExportRequest {
    /// A volume (its newest commit) or a snapshot.
    pub source: VolumeRef,
    pub target: ImageTarget,
    /// How the volume is opened, read-only.
    pub options: EngineOptions,
}

/// What `export` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExportReport {
    pub source: String,
    pub target: String,
    /// The image's size: the volume's.
    pub size: u64,
    /// Bytes written; the rest of a file is holes.
    pub data_bytes: u64,
    /// The generation exported.
    pub generation: u64,
}

/// Writes what `request`'s volume or snapshot holds to its target,
/// telling `meter` of the volume's bytes done. A file is whole and synced
/// when this returns `Ok`, and absent (or, replaced, as it was) when it
/// returns `Err`.
pub async fn export(
    store: &Store,
    request: &ExportRequest,
    meter: &dyn Meter,
) -> Result<ExportReport, ImageError> {
    let options = request.options.clone();
    let volume = Volume::open_read_only(store, &request.source, Follow::Pinned, options).await?;
    let generation = volume.counters().generation;
    let exported = export_open(&volume, &request.target, meter).await;
    volume.close().await?;
    Ok(ExportReport {
        source: request.source.to_string(),
        target: request.target.describe(),
        size: volume.size(),
        data_bytes: exported?,
        generation,
    })
}

/// Exports the open `volume` to `target`; returns the bytes written.
async fn export_open(
    volume: &Volume,
    target: &ImageTarget,
    meter: &dyn Meter,
) -> Result<u64, ImageError> {
    let size = volume.size();
    let target = target.clone();
    let sink = crate::blocking::run(move || Sink::create(&target, size)).await?;
    meter.stage("exporting", Unit::Bytes, Some(size));
    let (sender, receiver) = mpsc::channel(PIECES_AHEAD);
    let writing = crate::blocking::run(move || write_pieces(sink, receiver));
    let reading = send_pieces(volume, sender, meter);
    let (read, (sink, written)) = tokio::join!(reading, writing);
    let finished = match (read, written) {
        (Ok(()), Ok(data)) => Ok(data),
        (_, Err(error)) | (Err(error), _) => Err(error),
    };
    match finished {
        Ok(data) => {
            crate::blocking::run(move || sink.finish()).await?;
            Ok(data)
        }
        Err(error) => {
            crate::blocking::run(move || sink.abandon()).await;
            Err(error)
        }
    }
}

/// Writes the pieces `receiver` gets to `sink` until they end or one
/// fails; returns the sink, unfinished, and the data bytes written.
fn write_pieces(
    mut sink: Sink,
    mut receiver: mpsc::Receiver<Piece>,
) -> (Sink, Result<u64, ImageError>) {
    let mut data = 0;
    while let Some(piece) = receiver.blocking_recv() {
        if let Err(error) = sink.put(&piece) {
            return (sink, Err(error));
        }
        if let Piece::Data { bytes, .. } = &piece {
            data += bytes.len() as u64;
        }
    }
    (sink, Ok(data))
}

/// Reads `volume` in order and sends it as pieces: its holes (from its
/// map) and zero blocks as zeroes, the rest as data. Stops early, without
/// an error, when the writer stopped (it has the error).
async fn send_pieces(
    volume: &Volume,
    pieces: mpsc::Sender<Piece>,
    meter: &dyn Meter,
) -> Result<(), ImageError> {
    let size = volume.size();
    let mut at = 0;
    while at < size {
        let span = SPAN.min(size - at);
        for extent in volume.allocation(at, span).await? {
            let sent = match extent.zero {
                true => {
                    let zero = Piece::Zero {
                        offset: at,
                        len: extent.len,
                    };
                    meter.advance(extent.len);
                    pieces.send(zero).await.is_ok()
                }
                false => send_data(volume, at, extent.len, &pieces, meter).await?,
            };
            if !sent {
                return Ok(());
            }
            at += extent.len;
        }
    }
    Ok(())
}

/// Reads `len` bytes of `volume` at `offset` a window at a time and sends
/// them as pieces; returns whether the writer still listens.
async fn send_data(
    volume: &Volume,
    offset: u64,
    len: u64,
    pieces: &mpsc::Sender<Piece>,
    meter: &dyn Meter,
) -> Result<bool, ImageError> {
    let end = offset + len;
    let mut at = offset;
    while at < end {
        let window = WINDOW.min(end - at);
        let mut bytes = vec![0u8; window as usize];
        volume.read(at, &mut bytes).await?;
        for piece in blocks::runs(at, Bytes::from(bytes)) {
            if pieces.send(piece).await.is_err() {
                return Ok(false);
            }
        }
        meter.advance(window);
        at += window;
    }
    Ok(true)
}
