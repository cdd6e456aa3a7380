//! Reading a `btrfs send --no-data` stream for what the real send would
//! carry: a pure function of the bytes, no I/O of its own.
//!
//! The format (version 1, linux `fs/btrfs/send.h`): a 17-byte header,
//! `btrfs-stream\0` and a le32 version; then commands, each a le32 payload
//! length, a le16 command and a le32 crc, followed by its payload of TLVs
//! (le16 type, le16 length, value). With `--no-data` the kernel sends an
//! UPDATE_EXTENT command where a full send would write file data (holes
//! included: version 1 writes them as zeroes); its SIZE attribute is the
//! number of bytes.
//!
//! What it promises, whatever the bytes: it never panics, and never
//! allocates by a length the stream gives (a command it reads is bounded
//! by version 1's 64 KiB; everything else is skipped, not buffered). A
//! stream of another version is only counted, not read.

use std::io::{self, Read};

const MAGIC: &[u8; 13] = b"btrfs-stream\0";
const HEADER_LEN: usize = MAGIC.len() + 4;
const COMMAND_HEADER_LEN: usize = 10;
const TLV_HEADER_LEN: usize = 4;
/// The version whose commands this reads.
const VERSION_1: u32 = 1;
/// `BTRFS_SEND_BUF_SIZE_V1`: no version 1 command is larger, header
/// included.
const MAX_COMMAND_V1: usize = 64 << 10;
/// `BTRFS_SEND_C_UPDATE_EXTENT`.
const UPDATE_EXTENT: u16 = 22;
/// `BTRFS_SEND_A_SIZE`.
const ATTRIBUTE_SIZE: u16 = 4;

/// What a send stream says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    /// The stream's version.
    pub version: u32,
    /// The bytes of file data its UPDATE_EXTENT commands stand for (0 for
    /// a version this does not read).
    pub data_bytes: u64,
    /// The stream's own length.
    pub stream_bytes: u64,
}

/// Why a stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// Reading the stream failed.
    #[error(transparent)]
    Io(io::Error),
    /// The stream is not what btrfs sends.
    #[error("{0}")]
    Malformed(String),
}

/// Reads `stream` to its end and sums what its UPDATE_EXTENT commands say.
pub fn summarize(stream: impl Read) -> Result<Summary, StreamError> {
    let mut stream = Counting {
        inner: stream,
        bytes: 0,
    };
    let mut header = [0u8; HEADER_LEN];
    if read_full(&mut stream, &mut header)? != HEADER_LEN {
        return Err(malformed("it ends inside its header"));
    }
    let (magic, version) = header.split_at(MAGIC.len());
    if magic != MAGIC {
        return Err(malformed("it does not start with `btrfs-stream`"));
    }
    let version = le32(version);
    let mut data_bytes = 0u64;
    if version == VERSION_1 {
        let mut payload = vec![0u8; MAX_COMMAND_V1 - COMMAND_HEADER_LEN];
        while let Some((command, len)) = command_header(&mut stream)? {
            if command == UPDATE_EXTENT {
                let payload = payload
                    .get_mut(..len)
                    .ok_or_else(|| malformed("an UPDATE_EXTENT command is larger than 64 KiB"))?;
                if read_full(&mut stream, payload)? != len {
                    return Err(malformed("it ends inside a command"));
                }
                data_bytes = data_bytes.saturating_add(extent_size(payload)?);
            } else {
                skip(&mut stream, len as u64)?;
            }
        }
    } else {
        skip(&mut stream, u64::MAX)?;
    }
    Ok(Summary {
        version,
        data_bytes,
        stream_bytes: stream.bytes,
    })
}

fn malformed(why: &str) -> StreamError {
    StreamError::Malformed(why.to_string())
}

fn le32(bytes: &[u8]) -> u32 {
    u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])
}

fn le16(bytes: &[u8]) -> u16 {
    u16::from_le_bytes([bytes[0], bytes[1]])
}

