//! Replies as the frames they go out in: headers, and read data as the
//! engine holds it (slices of cached chunks), so a read travels from the
//! cache to the socket without being copied into a reply buffer.

use bytes::{BufMut, Bytes, BytesMut};

use super::proto::{self, reply};
use crate::engine::{ReadData, ReadPart};

/// Zero runs at least this long come back as holes in structured reads.
pub const MIN_HOLE: usize = 64 << 10;

/// Zeroes to send from, for runs shorter than a hole (and every run of a
/// simple reply or a DF read). Zero-initialized, so it costs no memory
/// until read, and then only the shared zero page.
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

/// One reply, in the order its frames are written.
#[derive(Debug, Default)]
pub struct Reply {
    frames: Vec<Bytes>,
}

impl Reply {
    /// A reply that is only a header (and whatever it encodes).
    pub fn header(head: BytesMut) -> Reply {
        Reply {
            frames: vec![head.freeze()],
        }
    }

    pub fn frames(&self) -> &[Bytes] {
        &self.frames
    }

    fn push_head(&mut self, head: BytesMut) {
        self.frames.push(head.freeze());
    }

    fn push_data(&mut self, part: &ReadPart) {
        match part {
            ReadPart::Data(data) => self.frames.push(data.clone()),
            ReadPart::Zero(len) => {
                let mut left = *len;
                while left > 0 {
                    let n = left.min(ZEROES.len());
                    self.frames.push(Bytes::from_static(&ZEROES[..n]));
                    left -= n;
                }
            }
        }
    }
}

/// A simple reply to a read: the header, then every byte.
pub fn simple_read(cookie: u64, data: &ReadData) -> Reply {
    let mut head = BytesMut::with_capacity(16);
    proto::encode_simple_reply(&mut head, 0, cookie);
    let mut out = Reply::header(head);
    for part in data.parts() {
        out.push_data(part);
    }
    out
}

/// What one structured reply chunk of a read carries.
enum Group<'a> {
    Hole(usize),
    Data(Vec<&'a ReadPart>, usize),
}

/// A structured reply to a read of `data` at `offset`: long zero runs as
/// hole chunks, the rest as data chunks; with `df` (don't fragment), one
/// data chunk.
pub fn structured_read(cookie: u64, offset: u64, data: &ReadData, df: bool) -> Reply {
    let mut groups: Vec<Group> = Vec::new();
    for part in data.parts() {
        match (part, groups.last_mut()) {
            (ReadPart::Zero(len), _) if !df && *len >= MIN_HOLE => groups.push(Group::Hole(*len)),
            (part, Some(Group::Data(parts, len))) => {
                parts.push(part);
                *len += part.len();
            }
            (part, _) => groups.push(Group::Data(vec![part], part.len())),
        }
    }
    let mut out = Reply::default();
    let mut at = offset;
    let last = groups.len().saturating_sub(1);
    for (i, group) in groups.iter().enumerate() {
        let flags = if i == last { reply::FLAG_DONE } else { 0 };
        let mut head = BytesMut::with_capacity(32);
        match group {
            Group::Hole(len) => {
                proto::encode_chunk_header(&mut head, flags, reply::OFFSET_HOLE, cookie, 12);
                head.put_u64(at);
                head.put_u32(*len as u32);
                out.push_head(head);
                at += *len as u64;
            }
            Group::Data(parts, len) => {
                let kind = reply::OFFSET_DATA;
                proto::encode_chunk_header(&mut head, flags, kind, cookie, 8 + *len as u32);
                head.put_u64(at);
                out.push_head(head);
                for part in parts {
                    out.push_data(part);
                }
                at += *len as u64;
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(parts: Vec<ReadPart>) -> ReadData {
        ReadData::from_parts(parts)
    }

    /// The reply as one byte string.
    fn wire(reply: &Reply) -> Vec<u8> {
        reply
            .frames()
            .iter()
            .flat_map(|f| f.iter().copied())
            .collect()
    }

    /// (type, offset, payload length) of each chunk of a structured reply.
    fn chunks(bytes: &[u8]) -> Vec<(u16, u64, usize, bool)> {
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let flags = u16::from_be_bytes([bytes[at + 4], bytes[at + 5]]);
            let kind = u16::from_be_bytes([bytes[at + 6], bytes[at + 7]]);
            let len = u32::from_be_bytes(bytes[at + 16..at + 20].try_into().unwrap()) as usize;
            let offset = u64::from_be_bytes(bytes[at + 20..at + 28].try_into().unwrap());
            let done = flags & reply::FLAG_DONE != 0;
            let payload = if kind == reply::OFFSET_HOLE {
                0
            } else {
                len - 8
            };
            out.push((kind, offset, payload, done));
            at += 20 + len;
        }
        out
    }

    #[test]
    fn long_zero_runs_are_holes_and_short_ones_data() {
        let read = data(vec![
            ReadPart::Data(Bytes::from(vec![1u8; 4096])),
            ReadPart::Zero(128 << 10),
            ReadPart::Data(Bytes::from(vec![2u8; 4096])),
            ReadPart::Zero(8192),
        ]);
        let reply = structured_read(7, 1 << 20, &read, false);
        let at = 1u64 << 20;
        assert_eq!(
            chunks(&wire(&reply)),
            vec![
                (reply::OFFSET_DATA, at, 4096, false),
                (reply::OFFSET_HOLE, at + 4096, 0, false),
                (
                    reply::OFFSET_DATA,
                    at + 4096 + (128 << 10),
                    4096 + 8192,
                    true
                ),
            ]
        );
    }

    #[test]
    fn dont_fragment_is_one_data_chunk_with_the_zeroes_in_it() {
        let read = data(vec![
            ReadPart::Zero(2 << 20),
            ReadPart::Data(Bytes::from(vec![3u8; 4096])),
        ]);
        let bytes = wire(&structured_read(1, 0, &read, true));
        assert_eq!(
            chunks(&bytes),
            vec![(reply::OFFSET_DATA, 0, (2 << 20) + 4096, true)]
        );
        let payload = &bytes[28..];
        assert!(payload[..2 << 20].iter().all(|&b| b == 0));
        assert!(payload[2 << 20..].iter().all(|&b| b == 3));
    }

    #[test]
    fn a_simple_read_carries_every_byte() {
        let read = data(vec![
            ReadPart::Data(Bytes::from(vec![5u8; 4096])),
            ReadPart::Zero(4096),
        ]);
        let bytes = wire(&simple_read(9, &read));
        assert_eq!(bytes.len(), 16 + 8192);
        assert_eq!(&bytes[8..16], &9u64.to_be_bytes());
        assert!(bytes[16..16 + 4096].iter().all(|&b| b == 5));
        assert!(bytes[16 + 4096..].iter().all(|&b| b == 0));
    }
}
