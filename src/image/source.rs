//! What an import reads: a file, of which only the data extents are read
//! (found with `SEEK_DATA` and `SEEK_HOLE`; its holes are known to read as
//! zeroes), or a stream (standard input, a pipe), read whole. Either is
//! cut into [`Piece`]s, in order, on a thread of its own.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::PathBuf;

use bytes::Bytes;
use nix::errno::Errno;
use nix::unistd::{Whence, lseek};
use tokio::sync::mpsc;

use super::blocks::{self, Piece};
use super::error::ImageError;

/// Bytes read at once.
const WINDOW: u64 = 1 << 20;

/// Where an import reads the image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    File(PathBuf),
    Stdin,
}

impl ImageSource {
    /// `-` is standard input; anything else a file.
    pub fn from_arg(arg: &str) -> ImageSource {
        match arg {
            "-" => ImageSource::Stdin,
            path => ImageSource::File(path.into()),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            ImageSource::File(path) => path.display().to_string(),
            ImageSource::Stdin => "standard input".to_string(),
        }
    }
}

/// An image opened to read.
pub(super) enum Opened {
    /// A regular file or a block device, of `size` bytes.
    Seekable {
        file: File,
        path: PathBuf,
        size: u64,
    },
    /// Read to its end, its size unknown.
    Stream {
        reader: Box<dyn Read + Send>,
        what: String,
    },
}

/// Where pieces go, each read (or failed) in order.
pub(super) type Pieces = mpsc::Sender<Result<Piece, ImageError>>;

impl Opened {
    /// Opens `source`: a file that cannot seek (a pipe) is read as a
    /// stream.
    pub fn open(source: &ImageSource) -> Result<Opened, ImageError> {
        let path = match source {
            ImageSource::Stdin => {
                return Ok(Opened::Stream {
                    reader: Box::new(std::io::stdin()),
                    what: source.describe(),
                });
            }
            ImageSource::File(path) => path.clone(),
        };
        let shown = path.display().to_string();
        let mut file = File::open(&path).map_err(ImageError::io(format!("cannot open {shown}")))?;
        let kind = file
            .metadata()
            .map_err(ImageError::io(format!("cannot read {shown}")))?
            .file_type();
        if !kind.is_file() && !kind.is_block_device() {
            return Ok(Opened::Stream {
                reader: Box::new(file),
                what: shown,
            });
        }
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(ImageError::io(format!("cannot find the end of {shown}")))?;
        if size == 0 {
            return Err(ImageError::Empty { file: path });
        }
        Ok(Opened::Seekable { file, path, size })
    }

    /// What tells whether a regular file changed while it was read: its
    /// size and modification time now, and a handle to look again.
    pub fn watch(&self) -> Option<Unchanged> {
        let Opened::Seekable { file, .. } = self else {
            return None;
        };
        let file = file.try_clone().ok()?;
        let seen = Unchanged::stamp(&file)?;
        Some(Unchanged { file, seen })
    }

    /// The image's size, if known before it is read.
    pub fn size(&self) -> Option<u64> {
        match self {
            Opened::Seekable { size, .. } => Some(*size),
            Opened::Stream { .. } => None,
        }
    }

    /// Sends the image's pieces to `pieces` in order (a file's last block
    /// padded with zeroes, a stream's last bytes as a [`Piece::Tail`]),
    /// until the end, an error (sent too), or nobody listens. Blocks: run it on a thread of its own.
    pub fn send_pieces(self, pieces: Pieces) {
        let sent = match self {
            Opened::Seekable { file, path, size } => send_extents(&file, &path, size, &pieces),
            Opened::Stream { reader, what } => send_stream(reader, &what, &pieces),
        };
        if let Err(error) = sent {
            let _ = pieces.blocking_send(Err(error));
        }
    }
}

/// A regular file's size and modification time when it was opened.
pub(super) struct Unchanged {
    file: File,
    seen: (u64, std::time::SystemTime),
}

impl Unchanged {
    fn stamp(file: &File) -> Option<(u64, std::time::SystemTime)> {
        let meta = file.metadata().ok()?;
        Some((meta.len(), meta.modified().ok()?))
    }

    /// Whether the file still has the size and time it had when opened.
    pub fn still(&self) -> bool {
        Unchanged::stamp(&self.file) == Some(self.seen)
    }
}

/// Nobody listens to the pieces any more (the import stopped).
struct Gone;

/// Sends `piece`; `Err` when nobody listens.
fn send(pieces: &Pieces, piece: Piece) -> Result<(), Gone> {
    pieces.blocking_send(Ok(piece)).map_err(|_| Gone)
}

/// Reads the data extents of `file` (`size` bytes), each widened to whole
/// blocks, and sends them and the holes between them.
fn send_extents(
    file: &File,
    path: &std::path::Path,
    size: u64,
    pieces: &Pieces,
) -> Result<(), ImageError> {
    let shown = path.display();
    let end = blocks::round_up(size);
    let mut at = 0;
    while at < end {
        let found = next_data(file, at, size)
            .map_err(ImageError::io(format!("cannot find the data in {shown}")))?;
        let (start, stop) = match found {
            Some((start, stop)) => (
                start / crate::format::BLOCK_SIZE * crate::format::BLOCK_SIZE,
                blocks::round_up(stop),
            ),
            None => (end, end),
        };
        let start = start.max(at);
        if start > at
            && send(
                pieces,
                Piece::Zero {
                    offset: at,
                    len: start - at,
                },
            )
            .is_err()
        {
            return Ok(());
        }
        let mut offset = start;
        while offset < stop {
            let len = (stop - offset).min(WINDOW);
            let window = read_window(file, offset, len).map_err(ImageError::io(format!(
                "cannot read {shown} at byte {offset}"
            )))?;
            for piece in blocks::runs(offset, window) {
                if send(pieces, piece).is_err() {
                    return Ok(());
                }
            }
            offset += len;
        }
        at = stop.max(start);
    }
    Ok(())
}