/// The next command's number and payload length, or `None` at the end of
/// the stream.
fn command_header(stream: &mut impl Read) -> Result<Option<(u16, usize)>, StreamError> {
    let mut header = [0u8; COMMAND_HEADER_LEN];
    match read_full(stream, &mut header)? {
        0 => Ok(None),
        COMMAND_HEADER_LEN => {
            let len = usize::try_from(le32(&header[..4]))
                .map_err(|_| malformed("a command's length does not fit in memory"))?;
            Ok(Some((le16(&header[4..6]), len)))
        }
        _ => Err(malformed("it ends inside a command header")),
    }
}

/// The SIZE attribute of an UPDATE_EXTENT command's payload.
fn extent_size(mut payload: &[u8]) -> Result<u64, StreamError> {
    while !payload.is_empty() {
        let (header, rest) = payload
            .split_at_checked(TLV_HEADER_LEN)
            .ok_or_else(|| malformed("a command ends inside an attribute header"))?;
        let (value, rest) = rest
            .split_at_checked(usize::from(le16(&header[2..])))
            .ok_or_else(|| malformed("an attribute is longer than its command"))?;
        if le16(header) == ATTRIBUTE_SIZE {
            let bytes: [u8; 8] = value
                .try_into()
                .map_err(|_| malformed("an UPDATE_EXTENT size is not 8 bytes"))?;
            return Ok(u64::from_le_bytes(bytes));
        }
        payload = rest;
    }
    Err(malformed("an UPDATE_EXTENT command has no size"))
}

/// Reads into `buf` until it is full or the stream ends; the bytes read.
fn read_full(stream: &mut impl Read, buf: &mut [u8]) -> Result<usize, StreamError> {
    let mut filled = 0;
    while filled < buf.len() {
        match stream.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(StreamError::Io(error)),
        }
    }
    Ok(filled)
}

/// Skips `len` bytes (or to the end, for `u64::MAX`) without keeping them.
fn skip(stream: &mut impl Read, len: u64) -> Result<(), StreamError> {
    let skipped = io::copy(&mut stream.take(len), &mut io::sink()).map_err(StreamError::Io)?;
    if len != u64::MAX && skipped != len {
        return Err(malformed("it ends inside a command"));
    }
    Ok(())
}

/// A reader that counts what it reads.
struct Counting<R> {
    inner: R,
    bytes: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const PATH: u16 = 15;
    const FILE_OFFSET: u16 = 18;
    const MKFILE: u16 = 3;
    const END: u16 = 21;

    fn tlv(kind: u16, value: &[u8]) -> Vec<u8> {
        let mut out = kind.to_le_bytes().to_vec();
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(value);
        out
    }

    fn command(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut out = (payload.len() as u32).to_le_bytes().to_vec();
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(payload);
        out
    }

    fn header(version: u32) -> Vec<u8> {
        let mut out = MAGIC.to_vec();
        out.extend_from_slice(&version.to_le_bytes());
        out
    }

    fn update_extent(path: &str, offset: u64, size: u64) -> Vec<u8> {
        let payload = [
            tlv(PATH, path.as_bytes()),
            tlv(FILE_OFFSET, &offset.to_le_bytes()),
            tlv(ATTRIBUTE_SIZE, &size.to_le_bytes()),
        ]
        .concat();
        command(UPDATE_EXTENT, &payload)
    }

    /// A stream like the kernel's, in pieces: the header, a file made,
    /// two extents, the end.
    fn pieces() -> Vec<Vec<u8>> {
        vec![
            header(1),
            command(MKFILE, &tlv(PATH, b"o257-7-0")),
            update_extent("f", 0, 3_000_000),
            update_extent("f", 3_000_000, 4096),
            command(END, &[]),
        ]
    }

    fn stream() -> Vec<u8> {
        pieces().concat()
    }

    #[test]
    fn update_extents_are_summed_and_the_stream_counted() {
        let bytes = stream();
        let summary = summarize(&bytes[..]).unwrap();
        assert_eq!(
            summary,
            Summary {
                version: 1,
                data_bytes: 3_004_096,
                stream_bytes: bytes.len() as u64,
            }
        );
    }

