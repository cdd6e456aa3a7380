//! An image's bytes cut into runs of blocks that hold data and runs that
//! are all zeroes, at the volume's 4 KiB block: what an import writes,
//! and what an export leaves as holes.

use bytes::Bytes;

use crate::format::BLOCK_SIZE;

/// A stretch of an image at a byte offset: data to write, or zeroes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Piece {
    Data {
        offset: u64,
        bytes: Bytes,
    },
    Zero {
        offset: u64,
        len: u64,
    },
    /// A stream's last bytes, fewer than a block, at a block's start: the
    /// rest of that block keeps what the volume held there.
    Tail {
        offset: u64,
        bytes: Bytes,
    },
}

impl Piece {
    pub fn offset(&self) -> u64 {
        match self {
            Piece::Data { offset, .. }
            | Piece::Zero { offset, .. }
            | Piece::Tail { offset, .. } => *offset,
        }
    }

    pub fn len(&self) -> u64 {
        match self {
            Piece::Data { bytes, .. } | Piece::Tail { bytes, .. } => bytes.len() as u64,
            Piece::Zero { len, .. } => *len,
        }
    }

    pub fn end(&self) -> u64 {
        self.offset() + self.len()
    }
}

/// `bytes` at `offset` (both whole blocks) cut into runs of data blocks
/// and of all-zero blocks, in order.
pub(super) fn runs(offset: u64, bytes: Bytes) -> Vec<Piece> {
    let block = BLOCK_SIZE as usize;
    debug_assert!(bytes.len().is_multiple_of(block) && offset.is_multiple_of(BLOCK_SIZE));
    let mut pieces = Vec::new();
    let mut start = 0;
    let mut zero_run = None;
    for at in (0..bytes.len()).step_by(block) {
        let zero = is_zero(&bytes[at..at + block]);
        if zero_run != Some(zero) {
            if let Some(was_zero) = zero_run {
                pieces.push(piece(offset, &bytes, start..at, was_zero));
            }
            (start, zero_run) = (at, Some(zero));
        }
    }
    if let Some(was_zero) = zero_run {
        pieces.push(piece(offset, &bytes, start..bytes.len(), was_zero));
    }
    pieces
}

fn piece(offset: u64, bytes: &Bytes, range: std::ops::Range<usize>, zero: bool) -> Piece {
    let at = offset + range.start as u64;
    match zero {
        true => Piece::Zero {
            offset: at,
            len: range.len() as u64,
        },
        false => Piece::Data {
            offset: at,
            bytes: bytes.slice(range),
        },
    }
}

/// Whether every byte of `block` is zero (read eight bytes at a time).
pub(super) fn is_zero(block: &[u8]) -> bool {
    let mut words = block.chunks_exact(8);
    words.all(|w| u64::from_ne_bytes(w.try_into().expect("eight bytes")) == 0)
        && words.remainder().iter().all(|b| *b == 0)
}

/// `len` rounded up to whole blocks.
pub(super) fn round_up(len: u64) -> u64 {
    len.div_ceil(BLOCK_SIZE) * BLOCK_SIZE
}

/// For tests: each piece as (holds data, offset, length).
#[cfg(test)]
pub(super) fn shape_of(pieces: &[Piece]) -> Vec<(bool, u64, u64)> {
    pieces
        .iter()
        .map(|p| (matches!(p, Piece::Data { .. }), p.offset(), p.len()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_cut_into_data_and_zero_runs() {
        let block = BLOCK_SIZE as usize;
        let mut image = vec![0u8; 5 * block];
        image[block + 7] = 1; // block 1
        image[2 * block] = 2; // block 2
        image[5 * block - 1] = 3; // block 4
        let pieces = runs(8192, Bytes::from(image.clone()));
        let shape = shape_of(&pieces);
        let b = BLOCK_SIZE;
        assert_eq!(
            shape,
            [
                (false, 8192, b),
                (true, 8192 + b, 2 * b),
                (false, 8192 + 3 * b, b),
                (true, 8192 + 4 * b, b)
            ]
        );
        let Piece::Data { bytes, .. } = &pieces[1] else {
            panic!("data")
        };
        assert_eq!(&bytes[..], &image[block..3 * block]);
        assert!(runs(0, Bytes::new()).is_empty());
    }

    #[test]
    fn zero_is_every_byte_zero() {
        let mut block = vec![0u8; 4096];
        assert!(is_zero(&block));
        block[4095] = 1;
        assert!(!is_zero(&block));
        assert!(!is_zero(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 9]));
        assert_eq!(round_up(1), BLOCK_SIZE);
        assert_eq!(round_up(2 * BLOCK_SIZE), 2 * BLOCK_SIZE);
    }
}
