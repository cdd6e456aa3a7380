//! One connection's transmission phase: requests are read in order, run
//! concurrently (up to [`MAX_IN_FLIGHT`] at once), and answered as each
//! completes, by a writer task that owns the socket's write half.
//!
//! A request is first run right where it was read: most (a write into the
//! log, a read from the cache) finish without waiting, and then cost no
//! task of their own. Only one that has to wait (for the store, a flush, or
//! room for dirty data) is handed to a task of its own.
//!
//! The bytes a connection holds are bounded (see [`super::budget`]): a
//! request holds its payload or its reply's data from its connection's
//! and the server's budgets until its reply is written, and a reply that
//! cannot be written for [`REPLY_STALL_TIMEOUT`] ends the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch};
use tokio::task::JoinSet;

use super::MAX_REQUEST_LEN;
use super::budget::{ConnectionBudget, Held, ServerBudget};
use super::handshake::{BASE_ALLOCATION_ID, Session};
use super::proto::{self, Request, cflags, cmd, errno, reply};
use super::reply::{Reply, simple_read, structured_read};
use crate::engine::{EngineError, WriteBuffer};
use crate::inline::poll_once;

/// Requests of one connection running at once.
pub const MAX_IN_FLIGHT: usize = 128;
/// A write longer than the maximum is read through and refused if it is at
/// most this long; longer claims end the connection.
const MAX_DISCARDED_PAYLOAD: u32 = 2 * MAX_REQUEST_LEN;
/// Bytes read from the socket at once: a burst of small requests, headers
/// and payloads, comes in with a few reads.
const READ_BUFFER: usize = 256 << 10;
/// A reply the client takes none of, or a write payload it sends none of,
/// for this long ends the connection: either holds bytes of the server's
/// budget that other clients wait for.
pub const REPLY_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);
/// Once the server is stopping, a reply the client takes none of for this
/// long ends the connection: a stop does not wait for a client that
/// pipelines reads and never takes the replies, and one that reads on gets
/// the replies of the requests it sent.
const STOPPING_STALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// A reply, and the bytes it holds until it is written.
type Queued = (Reply, Option<Held>);

/// Serves requests until the client disconnects or `shutdown` turns true;
/// requests already read are finished and answered either way.
pub async fn serve<S>(
    stream: S,
    session: Session,
    budget: &ServerBudget,
    idle_timeout: Option<std::time::Duration>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let budget = budget.connection();
    let (replies, queued) = mpsc::channel::<Queued>(MAX_IN_FLIGHT);
    let writer = tokio::spawn(write_replies(writer, queued, shutdown.clone()));
    let session = Arc::new(session);
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut handlers = JoinSet::new();
    loop {
        let mut header = [0u8; proto::REQUEST_LEN];
        let next = next_request(&mut reader, &mut header, &in_flight, idle_timeout);
        tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            next = next => match next {
                Next::Request => {}
                Next::Closed => break,
                Next::Idle => {
                    tracing::debug!(timeout = ?idle_timeout, "closing an NBD connection that sent nothing for --idle-timeout");
                    break;
                }
            },
        }
        let request = match proto::decode_request(&header) {
            Ok(request) => request,
            Err(error) => {
                tracing::debug!(%error, "closing an NBD connection that broke the protocol");
                break;
            }
        };
        if request.kind == cmd::DISC || replies.is_closed() {
            break;
        }
        let held = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            held = hold_for(&budget, &request) => held,
        };
        let payload = tokio::select! {
            biased;
            _ = shutdown.wait_for(|stop| *stop) => break,
            payload = read_payload(&mut reader, &request) => payload?,
        };
        let payload = match payload {
            Payload::Ok(payload) => payload,
            Payload::Refused => {
                let refused = error_reply(&session, &request, errno::EINVAL, "request too long");
                let _ = replies.send((refused, None)).await;
                continue;
            }
            Payload::Absurd => break,
        };
        let permit = Arc::clone(&in_flight)
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let mut handler = Box::pin(handle(
            Arc::clone(&session),
            request,
            payload,
            replies.clone(),
            (permit, held),
        ));
        if poll_once(handler.as_mut()).is_pending() {
            handlers.spawn(handler);
        }
        while handlers.try_join_next().is_some() {}
    }
    while handlers.join_next().await.is_some() {}
    drop(replies);
    writer.await.unwrap_or_else(|e| Err(io::Error::other(e)))
}

