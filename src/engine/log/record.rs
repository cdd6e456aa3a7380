//! Log records: a 48-byte header and, for writes, the data.
//!
//! ```text
//! offset size field
//!      0    4 magic "ZBLR"
//!      4    4 crc32c of bytes 8..48 and of the payload
//!      8    8 epoch
//!     16    1 kind: 1 write, 2 zero (discard or write-zeroes), 3 end of
//!               segment (nothing after it in this segment is a record)
//!     17    3 reserved, zero
//!     20    4 payload length
//!     24    8 device offset
//!     32    8 length on the device
//!     40    8 sequence: within an epoch, the record with the higher one
//!               wins where records overlap
//!     48    - payload (writes only)
//! ```
//!
//! The sequence is what lets a record be rewritten in place (see
//! [`crate::engine`]'s `rewrite`): the rewrite takes a new one, and so
//! wins over records after it in the log. Segments from before rewrites
//! ([`RecordFormat::Positional`]) have 40-byte headers without it; there
//! a record's position in the log is its sequence.

use bytes::{Buf, BufMut};

pub const HEADER_LEN: usize = 48;
/// Headers of [`RecordFormat::Positional`] segments: no sequence.
const POSITIONAL_HEADER_LEN: usize = 40;
const MAGIC: &[u8; 4] = b"ZBLR";

/// How the records of a segment are laid out (its header says which).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// 40-byte headers; records are ordered by their position.
    Positional,
    /// 48-byte headers carrying a sequence number.
    Sequenced,
}

impl RecordFormat {
    pub fn header_len(self) -> usize {
        match self {
            RecordFormat::Positional => POSITIONAL_HEADER_LEN,
            RecordFormat::Sequenced => HEADER_LEN,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Write,
    Zero,
    /// The segment's last record: the log goes on in the next segment.
    End,
}

/// What a record says happened to the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordHeader {
    pub epoch: u64,
    pub kind: RecordKind,
    pub payload_len: u32,
    pub offset: u64,
    pub len: u64,
    /// Which record wins where two of an epoch overlap: the higher.
    pub seq: u64,
}

impl RecordHeader {
    pub fn write(epoch: u64, seq: u64, offset: u64, payload_len: usize) -> Self {
        RecordHeader {
            epoch,
            kind: RecordKind::Write,
            payload_len: payload_len as u32,
            offset,
            len: payload_len as u64,
            seq,
        }
    }

    pub fn zero(epoch: u64, seq: u64, offset: u64, len: u64) -> Self {
        RecordHeader {
            epoch,
            kind: RecordKind::Zero,
            payload_len: 0,
            offset,
            len,
            seq,
        }
    }

    /// The record that closes a segment, after its last epoch's records.
    pub fn end(epoch: u64) -> Self {
        RecordHeader {
            epoch,
            kind: RecordKind::End,
            payload_len: 0,
            offset: 0,
            len: 0,
            seq: 0,
        }
    }

    /// Bytes the record takes in a log of `format`.
    pub fn record_len(&self, format: RecordFormat) -> u64 {
        format.header_len() as u64 + u64::from(self.payload_len)
    }

    /// The whole record, header and payload, in one buffer.
    #[cfg(test)]
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut record = vec![0; HEADER_LEN];
        record.extend_from_slice(payload);
        self.write_header(&mut record);
        record
    }

    /// Fills in the header of `record`, whose payload follows its first
    /// [`HEADER_LEN`] bytes.
    pub fn write_header(&self, record: &mut [u8]) {
        debug_assert_eq!(record.len(), HEADER_LEN + self.payload_len as usize);
        let mut out = &mut record[..HEADER_LEN];
        out.put_slice(MAGIC);
        out.put_u32_le(0);
        out.put_u64_le(self.epoch);
        out.put_u8(match self.kind {
            RecordKind::Write => 1,
            RecordKind::Zero => 2,
            RecordKind::End => 3,
        });
        out.put_slice(&[0; 3]);
        out.put_u32_le(self.payload_len);
        out.put_u64_le(self.offset);
        out.put_u64_le(self.len);
        out.put_u64_le(self.seq);
        let crc = crc32c::crc32c(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Parses a header of `format` (`bytes` is its header length); `None`
    /// when these bytes are not one (the end of the log, or a record torn
    /// by a crash). Positional headers have sequence 0.
    pub fn decode(bytes: &[u8], format: RecordFormat) -> Option<(RecordHeader, u32)> {
        debug_assert_eq!(bytes.len(), format.header_len());
        if &bytes[..4] != MAGIC {
            return None;
        }
        let mut buf = &bytes[4..];
        let crc = buf.get_u32_le();
        let epoch = buf.get_u64_le();
        let kind = match buf.get_u8() {
            1 => RecordKind::Write,
            2 => RecordKind::Zero,
            3 => RecordKind::End,
            _ => return None,
        };
        buf.advance(3);
        let payload_len = buf.get_u32_le();
        let offset = buf.get_u64_le();
        let len = buf.get_u64_le();
        let seq = match format {
            RecordFormat::Positional => 0,
            RecordFormat::Sequenced => buf.get_u64_le(),
        };
        let consistent = match kind {
            RecordKind::Write => u64::from(payload_len) == len,
            RecordKind::Zero => payload_len == 0,
            RecordKind::End => payload_len == 0 && len == 0 && offset == 0,
        };
        consistent.then_some((
            RecordHeader {
                epoch,
                kind,
                payload_len,
                offset,
                len,
                seq,
            },
            crc,
        ))
    }

    /// Whether header bytes and payload match the checksum.
    pub fn verify(header: &[u8], payload: &[u8], crc: u32) -> bool {
        let partial = crc32c::crc32c(&header[8..]);
        crc32c::crc32c_append(partial, payload) == crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks() {
        let header = RecordHeader::write(7, 3, 8192, 4);
        let record = header.encode(b"data");
        let head = &record[..HEADER_LEN];
        let (decoded, crc) = RecordHeader::decode(head, RecordFormat::Sequenced).unwrap();
        assert_eq!(decoded, header);
        assert!(RecordHeader::verify(head, b"data", crc));
        assert!(!RecordHeader::verify(head, b"dbta", crc));
        assert!(RecordHeader::decode(&[0; HEADER_LEN], RecordFormat::Sequenced).is_none());
    }

    #[test]
    fn positional_headers_are_read_without_a_sequence() {
        let header = RecordHeader::write(7, 0, 8192, 4);
        let mut head = header.encode(b"data")[..POSITIONAL_HEADER_LEN].to_vec();
        let crc = crc32c::crc32c_append(crc32c::crc32c(&head[8..]), b"data");
        head[4..8].copy_from_slice(&crc.to_le_bytes());
        let (decoded, crc) = RecordHeader::decode(&head, RecordFormat::Positional).unwrap();
        assert_eq!(decoded, header);
        assert!(RecordHeader::verify(&head, b"data", crc));
    }
}
