//! Log records: a 40-byte header and, for writes, the data.
//!
//! ```text
//! offset size field
//!      0    4 magic "ZBLR"
//!      4    4 crc32c of bytes 8..40 and of the payload
//!      8    8 epoch
//!     16    1 kind: 1 write, 2 zero (discard or write-zeroes), 3 end of
//!               segment (nothing after it in this segment is a record)
//!     17    3 reserved, zero
//!     20    4 payload length
//!     24    8 device offset
//!     32    8 length on the device
//!     40    - payload (writes only)
//! ```

use bytes::{Buf, BufMut};

pub const HEADER_LEN: usize = 40;
const MAGIC: &[u8; 4] = b"ZBLR";

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
}

impl RecordHeader {
    pub fn write(epoch: u64, offset: u64, payload_len: usize) -> Self {
        RecordHeader {
            epoch,
            kind: RecordKind::Write,
            payload_len: payload_len as u32,
            offset,
            len: payload_len as u64,
        }
    }

    pub fn zero(epoch: u64, offset: u64, len: u64) -> Self {
        RecordHeader {
            epoch,
            kind: RecordKind::Zero,
            payload_len: 0,
            offset,
            len,
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
        }
    }

    /// Bytes the record takes in the log.
    pub fn record_len(&self) -> u64 {
        HEADER_LEN as u64 + u64::from(self.payload_len)
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
        let crc = crc32c::crc32c(&record[8..]);
        record[4..8].copy_from_slice(&crc.to_le_bytes());
    }

    /// Parses a header; `None` when these bytes are not one (the end of
    /// the log, or a record torn by a crash).
    pub fn decode(bytes: &[u8; HEADER_LEN]) -> Option<(RecordHeader, u32)> {
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
            },
            crc,
        ))
    }

    /// Whether header bytes and payload match the checksum.
    pub fn verify(header: &[u8; HEADER_LEN], payload: &[u8], crc: u32) -> bool {
        let partial = crc32c::crc32c(&header[8..]);
        crc32c::crc32c_append(partial, payload) == crc
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_checks() {
        let header = RecordHeader::write(7, 8192, 4);
        let record = header.encode(b"data");
        let head: [u8; HEADER_LEN] = record[..HEADER_LEN].try_into().unwrap();
        let (decoded, crc) = RecordHeader::decode(&head).unwrap();
        assert_eq!(decoded, header);
        assert!(RecordHeader::verify(&head, b"data", crc));
        assert!(!RecordHeader::verify(&head, b"dbta", crc));
        assert!(RecordHeader::decode(&[0; HEADER_LEN]).is_none());
    }
}