/// What came instead of the next request header.
enum Next {
    Request,
    Closed,
    /// Nothing for `idle_timeout`, and no request in flight.
    Idle,
}

/// Reads the next request header into `header`. With an idle timeout, a
/// client with no request in flight that sends nothing for that long is
/// idle; time with requests in flight does not count. The read is never
/// cancelled halfway (that would lose bytes of the stream): only a
/// connection about to be closed stops waiting.
async fn next_request<R: AsyncRead + Unpin>(
    reader: &mut R,
    header: &mut [u8; proto::REQUEST_LEN],
    in_flight: &Semaphore,
    idle_timeout: Option<std::time::Duration>,
) -> Next {
    let read = reader.read_exact(header);
    tokio::pin!(read);
    let Some(timeout) = idle_timeout else {
        return match read.await {
            Ok(_) => Next::Request,
            Err(_) => Next::Closed,
        };
    };
    loop {
        match tokio::time::timeout(timeout, &mut read).await {
            Ok(Ok(_)) => return Next::Request,
            Ok(Err(_)) => return Next::Closed,
            Err(_) if in_flight.available_permits() == MAX_IN_FLIGHT => return Next::Idle,
            Err(_) => continue,
        }
    }
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
    let mut reader = Stalling::new(reader);
    let payload = WriteBuffer::read_from(&mut reader, request.len as usize).await?;
    Ok(Payload::Ok(payload))
}

/// A reader that fails with `TimedOut` once it has waited
/// [`REPLY_STALL_TIMEOUT`] for a byte: a client that sends a write's header
/// and not its payload holds the payload's budget only that long.
struct Stalling<'a, R> {
    inner: &'a mut R,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<'a, R> Stalling<'a, R> {
    fn new(inner: &'a mut R) -> Self {
        Stalling {
            inner,
            deadline: Box::pin(tokio::time::sleep(REPLY_STALL_TIMEOUT)),
        }
    }
}

impl<R: AsyncRead + Unpin> AsyncRead for Stalling<'_, R> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut *this.inner).poll_read(cx, buf) {
            std::task::Poll::Ready(read) => {
                let next = tokio::time::Instant::now() + REPLY_STALL_TIMEOUT;
                this.deadline.as_mut().reset(next);
                std::task::Poll::Ready(read)
            }
            std::task::Poll::Pending => match this.deadline.as_mut().poll(cx) {
                std::task::Poll::Ready(()) => std::task::Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client sent none of a write's payload for 15 s",
                ))),
                std::task::Poll::Pending => std::task::Poll::Pending,
            },
        }
    }
}

/// The bytes `request` holds while it runs: its payload, or its reply's
/// data.
async fn hold_for(budget: &ConnectionBudget, request: &Request) -> Option<Held> {
    match request.kind {
        cmd::READ | cmd::WRITE => Some(budget.hold(request.len).await),
        _ => None,
    }
}

/// Writes replies as they come; each gives back its bytes once written.
/// Ends with an error when the client takes nothing for
/// [`REPLY_STALL_TIMEOUT`], or, once `shutdown` turns true, for
/// [`STOPPING_STALL_TIMEOUT`]. Its end drops the queue, so that requests
/// still finishing hand their replies to nobody rather than wait.
async fn write_replies<W: AsyncWrite>(
    writer: W,
    mut queued: mpsc::Receiver<Queued>,
    mut shutdown: watch::Receiver<bool>,
) -> io::Result<()> {
    let mut writer = std::pin::pin!(BufWriter::with_capacity(256 << 10, writer));
    while let Some(first) = queued.recv().await {
        let mut next = Some(first);
        while let Some((reply, held)) = next {
            unstalled(write_reply(&mut writer, &reply), &mut shutdown).await?;
            drop(held);
            next = queued.try_recv().ok();
        }
        unstalled(writer.flush(), &mut shutdown).await?;
    }
    writer.shutdown().await
}

