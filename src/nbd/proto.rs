//! The NBD wire format: plain types with encode and decode, no I/O.
//!
//! Follows the NBD protocol document (fixed newstyle negotiation,
//! structured replies, `base:allocation`). Every decoder takes bytes the
//! peer sent and returns a typed value or a [`ProtoError`]; none panics,
//! whatever the bytes (a fuzz target and a property test hold it to that).

use bytes::{Buf, BufMut, BytesMut};

pub const NBDMAGIC: u64 = 0x4e42_444d_4147_4943;
pub const IHAVEOPT: u64 = 0x4948_4156_454F_5054;
pub const OPTION_REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
pub const REQUEST_MAGIC: u32 = 0x2560_9513;
pub const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;
pub const STRUCTURED_REPLY_MAGIC: u32 = 0x668e_33ef;

/// Handshake flags (server) and client flags.
pub const FLAG_FIXED_NEWSTYLE: u16 = 1;
pub const FLAG_NO_ZEROES: u16 = 2;
pub const CLIENT_FIXED_NEWSTYLE: u32 = 1;
pub const CLIENT_NO_ZEROES: u32 = 2;

/// Transmission flags.
pub mod tflags {
    pub const HAS_FLAGS: u16 = 1;
    pub const READ_ONLY: u16 = 1 << 1;
    pub const SEND_FLUSH: u16 = 1 << 2;
    pub const SEND_FUA: u16 = 1 << 3;
    pub const SEND_TRIM: u16 = 1 << 5;
    pub const SEND_WRITE_ZEROES: u16 = 1 << 6;
    pub const SEND_DF: u16 = 1 << 7;
    pub const CAN_MULTI_CONN: u16 = 1 << 8;
    pub const SEND_CACHE: u16 = 1 << 10;
    pub const SEND_FAST_ZERO: u16 = 1 << 11;
}

/// Option codes.
pub mod opt {
    pub const EXPORT_NAME: u32 = 1;
    pub const ABORT: u32 = 2;
    pub const LIST: u32 = 3;
    pub const STARTTLS: u32 = 5;
    pub const INFO: u32 = 6;
    pub const GO: u32 = 7;
    pub const STRUCTURED_REPLY: u32 = 8;
    pub const LIST_META_CONTEXT: u32 = 9;
    pub const SET_META_CONTEXT: u32 = 10;
}

/// Option reply types.
pub mod rep {
    pub const ACK: u32 = 1;
    pub const SERVER: u32 = 2;
    pub const INFO: u32 = 3;
    pub const META_CONTEXT: u32 = 4;
    pub const ERR_UNSUP: u32 = (1 << 31) + 1;
    pub const ERR_POLICY: u32 = (1 << 31) + 2;
    pub const ERR_INVALID: u32 = (1 << 31) + 3;
    pub const ERR_TLS_REQD: u32 = (1 << 31) + 5;
    pub const ERR_UNKNOWN: u32 = (1 << 31) + 6;
    pub const ERR_TOO_BIG: u32 = (1 << 31) + 9;
}

/// `NBD_INFO_*` types.
pub mod info {
    pub const EXPORT: u16 = 0;
    pub const NAME: u16 = 1;
    pub const DESCRIPTION: u16 = 2;
    pub const BLOCK_SIZE: u16 = 3;
}

/// Command types.
pub mod cmd {
    pub const READ: u16 = 0;
    pub const WRITE: u16 = 1;
    pub const DISC: u16 = 2;
    pub const FLUSH: u16 = 3;
    pub const TRIM: u16 = 4;
    pub const CACHE: u16 = 5;
    pub const WRITE_ZEROES: u16 = 6;
    pub const BLOCK_STATUS: u16 = 7;
}

/// Command flags.
pub mod cflags {
    pub const FUA: u16 = 1;
    pub const NO_HOLE: u16 = 1 << 1;
    pub const DF: u16 = 1 << 2;
    pub const REQ_ONE: u16 = 1 << 3;
    pub const FAST_ZERO: u16 = 1 << 4;
}

/// Structured reply chunk types.
pub mod reply {
    pub const FLAG_DONE: u16 = 1;
    pub const NONE: u16 = 0;
    pub const OFFSET_DATA: u16 = 1;
    pub const OFFSET_HOLE: u16 = 2;
    pub const BLOCK_STATUS: u16 = 5;
    pub const ERROR: u16 = (1 << 15) + 1;
}

/// Errors as NBD numbers them.
pub mod errno {
    pub const EPERM: u32 = 1;
    pub const EIO: u32 = 5;
    pub const ENOMEM: u32 = 12;
    pub const EINVAL: u32 = 22;
    pub const ENOSPC: u32 = 28;
    pub const EOVERFLOW: u32 = 75;
    pub const ENOTSUP: u32 = 95;
    pub const ESHUTDOWN: u32 = 108;

