//! One connection's transmission phase: requests are read in order, run
//! concurrently (up to [`MAX_IN_FLIGHT`] at once), and answered as each
//! completes, by a writer task that owns the socket's write half.

use std::io;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::MAX_REQUEST_LEN;
use super::handshake::{BASE_ALLOCATION_ID, Session};
use super::proto::{self, Request, cflags, cmd, errno, reply};
use crate::engine::{EngineError, WriteBuffer};

/// Requests of one connection running at once.
pub const MAX_IN_FLIGHT: usize = 128;
/// A write longer than the maximum is read through and refused if it is at
/// most this long; longer claims end the connection.
const MAX_DISCARDED_PAYLOAD: u32 = 2 * MAX_REQUEST_LEN;
/// Zero runs at least this long come back as holes in structured reads.
const MIN_HOLE: usize = 64 << 10;

/// Serves requests until the client disconnects or `shutdown` turns true;
/// requests already read are finished and answered either way.
pub async fn serve<S>(
    stream: S,
    session: Session,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut reader, writer) = tokio::io::split(stream);
    let (replies, queued) = mpsc::channel::<BytesMut>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(writer, queued));
    let session = Arc::new(session);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut handlers = JoinSet::new();
    loop {
        let mut header = [0u8; proto::REQUEST_LEN];
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            read = reader.read_exact(&mut header) => if read.is_err() { break },
        }
        let request = match proto::decode_request(&header) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "closing an NBD connection that broke the protocol");
                break;
            }
        };
        if request.kind == cmd::DISC {
            break;
        }
        let payload = match read_payload(&mut reader, &request).await? {
            Payload::Ok(payload) => payload,
            Payload::Refused => {
                let _ = replies
                    .send(error_reply(
                        &session,
                        &request,
                        errno::EINVAL,
                        "request too long",
                    ))
                    .await;
                continue;
            }
            Payload::Absurd => break,
        };
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        handlers.spawn(handle(
            Arc::clone(&session),
            request,
            payload,
            replies.clone(),
            permit,
        ));
        while handlers.try_join_next().is_some() {}
    }
    while handlers.join_next().await.is_some() {}
    drop(replies);
    writer.await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

enum Payload {
    Ok(WriteBuffer),
    Refused,
    Absurd,
}

async fn read_payload<R: AsyncRead + Unpin>(
    reader: &mut R,
    request: &Request,
) -> io::Result<Payload> {
    if request.kind != cmd::WRITE {
        return Ok(Payload::Ok(WriteBuffer::default()));
    }
    if request.len > MAX_DISCARDED_PAYLOAD {
        return Ok(Payload::Absurd);
    }
    if request.len > MAX_REQUEST_LEN {
        tokio::io::copy(&mut reader.take(request.len.into()), &mut tokio::io::sink()).await?;
        return Ok(Payload::Refused);
    }
    let mut payload = WriteBuffer::zeroed(request.len as usize);
    reader.read_exact(payload.data_mut()).await?;
    Ok(Payload::Ok(payload))
}

async fn write_replies<W: AsyncWrite>(
    writer: W,
    mut queued: mpsc::Receiver<BytesMut>,
) -> io::Result<()> {
    let mut writer = std::pin::pin!(BufWriter::with_capacity(256 << 10, writer));
    while let Some(reply) = queued.recv().await {
        writer.write_all(&reply).await?;
        while let Ok(more) = queued.try_recv() {
            writer.write_all(&more).await?;
        }
        writer.flush().await?;
    }
    writer.shutdown().await
}

async fn handle(
    session: Arc<Session>,
    request: Request,
    payload: WriteBuffer,
    replies: mpsc::Sender<BytesMut>,
    _permit: OwnedSemaphorePermit,
) {
    let reply = match respond(&session, &request, payload).await {
        Ok(reply) => reply,
        Err((code, message)) => error_reply(&session, &request, code, &message),
    };
    let _ = replies.send(reply).await;
}

type Failure = (u32, String);

fn failure(request: &Request, error: EngineError) -> Failure {
    let code = match error {
        EngineError::OutOfRange { .. }
            if matches!(request.kind, cmd::WRITE | cmd::WRITE_ZEROES) =>
        {
            errno::ENOSPC
        }
        ref other => errno::from_linux(other.errno()),
    };
    (code, error.to_string())
}

fn refuse(code: u32, message: &str) -> Failure {
    (code, message.to_string())
}