    #[test]
    fn the_size_is_found_wherever_it_is_among_the_attributes() {
        let payload = [tlv(ATTRIBUTE_SIZE, &77u64.to_le_bytes()), tlv(PATH, b"a")].concat();
        let bytes = [header(1), command(UPDATE_EXTENT, &payload)].concat();
        assert_eq!(summarize(&bytes[..]).unwrap().data_bytes, 77);
    }

    #[test]
    fn another_version_is_only_counted() {
        let mut bytes = stream();
        bytes[13..17].copy_from_slice(&2u32.to_le_bytes());
        bytes.extend_from_slice(&[0xff; 100]);
        let summary = summarize(&bytes[..]).unwrap();
        assert_eq!(summary.version, 2);
        assert_eq!(summary.data_bytes, 0);
        assert_eq!(summary.stream_bytes, bytes.len() as u64);
    }

    #[test]
    fn a_truncated_stream_is_malformed_wherever_it_is_cut() {
        let bytes = stream();
        // A cut between commands leaves a shorter stream that is valid.
        let mut boundaries = Vec::new();
        let mut end = 0;
        for piece in pieces() {
            end += piece.len();
            boundaries.push(end);
        }
        for cut in 0..bytes.len() {
            match summarize(&bytes[..cut]) {
                Ok(summary) => assert!(boundaries.contains(&cut), "{cut}: {summary:?}"),
                Err(StreamError::Malformed(_)) => assert!(!boundaries.contains(&cut), "{cut}"),
                Err(error) => panic!("{cut}: {error}"),
            }
        }
    }

    #[test]
    fn hostile_lengths_are_refused_without_allocating_by_them() {
        let cases = [
            // A command claiming 4 GiB.
            [
                header(1),
                u32::MAX.to_le_bytes().to_vec(),
                UPDATE_EXTENT.to_le_bytes().to_vec(),
                vec![0; 4],
            ]
            .concat(),
            // An attribute longer than its command.
            [header(1), command(UPDATE_EXTENT, &[4, 0, 0xff, 0xff, 1, 2])].concat(),
            // A size of the wrong width.
            [
                header(1),
                command(UPDATE_EXTENT, &tlv(ATTRIBUTE_SIZE, &[1, 2, 3])),
            ]
            .concat(),
            // No size at all.
            [header(1), command(UPDATE_EXTENT, &tlv(PATH, b"f"))].concat(),
            // Half an attribute header.
            [header(1), command(UPDATE_EXTENT, &[4, 0])].concat(),
            // Another command claiming more than the stream holds.
            [
                header(1),
                100u32.to_le_bytes().to_vec(),
                MKFILE.to_le_bytes().to_vec(),
                vec![0; 4],
                vec![1; 10],
            ]
            .concat(),
            // Not a send stream.
            b"12345678901234567".to_vec(),
        ];
        for (i, bytes) in cases.iter().enumerate() {
            assert!(
                matches!(summarize(&bytes[..]), Err(StreamError::Malformed(_))),
                "case {i}"
            );
        }
    }

    #[test]
    fn sizes_that_overflow_saturate() {
        let bytes = [
            header(1),
            update_extent("a", 0, u64::MAX),
            update_extent("a", 0, u64::MAX),
        ]
        .concat();
        assert_eq!(summarize(&bytes[..]).unwrap().data_bytes, u64::MAX);
    }

    #[test]
    fn a_read_error_is_reported_as_one() {
        let bytes = stream();
        let failing = (&bytes[..30]).chain(FailingReader);
        assert!(matches!(summarize(failing), Err(StreamError::Io(_))));
    }

    struct FailingReader;

    impl Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("btrfs send failed"))
        }
    }

    proptest! {
        #[test]
        fn any_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = summarize(&bytes[..]);
            let with_header = [header(1), bytes].concat();
            let _ = summarize(&with_header[..]);
        }

        #[test]
        fn a_damaged_stream_never_panics(at in 0..200usize, value in any::<u8>()) {
            let mut bytes = stream();
            let at = at % bytes.len();
            bytes[at] = value;
            let _ = summarize(&bytes[..]);
        }
    }
}