/// `write`, unless it makes no progress for [`REPLY_STALL_TIMEOUT`], or
/// for [`STOPPING_STALL_TIMEOUT`] once `shutdown` turns true.
async fn unstalled(
    write: impl Future<Output = io::Result<()>>,
    shutdown: &mut watch::Receiver<bool>,
) -> io::Result<()> {
    let mut write = std::pin::pin!(write);
    tokio::select! {
        biased;
        written = &mut write => return written,
        _ = tokio::time::sleep(REPLY_STALL_TIMEOUT) => return Err(stalled("the client took no reply for 15 s")),
        _ = shutdown.wait_for(|stop| *stop) => {}
    }
    match tokio::time::timeout(STOPPING_STALL_TIMEOUT, write).await {
        Ok(written) => written,
        Err(_) => Err(stalled(
            "the server is stopping, and the client took no reply for 1 s",
        )),
    }
}

fn stalled(why: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, why)
}

/// Small frames gather in the buffer; large ones go straight out.
async fn write_reply<W: AsyncWrite>(
    writer: &mut Pin<&mut BufWriter<W>>,
    reply: &Reply,
) -> io::Result<()> {
    for frame in reply.frames() {
        writer.write_all(frame).await?;
    }
    Ok(())
}

async fn handle(
    session: Arc<Session>,
    request: Request,
    payload: WriteBuffer,
    replies: mpsc::Sender<Queued>,
    (_running, held): (OwnedSemaphorePermit, Option<Held>),
) {
    let reply = match respond(&session, &request, payload).await {
        Ok(reply) => reply,
        Err((code, message)) => error_reply(&session, &request, code, &message),
    };
    let _ = replies.send((reply, held)).await;
}

type Failure = (u32, String);

fn failure(error: EngineError) -> Failure {
    (errno::from_linux(error.errno()), error.to_string())
}

fn refuse(code: u32, message: &str) -> Failure {
    (code, message.to_string())
}

async fn respond(
    session: &Session,
    request: &Request,
    payload: WriteBuffer,
) -> Result<Reply, Failure> {
    // A volume opened read-only refuses writes itself (EROFS, which NBD
    // calls EPERM), with a message that says why and what to do.
    let volume = session.export.volume();
    let fua = request.has(cflags::FUA);
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
    .map_err(failure)?;
    Ok(done_reply(session, request))
}

/// The reply to a request that succeeded with nothing to return.
fn done_reply(session: &Session, request: &Request) -> Reply {
    let mut out = BytesMut::with_capacity(20);
    if session.structured {
        proto::encode_chunk_header(&mut out, reply::FLAG_DONE, reply::NONE, request.cookie, 0);
    } else {
        proto::encode_simple_reply(&mut out, 0, request.cookie);
    }
    Reply::header(out)
}

fn error_reply(session: &Session, request: &Request, code: u32, message: &str) -> Reply {
    let mut out = BytesMut::with_capacity(32 + message.len());
    if session.structured {
        proto::encode_error_chunk(&mut out, request.cookie, code, message);
    } else {
        proto::encode_simple_reply(&mut out, code, request.cookie);
    }
    Reply::header(out)
}

async fn read(session: &Session, request: &Request) -> Result<Reply, Failure> {
    if request.len > MAX_REQUEST_LEN {
        return Err(refuse(
            errno::EINVAL,
            "read longer than the maximum block size",
        ));
    }
    if request.len == 0 && session.structured {
        return Ok(done_reply(session, request));
    }
    let data = session
        .export
        .volume()
        .read_parts(request.offset, request.len as usize)
        .await
        .map_err(failure)?;
    Ok(match session.structured {
        true => structured_read(
            request.cookie,
            request.offset,
            &data,
            request.has(cflags::DF),
        ),
        false => simple_read(request.cookie, &data),
    })
}

async fn block_status(session: &Session, request: &Request) -> Result<Reply, Failure> {
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
        .volume()
        .allocation(request.offset, u64::from(request.len))
        .await
        .map_err(failure)?;
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
    Ok(Reply::header(out))
}