    /// The NBD error for a Linux errno.
    pub fn from_linux(errno: i32) -> u32 {
        match errno {
            libc::EPERM | libc::EROFS => EPERM,
            libc::ENOMEM => ENOMEM,
            libc::EINVAL => EINVAL,
            libc::ENOSPC => ENOSPC,
            libc::EOVERFLOW => EOVERFLOW,
            libc::ENOTSUP => ENOTSUP,
            libc::ESHUTDOWN => ESHUTDOWN,
            _ => EIO,
        }
    }
}

/// `base:allocation` states.
pub const STATE_HOLE: u32 = 1;
pub const STATE_ZERO: u32 = 2;
pub const BASE_ALLOCATION: &str = "base:allocation";

/// Longest option payload accepted; longer ones end the connection.
pub const MAX_OPTION_LEN: u32 = 64 << 10;
/// Longest export name or meta context query.
pub const MAX_NAME_LEN: usize = 4096;
pub const REQUEST_LEN: usize = 28;
pub const OPTION_HEADER_LEN: usize = 16;

/// Bytes from the peer that break the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    #[error("bad magic {0:#x}")]
    BadMagic(u64),
    #[error("option payload of {0} bytes is too long")]
    OptionTooLong(u32),
    #[error("malformed option data: {0}")]
    Malformed(&'static str),
}

/// The header of an option the client sends during negotiation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OptionHeader {
    pub option: u32,
    pub len: u32,
}

pub fn decode_option_header(bytes: &[u8; OPTION_HEADER_LEN]) -> Result<OptionHeader, ProtoError> {
    let mut buf = &bytes[..];
    let magic = buf.get_u64();
    if magic != IHAVEOPT {
        return Err(ProtoError::BadMagic(magic));
    }
    let option = buf.get_u32();
    let len = buf.get_u32();
    if len > MAX_OPTION_LEN {
        return Err(ProtoError::OptionTooLong(len));
    }
    Ok(OptionHeader { option, len })
}

/// NBD_OPT_INFO / NBD_OPT_GO data: an export name and the infos asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InfoRequest {
    pub name: String,
    pub requests: Vec<u16>,
}

pub fn decode_info_request(mut data: &[u8]) -> Result<InfoRequest, ProtoError> {
    let name = take_string(&mut data)?;
    if data.remaining() < 2 {
        return Err(ProtoError::Malformed("missing information request count"));
    }
    let count = data.get_u16() as usize;
    if data.remaining() != count * 2 {
        return Err(ProtoError::Malformed(
            "information request count does not match",
        ));
    }
    let requests = (0..count).map(|_| data.get_u16()).collect();
    Ok(InfoRequest { name, requests })
}

/// NBD_OPT_{LIST,SET}_META_CONTEXT data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetaContextRequest {
    pub export: String,
    pub queries: Vec<String>,
}

pub fn decode_meta_context_request(mut data: &[u8]) -> Result<MetaContextRequest, ProtoError> {
    let export = take_string(&mut data)?;
    if data.remaining() < 4 {
        return Err(ProtoError::Malformed("missing query count"));
    }
    let count = data.get_u32() as usize;
    if count > data.remaining() / 4 {
        return Err(ProtoError::Malformed("more queries than bytes"));
    }
    let queries = (0..count)
        .map(|_| take_string(&mut data))
        .collect::<Result<Vec<_>, _>>()?;
    if data.has_remaining() {
        return Err(ProtoError::Malformed("trailing bytes after the queries"));
    }
    Ok(MetaContextRequest { export, queries })
}

fn take_string(data: &mut &[u8]) -> Result<String, ProtoError> {
    if data.remaining() < 4 {
        return Err(ProtoError::Malformed("missing string length"));
    }
    let len = data.get_u32() as usize;
    if len > data.remaining() || len > MAX_NAME_LEN {
        return Err(ProtoError::Malformed("string longer than its option"));
    }
    let text = std::str::from_utf8(&data[..len])
        .map_err(|_| ProtoError::Malformed("string is not UTF-8"))?;
    let text = text.to_string();
    data.advance(len);
    Ok(text)
}

/// Encodes an option reply.
pub fn encode_option_reply(option: u32, reply_type: u32, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(20 + data.len());
    out.put_u64(OPTION_REPLY_MAGIC);
    out.put_u32(option);
    out.put_u32(reply_type);
    out.put_u32(data.len() as u32);
    out.put_slice(data);
    out
}

/// `NBD_REP_SERVER` data for `NBD_OPT_LIST`.
pub fn encode_server_entry(name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.put_u32(name.len() as u32);
    out.put_slice(name.as_bytes());
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_EXPORT`.
pub fn encode_info_export(size: u64, flags: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(12);
    out.put_u16(info::EXPORT);
    out.put_u64(size);
    out.put_u16(flags);
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_BLOCK_SIZE`.
pub fn encode_info_block_size(minimum: u32, preferred: u32, maximum: u32) -> Vec<u8> {
    let mut out = Vec::with_capacity(14);
    out.put_u16(info::BLOCK_SIZE);
    out.put_u32(minimum);
    out.put_u32(preferred);
    out.put_u32(maximum);
    out
}

/// `NBD_REP_INFO` data for `NBD_INFO_NAME` or `NBD_INFO_DESCRIPTION`.
pub fn encode_info_text(kind: u16, text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + text.len());
    out.put_u16(kind);
    out.put_slice(text.as_bytes());
    out
}