/// `len` bytes of `file` at `offset`, zeroes past its end.
fn read_window(file: &File, offset: u64, len: u64) -> std::io::Result<Bytes> {
    let mut buf = vec![0u8; len as usize];
    let mut filled = 0;
    while filled < buf.len() {
        match file.read_at(&mut buf[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(Bytes::from(buf))
}

/// The next stretch of data at or after `from` in `file` of `size`
/// bytes, or `None` if only holes are left. A file system that cannot
/// say has data everywhere.
fn next_data(file: &File, from: u64, size: u64) -> std::io::Result<Option<(u64, u64)>> {
    let offset = i64::try_from(from).map_err(|_| Errno::EOVERFLOW)?;
    match lseek(file, offset, Whence::SeekData) {
        Ok(start) => {
            let stop = lseek(file, start, Whence::SeekHole)?;
            Ok(Some((start as u64, (stop as u64).min(size))))
        }
        Err(Errno::ENXIO) => Ok(None),
        Err(Errno::EINVAL | Errno::EOPNOTSUPP) => Ok(Some((from, size))),
        Err(errno) => Err(errno.into()),
    }
}

/// Reads `reader` to its end, a window at a time, and sends its pieces.
fn send_stream(
    mut reader: Box<dyn Read + Send>,
    what: &str,
    pieces: &Pieces,
) -> Result<(), ImageError> {
    let mut at = 0;
    loop {
        let mut window = vec![0u8; WINDOW as usize];
        let filled = read_full(&mut reader, &mut window)
            .map_err(ImageError::io(format!("cannot read {what} at byte {at}")))?;
        if filled == 0 {
            return Ok(());
        }
        window.truncate(filled);
        let mut whole_blocks = Bytes::from(window);
        let tail = whole_blocks.split_off(filled - filled % crate::format::BLOCK_SIZE as usize);
        let len = whole_blocks.len() as u64;
        for piece in blocks::runs(at, whole_blocks) {
            if send(pieces, piece).is_err() {
                return Ok(());
            }
        }
        if !tail.is_empty() {
            let _ = send(
                pieces,
                Piece::Tail {
                    offset: at + len,
                    bytes: tail,
                },
            );
        }
        if filled < WINDOW as usize {
            return Ok(());
        }
        at += len;
    }
}

/// Fills `buf` from `reader` unless it ends first; returns the bytes read.
fn read_full(reader: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(read) => filled += read,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::BLOCK_SIZE;

    /// Every piece a source sends, read on this thread.
    fn pieces_of(opened: Opened) -> Vec<Piece> {
        let (sender, mut receiver) = mpsc::channel(1024);
        opened.send_pieces(sender);
        let mut pieces = Vec::new();
        while let Ok(piece) = receiver.try_recv() {
            pieces.push(piece.expect("read"));
        }
        pieces
    }

    #[test]
    fn a_sparse_file_is_read_where_it_holds_data_and_pieces_cover_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("image");
        let file = File::create(&path).unwrap();
        let size = 64 << 20;
        file.set_len(size).unwrap();
        file.write_all_at(&[7u8; 5000], 10 << 20).unwrap();
        file.write_all_at(b"end", size - 3).unwrap();
        let opened = Opened::open(&ImageSource::File(path)).unwrap();
        assert_eq!(opened.size(), Some(size));
        let pieces = pieces_of(opened);
        let mut at = 0;
        for piece in &pieces {
            assert_eq!(piece.offset(), at, "in order, without gaps: {pieces:?}");
            at = piece.end();
        }
        assert_eq!(at, size);
        let data: Vec<_> = pieces
            .iter()
            .filter_map(|p| match p {
                Piece::Data { offset, bytes } => Some((*offset, bytes.len() as u64)),
                Piece::Zero { .. } | Piece::Tail { .. } => None,
            })
            .collect();
        assert_eq!(
            data,
            [(10 << 20, 2 * BLOCK_SIZE), (size - BLOCK_SIZE, BLOCK_SIZE)]
        );
    }

    #[test]
    fn a_stream_is_read_whole_and_its_last_bytes_are_a_tail() {
        let mut image = vec![0u8; 3 * BLOCK_SIZE as usize + 10];
        image[BLOCK_SIZE as usize] = 1;
        image[3 * BLOCK_SIZE as usize + 9] = 2;
        let opened = Opened::Stream {
            reader: Box::new(std::io::Cursor::new(image)),
            what: "a test".into(),
        };
        assert_eq!(opened.size(), None);
        let pieces = pieces_of(opened);
        let shape = blocks::shape_of(&pieces);
        let b = BLOCK_SIZE;
        assert_eq!(
            shape,
            [
                (false, 0, b),
                (true, b, b),
                (false, 2 * b, b),
                (false, 3 * b, 10)
            ]
        );
        let Some(Piece::Tail { bytes, .. }) = pieces.last() else {
            panic!("the stream's last 10 bytes are a tail: {pieces:?}");
        };
        assert_eq!(bytes[9], 2);
    }

    #[test]
    fn an_empty_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        File::create(&path).unwrap();
        let refused = Opened::open(&ImageSource::File(path));
        assert!(matches!(refused, Err(ImageError::Empty { .. })));
    }
}