async fn respond(
    session: &Session,
    request: &Request,
    payload: WriteBuffer,
) -> Result<BytesMut, Failure> {
    let export = &session.export;
    let volume = &export.volume;
    let fua = request.has(cflags::FUA);
    let writes = matches!(request.kind, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    if writes && export.read_only {
        return Err(refuse(errno::EPERM, "this export is read-only"));
    }
    let (offset, len) = (request.offset, u64::from(request.len));
    match request.kind {
        cmd::READ => return read(session, request).await,
        cmd::WRITE => volume.write_buffer(offset, payload, fua).await,
        cmd::FLUSH => volume.flush().await,
        cmd::TRIM => volume.discard(offset, len, fua).await,
        cmd::WRITE_ZEROES => volume.write_zeroes(offset, len, fua).await,
        cmd::CACHE => volume.prefetch(offset, len),
        cmd::BLOCK_STATUS => return block_status(session, request).await,
        _ => return Err(refuse(errno::EINVAL, "unknown command")),
    }
    .map_err(|e| failure(request, e))?;
    Ok(done_reply(session, request))
}

/// The reply to a request that succeeded with nothing to return.
fn done_reply(session: &Session, request: &Request) -> BytesMut {
    let mut out = BytesMut::with_capacity(20);
    if session.structured {
        proto::encode_chunk_header(&mut out, reply::FLAG_DONE, reply::NONE, request.cookie, 0);
    } else {
        proto::encode_simple_reply(&mut out, 0, request.cookie);
    }
    out
}

fn error_reply(session: &Session, request: &Request, code: u32, message: &str) -> BytesMut {
    let mut out = BytesMut::with_capacity(32 + message.len());
    if session.structured {
        proto::encode_error_chunk(&mut out, request.cookie, code, message);
    } else {
        proto::encode_simple_reply(&mut out, code, request.cookie);
    }
    out
}

async fn read(session: &Session, request: &Request) -> Result<BytesMut, Failure> {
    if request.len > MAX_REQUEST_LEN {
        return Err(refuse(
            errno::EINVAL,
            "read longer than the maximum block size",
        ));
    }
    let len = request.len as usize;
    if !session.structured {
        let mut out = BytesMut::with_capacity(16 + len);
        proto::encode_simple_reply(&mut out, 0, request.cookie);
        out.resize(16 + len, 0);
        read_into(session, request, &mut out[16..]).await?;
        return Ok(out);
    }
    if len == 0 {
        return Ok(done_reply(session, request));
    }
    // One OFFSET_DATA chunk, read in place; split out holes afterwards.
    const DATA_HEADER: usize = 20 + 8;
    let mut out = BytesMut::with_capacity(DATA_HEADER + len);
    proto::encode_chunk_header(
        &mut out,
        reply::FLAG_DONE,
        reply::OFFSET_DATA,
        request.cookie,
        8 + len as u32,
    );
    out.put_u64(request.offset);
    out.resize(DATA_HEADER + len, 0);
    read_into(session, request, &mut out[DATA_HEADER..]).await?;
    if request.has(cflags::DF) {
        return Ok(out);
    }
    let runs = zero_runs(&out[DATA_HEADER..]);
    if runs.len() == 1 && !runs[0].1 {
        return Ok(out);
    }
    Ok(split_holes(request, &out[DATA_HEADER..], &runs))
}

async fn read_into(session: &Session, request: &Request, buf: &mut [u8]) -> Result<(), Failure> {
    session
        .export
        .volume
        .read(request.offset, buf)
        .await
        .map_err(|e| failure(request, e))
}

/// Runs of `data`: (length, whether it is a hole of at least [`MIN_HOLE`]).
fn zero_runs(data: &[u8]) -> Vec<(usize, bool)> {
    const BLOCK: usize = 4096;
    let mut runs: Vec<(usize, bool)> = Vec::new();
    for block in data.chunks(BLOCK) {
        let zero = block.iter().all(|&b| b == 0);
        match runs.last_mut() {
            Some((len, is_zero)) if *is_zero == zero => *len += block.len(),
            _ => runs.push((block.len(), zero)),
        }
    }
    // Short zero runs are cheaper to send as data than as a chunk.
    let mut merged: Vec<(usize, bool)> = Vec::new();
    for (len, zero) in runs {
        let zero = zero && len >= MIN_HOLE;
        match merged.last_mut() {
            Some((last, last_zero)) if *last_zero == zero => *last += len,
            _ => merged.push((len, zero)),
        }
    }
    merged
}

fn split_holes(request: &Request, data: &[u8], runs: &[(usize, bool)]) -> BytesMut {
    let mut out = BytesMut::with_capacity(data.len() + runs.len() * 32);
    let mut at = 0usize;
    for (i, &(len, hole)) in runs.iter().enumerate() {
        let flags = if i + 1 == runs.len() {
            reply::FLAG_DONE
        } else {
            0
        };
        let offset = request.offset + at as u64;
        if hole {
            proto::encode_chunk_header(&mut out, flags, reply::OFFSET_HOLE, request.cookie, 12);
            out.put_u64(offset);
            out.put_u32(len as u32);
        } else {
            proto::encode_chunk_header(
                &mut out,
                flags,
                reply::OFFSET_DATA,
                request.cookie,
                8 + len as u32,
            );
            out.put_u64(offset);
            out.put_slice(&data[at..at + len]);
        }
        at += len;
    }
    out
}

async fn block_status(session: &Session, request: &Request) -> Result<BytesMut, Failure> {
    if !session.structured || !session.base_allocation {
        return Err(refuse(
            errno::EINVAL,
            "negotiate the base:allocation meta context first",
        ));
    }
    if request.len == 0 {
        return Err(refuse(errno::EINVAL, "block status of zero bytes"));
    }
    let extents = session
        .export
        .volume
        .allocation(request.offset, u64::from(request.len))
        .await
        .map_err(|e| failure(request, e))?;
    let extents = if request.has(cflags::REQ_ONE) {
        &extents[..1]
    } else {
        &extents[..]
    };
    let mut out = BytesMut::with_capacity(24 + 8 * extents.len());
    let len = 4 + 8 * extents.len() as u32;
    proto::encode_chunk_header(
        &mut out,
        reply::FLAG_DONE,
        reply::BLOCK_STATUS,
        request.cookie,
        len,
    );
    out.put_u32(BASE_ALLOCATION_ID);
    for extent in extents {
        out.put_u32(extent.len as u32);
        out.put_u32(if extent.zero {
            proto::STATE_HOLE | proto::STATE_ZERO
        } else {
            0
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_long_zero_runs() {
        let mut data = vec![1u8; 4096];
        data.extend(vec![0u8; 128 << 10]);
        data.extend(vec![2u8; 4096]);
        data.extend(vec![0u8; 8192]);
        let runs = zero_runs(&data);
        assert_eq!(
            runs,
            vec![(4096, false), (128 << 10, true), (4096 + 8192, false)]
        );
        assert_eq!(zero_runs(&vec![0u8; 1 << 20]), vec![(1 << 20, true)]);
    }
}