/// `NBD_REP_META_CONTEXT` data.
pub fn encode_meta_context(id: u32, name: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + name.len());
    out.put_u32(id);
    out.put_slice(name.as_bytes());
    out
}

/// A transmission-phase request header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    pub flags: u16,
    pub kind: u16,
    pub cookie: u64,
    pub offset: u64,
    pub len: u32,
}

impl Request {
    pub fn has(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }
}

pub fn decode_request(bytes: &[u8; REQUEST_LEN]) -> Result<Request, ProtoError> {
    let mut buf = &bytes[..];
    let magic = buf.get_u32();
    if magic != REQUEST_MAGIC {
        return Err(ProtoError::BadMagic(magic.into()));
    }
    Ok(Request {
        flags: buf.get_u16(),
        kind: buf.get_u16(),
        cookie: buf.get_u64(),
        offset: buf.get_u64(),
        len: buf.get_u32(),
    })
}

pub fn encode_request(request: &Request) -> [u8; REQUEST_LEN] {
    let mut out = [0u8; REQUEST_LEN];
    let mut buf = &mut out[..];
    buf.put_u32(REQUEST_MAGIC);
    buf.put_u16(request.flags);
    buf.put_u16(request.kind);
    buf.put_u64(request.cookie);
    buf.put_u64(request.offset);
    buf.put_u32(request.len);
    out
}

/// A simple reply header; for a successful read, the data follows.
pub fn encode_simple_reply(out: &mut BytesMut, error: u32, cookie: u64) {
    out.put_u32(SIMPLE_REPLY_MAGIC);
    out.put_u32(error);
    out.put_u64(cookie);
}

/// A structured reply chunk header; `len` bytes of payload follow.
pub fn encode_chunk_header(out: &mut BytesMut, flags: u16, kind: u16, cookie: u64, len: u32) {
    out.put_u32(STRUCTURED_REPLY_MAGIC);
    out.put_u16(flags);
    out.put_u16(kind);
    out.put_u64(cookie);
    out.put_u32(len);
}

/// A structured `NBD_REPLY_TYPE_ERROR` chunk, always the last.
pub fn encode_error_chunk(out: &mut BytesMut, cookie: u64, error: u32, message: &str) {
    let message = &message.as_bytes()[..message.len().min(4096)];
    encode_chunk_header(
        out,
        reply::FLAG_DONE,
        reply::ERROR,
        cookie,
        6 + message.len() as u32,
    );
    out.put_u32(error);
    out.put_u16(message.len() as u16);
    out.put_slice(message);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn requests_round_trip() {
        let request = Request {
            flags: cflags::FUA,
            kind: cmd::WRITE,
            cookie: 0xdead_beef,
            offset: 4096,
            len: 8192,
        };
        assert_eq!(decode_request(&encode_request(&request)), Ok(request));
        let mut bad = encode_request(&request);
        bad[0] = 0;
        assert!(matches!(decode_request(&bad), Err(ProtoError::BadMagic(_))));
    }

    #[test]
    fn info_requests_parse() {
        let mut data = Vec::new();
        data.put_u32(3);
        data.put_slice(b"vol");
        data.put_u16(2);
        data.put_u16(info::BLOCK_SIZE);
        data.put_u16(info::NAME);
        let parsed = decode_info_request(&data).unwrap();
        assert_eq!(parsed.name, "vol");
        assert_eq!(parsed.requests, vec![info::BLOCK_SIZE, info::NAME]);
        assert!(decode_info_request(&data[..5]).is_err());
    }

    #[test]
    fn meta_context_requests_parse() {
        let mut data = Vec::new();
        data.put_u32(0);
        data.put_u32(1);
        data.put_u32(BASE_ALLOCATION.len() as u32);
        data.put_slice(BASE_ALLOCATION.as_bytes());
        let parsed = decode_meta_context_request(&data).unwrap();
        assert_eq!(parsed.queries, vec![BASE_ALLOCATION.to_string()]);
        data.push(0);
        assert!(decode_meta_context_request(&data).is_err());
    }

    proptest! {
        #[test]
        fn decoders_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode_info_request(&bytes);
            let _ = decode_meta_context_request(&bytes);
            if bytes.len() >= REQUEST_LEN {
                let _ = decode_request(bytes[..REQUEST_LEN].try_into().unwrap());
            }
            if bytes.len() >= OPTION_HEADER_LEN {
                let _ = decode_option_header(bytes[..OPTION_HEADER_LEN].try_into().unwrap());
            }
        }
    }
}
