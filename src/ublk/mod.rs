//! The io_uring ublk target: `/dev/ublkbN` served straight from the
//! engine. The only module that uses libublk.
//!
//! Each queue thread runs libublk's per-tag io tasks on a smol executor
//! that waits on the queue ring, inside the tokio runtime's context. A
//! request that finishes without waiting (a write into the log, a read
//! from the memory cache) runs right there ([`crate::inline`]). One that
//! waits is handed to the tokio runtime; its completion is sent back on a
//! oneshot channel, which wakes the io task, and then an eventfd is
//! written, on which the ring keeps a read armed: its completion turns the
//! queue loop, which runs the woken task and submits its commit. So queue
//! threads never wait for the object store, and a request completes when
//! the engine completes it.
//!
//! FLUSH arrives with `start_sector = u64::MAX`: requests dispatch on the
//! op before anything looks at the range.
//!
//! A live device grows with `UBLK_U_CMD_UPDATE_SIZE` where the driver has
//! it (it reports `UBLK_F_UPDATE_SIZE` among its features, Linux 6.16 on);
//! elsewhere [`grow`] says so, and the device keeps its size
//! until it is added again.

use std::future::Future;
use std::os::fd::{AsFd, AsRawFd};
use std::rc::Rc;
use std::sync::Arc;
use std::task::Poll;
use std::thread::JoinHandle;

use io_uring::{opcode, types};
use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{UblkDev, UblkQueue};
use libublk::uring_async::ublk_wake_task;
use libublk::{BufDesc, UblkError, UblkFlags, UblkUringData, sys};
use nix::sys::eventfd::{EfdFlags, EventFd};

use crate::engine::{ReadData, Volume, WriteBuffer};
use crate::inline::poll_once;

/// Queue geometry, and a device to take over.
#[derive(Debug, Clone, Copy)]
pub struct UblkOptions {
    pub queues: u16,
    pub depth: u16,
    /// Recover this device, whose daemon died (user recovery), instead of
    /// adding a new one.
    pub recover: Option<u32>,
}

/// Whether the kernel has the ublk driver.
pub fn available() -> bool {
    std::path::Path::new("/dev/ublk-control").exists()
}

/// Why a ublk device could not be started, served or removed.
#[derive(Debug, thiserror::Error)]
pub enum UblkFailure {
    #[error("cannot start the ublk thread: {0}")]
    Thread(std::io::Error),
    #[error("the ublk thread ended before the device started")]
    EndedEarly,
    #[error("the ublk thread panicked (a bug in zeroblk, please report it)")]
    Panicked,
    /// A step of libublk's, and its reason (in the message, not as a
    /// source: the CLI prints sources after the message).
    #[error("{step}: {reason}")]
    Step { step: String, reason: UblkError },
}

/// Names the step a libublk error comes from.
fn at(step: impl Into<String>) -> impl FnOnce(UblkError) -> UblkFailure {
    let step = step.into();
    move |reason| UblkFailure::Step { step, reason }
}

/// What growing a live device did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Growth {
    /// The device has its new size now.
    Online,
    /// The driver cannot resize a live device (it lacks
    /// `UBLK_F_UPDATE_SIZE`): the device keeps its size until it is
    /// added again.
    NotInThisKernel,
}

/// The first Linux release whose ublk driver resizes a live device.
pub const ONLINE_GROWTH_KERNEL: &str = "6.16";

/// Whether driver `features` (from `UBLK_U_CMD_GET_FEATURES`, `None` on
/// kernels before 6.5 that lack the command) include resizing a live
/// device.
fn can_resize_live(features: Option<u64>) -> bool {
    features.is_some_and(|features| features & u64::from(sys::UBLK_F_UPDATE_SIZE) != 0)
}

/// A ublk device served by a thread of its own.
pub struct UblkDevice {
    dev_id: u32,
    options: UblkOptions,
    server: Option<JoinHandle<Result<(), UblkFailure>>>,
}

impl UblkDevice {
    /// Adds and starts a device serving `volume`; returns once it is live.
    pub fn start(
        volume: Arc<Volume>,
        runtime: tokio::runtime::Handle,
        options: UblkOptions,
    ) -> Result<UblkDevice, UblkFailure> {
        // The thread sends the device's id once it is live; if it ends
        // first, the channel closes and its own result says why.
        let (ready, started) = std::sync::mpsc::channel::<u32>();
        let server = std::thread::Builder::new()
            .name("ublk-ctrl".into())
            .spawn(move || serve(volume, runtime, options, ready))
            .map_err(UblkFailure::Thread)?;
        match started.recv() {
            Ok(dev_id) => Ok(UblkDevice {
                dev_id,
                options,
                server: Some(server),
            }),
            Err(_) => match server.join() {
                Ok(Err(failure)) => Err(failure),
                Ok(Ok(())) => Err(UblkFailure::EndedEarly),
                Err(_) => Err(UblkFailure::Panicked),
            },
        }
    }

    pub fn path(&self) -> String {
        format!("/dev/ublkb{}", self.dev_id)
    }

    /// Its queues and their depth.
    pub fn options(&self) -> UblkOptions {
        self.options
    }

    /// Its id: `/dev/ublkbN`'s N.
    pub fn id(&self) -> u32 {
        self.dev_id
    }

    /// Stops and deletes the device, after the requests in flight.
    pub fn stop(mut self) -> Result<(), UblkFailure> {
        let device = self.path();
        let ctrl = UblkCtrl::new_simple(self.dev_id as i32)
            .map_err(at(format!("opening the control device of {device}")))?;
        ctrl.kill_dev().map_err(at(format!("stopping {device}")))?;
        let served = self.server.take().map(|t| t.join());
        let _ = ctrl.del_dev();
        match served {
            Some(Ok(result)) => result,
            _ => Err(UblkFailure::Panicked),
        }
    }
}

/// The id of a ublk device path (`/dev/ublkb3` is 3).
pub fn device_id(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/ublkb")?.parse().ok()
}

/// Grows live device `dev_id` to `new_size` bytes (a multiple of its 4K
/// block), if the driver can: its volume must have that size already,
/// since the kernel sends requests up to it at once.
pub fn grow(dev_id: u32, new_size: u64) -> Result<Growth, UblkFailure> {
    let ctrl = UblkCtrl::new_simple(dev_id as i32).map_err(at(format!(
        "opening the control device of /dev/ublkb{dev_id}"
    )))?;
    if !can_resize_live(ctrl.get_driver_features()) {
        return Ok(Growth::NotInThisKernel);
    }
    ctrl.update_size(new_size).map_err(at(format!(
        "growing /dev/ublkb{dev_id} to {new_size} bytes"
    )))?;
    Ok(Growth::Online)
}

/// Deletes a device whose daemon died without taking it down. With user
/// recovery, its requests wait for a new daemon; this fails them instead
/// (a filesystem on it sees I/O errors) and removes `/dev/ublkbN`. The
/// delete is asynchronous: it does not wait for a mount of the device to go.
pub fn remove_orphan(dev_id: u32) -> Result<(), UblkFailure> {
    let ctrl = UblkCtrl::new_simple(dev_id as i32)
        .map_err(at(format!("/dev/ublkb{dev_id} has no ublk control device")))?;
    ctrl.kill_dev()
        .map_err(at(format!("cannot stop /dev/ublkb{dev_id}")))?;
    ctrl.del_dev_async()
        .map_err(at(format!("cannot delete /dev/ublkb{dev_id}")))?;
    Ok(())
}

fn serve(
    volume: Arc<Volume>,
    runtime: tokio::runtime::Handle,
    options: UblkOptions,
    ready: std::sync::mpsc::Sender<u32>,
) -> Result<(), UblkFailure> {
    let max_io = 1u32 << 20;
    // With user recovery, requests in flight when a daemon dies wait for
    // the next one (reissued, as block writes are idempotent) instead of
    // failing: `zeroblk attach NAME --recover` takes the device back.
    let ctrl_flags = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_RECOVERY_REISSUE);
    let (id, dev_flags) = match options.recover {
        Some(dev_id) => {
            UblkCtrl::new_simple(dev_id as i32)
                .and_then(|ctrl| ctrl.start_user_recover())
                .map_err(at(format!("cannot start recovering /dev/ublkb{dev_id}")))?;
            (dev_id as i32, UblkFlags::UBLK_DEV_F_RECOVER_DEV)
        }
        None => (-1, UblkFlags::UBLK_DEV_F_ADD_DEV),
    };
    let ctrl = UblkCtrlBuilder::default()
        .name("zeroblk")
        .id(id)
        .nr_queues(options.queues)
        .depth(options.depth)
        .io_buf_bytes(max_io)
        .ctrl_flags(ctrl_flags)
        .dev_flags(dev_flags)
        .build()
        .map_err(at("cannot set up the ublk device"))?;
    let (size, chunk_size) = (volume.size(), volume.chunk_size());
    let read_only = volume.is_read_only();
    let tgt_init = move |dev: &mut UblkDev| {
        dev.set_default_params(size);
        set_params(&mut dev.tgt.params, chunk_size, read_only);
        Ok(())
    };
    let queue_volume = Arc::clone(&volume);
    let queue_fn = move |qid: u16, dev: &UblkDev| {
        queue_thread(qid, dev, Arc::clone(&queue_volume), runtime.clone())
    };
    let started = move |ctrl: &UblkCtrl| {
        let _ = ready.send(ctrl.dev_info().dev_id);
    };
    ctrl.run_target(tgt_init, queue_fn, started)
        .map(drop)
        .map_err(at("the ublk target failed"))
}

/// The device's parameters beyond its size: 4K blocks, I/O sized from the
/// chunk size; a volatile write cache with FUA, and discards and
/// write-zeroes of any length, unless the volume is read-only, when the
/// kernel makes the disk read-only (writes fail there, and never reach
/// us) and there is nothing to flush.
fn set_params(params: &mut sys::ublk_params, chunk_size: u64, read_only: bool) {
    params.basic.logical_bs_shift = 12;
    params.basic.physical_bs_shift = 12;
    params.basic.io_min_shift = 12;
    params.basic.io_opt_shift = chunk_size.trailing_zeros().min(20) as u8;
    if read_only {
        params.basic.attrs = sys::UBLK_ATTR_READ_ONLY;
        return;
    }
    params.types |= sys::UBLK_PARAM_TYPE_DISCARD;
    params.basic.attrs = sys::UBLK_ATTR_VOLATILE_CACHE | sys::UBLK_ATTR_FUA;
    params.discard.discard_granularity = chunk_size as u32;
    params.discard.max_discard_sectors = u32::MAX >> 9;
    params.discard.max_write_zeroes_sectors = u32::MAX >> 9;
    params.discard.max_discard_segments = 1;
}

/// A request to run on the engine.
enum Op {
    Read(u64, usize),
    Write(u64, WriteBuffer, bool),
    Flush,
    Discard(u64, u64, bool),
    Zeroes(u64, u64, bool),
}

/// The engine's answer: bytes done and read data, or an errno.
type Outcome = Result<Option<ReadData>, i32>;

async fn execute(volume: Arc<Volume>, op: Op) -> Outcome {
    let done = match op {
        Op::Read(offset, len) => {
            return volume
                .read_parts(offset, len)
                .await
                .map(Some)
                .map_err(|e| e.errno());
        }
        Op::Write(offset, data, fua) => volume.write_buffer(offset, data, fua).await,
        Op::Flush => volume.flush().await,
        Op::Discard(offset, len, fua) => volume.discard(offset, len, fua).await,
        Op::Zeroes(offset, len, fua) => volume.write_zeroes(offset, len, fua).await,
    };
    done.map(|()| None).map_err(|e| e.errno())
}

/// Runs `execution` here if it finishes without waiting; otherwise on the
/// runtime, which writes `wakeup` when it is done, so the ring wakes.
async fn complete(
    execution: impl Future<Output = Outcome> + Send + 'static,
    runtime: &tokio::runtime::Handle,
    wakeup: &Arc<EventFd>,
) -> Outcome {
    let mut execution = Box::pin(execution);
    if let Poll::Ready(outcome) = poll_once(execution.as_mut()) {
        return outcome;
    }
    let (send, receive) = futures::channel::oneshot::channel();
    let wakeup = Arc::clone(wakeup);
    runtime.spawn(async move {
        let _ = send.send(execution.await);
        let _ = wakeup.write(1);
    });
    receive.await.unwrap_or(Err(libc::EIO))
}

/// Decodes the request in `tag`'s descriptor.
fn decode(q: &UblkQueue, tag: u16, buf: &[u8]) -> Result<Op, i32> {
    let iod = q.get_iod(tag);
    decode_request(iod.op_flags, iod.start_sector, iod.nr_sectors, buf)
}

/// A request from its descriptor's fields; the op first, since a FLUSH
/// carries no range (its start sector is `u64::MAX`). FUA is honoured on
/// writes, discards and write-zeroes alike, as over NBD.
fn decode_request(
    op_flags: u32,
    start_sector: u64,
    nr_sectors: u32,
    buf: &[u8],
) -> Result<Op, i32> {
    let op = op_flags & 0xff;
    let fua = op_flags & sys::UBLK_IO_F_FUA != 0;
    if op == sys::UBLK_IO_OP_FLUSH {
        return Ok(Op::Flush);
    }
    let offset = start_sector.checked_mul(512).ok_or(libc::EINVAL)?;
    let len = u64::from(nr_sectors) << 9;
    match op {
        sys::UBLK_IO_OP_READ => Ok(Op::Read(offset, len as usize)),
        sys::UBLK_IO_OP_WRITE => {
            let data = WriteBuffer::copy_of(buf.get(..len as usize).ok_or(libc::EINVAL)?);
            Ok(Op::Write(offset, data, fua))
        }
        sys::UBLK_IO_OP_DISCARD => Ok(Op::Discard(offset, len, fua)),
        sys::UBLK_IO_OP_WRITE_ZEROES => Ok(Op::Zeroes(offset, len, fua)),
        _ => Err(libc::EOPNOTSUPP),
    }
}

const EVENTFD_DATA: u64 = UblkUringData::Target as u64 | UblkUringData::NonAsync as u64 | 0xe7;

fn queue_thread(qid: u16, dev: &UblkDev, volume: Arc<Volume>, runtime: tokio::runtime::Handle) {
    // The 8 bytes the armed eventfd read lands in. Declared before the
    // queue, so dropped after it: the ring the read is armed on is gone
    // before its buffer is (see `event_loop`).
    let mut wakeup_counter = WakeupCounter([0; 8]);
    // Requests run here when they need not wait: in the runtime's context,
    // so whatever they start (read-ahead, blocking log writes) goes to it.
    let _in_runtime = runtime.enter();
    let queue = match UblkQueue::new(qid, dev) {
        Ok(queue) => Rc::new(queue),
        Err(error) => {
            tracing::error!(%error, "cannot set up ublk queue {qid}");
            return;
        }
    };
    let wakeup = match EventFd::from_flags(EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK) {
        Ok(fd) => Arc::new(fd),
        Err(error) => {
            tracing::error!(%error, "cannot create an eventfd");
            return;
        }
    };
    let executor = Rc::new(smol::LocalExecutor::new());
    let tasks: Vec<_> = (0..dev.dev_info.queue_depth)
        .map(|tag| {
            let (q, volume, runtime, wakeup) = (
                Rc::clone(&queue),
                Arc::clone(&volume),
                runtime.clone(),
                Arc::clone(&wakeup),
            );
            executor.spawn(async move {
                match io_task(&q, tag, volume, runtime, wakeup).await {
                    Ok(()) | Err(UblkError::QueueIsDown) => {}
                    Err(error) => tracing::error!(%error, tag, "ublk io task failed"),
                }
            })
        })
        .collect();
    let run = Rc::clone(&executor);
    smol::block_on(executor.run(async move {
        if let Err(error) = event_loop(&run, &queue, tasks, &wakeup, &mut wakeup_counter).await {
            tracing::error!(%error, "ublk queue loop failed");
        }
    }));
}

async fn io_task(
    q: &UblkQueue<'_>,
    tag: u16,
    volume: Arc<Volume>,
    runtime: tokio::runtime::Handle,
    wakeup: Arc<EventFd>,
) -> Result<(), UblkError> {
    let mut buffer = IoBuf::<u8>::new(q.dev.dev_info.max_io_buf_bytes as usize);
    q.submit_io_prep_cmd(tag, BufDesc::Slice(buffer.as_slice()), 0, Some(&buffer))
        .await?;
    loop {
        let result = match decode(q, tag, buffer.as_slice()) {
            Err(errno) => -errno,
            Ok(op) => {
                let len = match &op {
                    Op::Read(_, len) => *len as i32,
                    Op::Write(_, data, _) => data.len() as i32,
                    _ => 0,
                };
                match complete(execute(Arc::clone(&volume), op), &runtime, &wakeup).await {
                    Ok(Some(data)) => {
                        data.copy_to(&mut buffer.as_mut_slice()[..data.len()]);
                        len
                    }
                    Ok(None) => len,
                    Err(errno) => -errno,
                }
            }
        };
        q.submit_io_commit_cmd(tag, BufDesc::Slice(buffer.as_slice()), result)
            .await?;
    }
}

/// Where the ring's armed read of the wakeup eventfd puts the counter.
/// Owned by the queue thread, declared before its queue: it outlives the
/// ring, so the kernel never writes into freed memory, even for a read
/// still armed when the queue goes down.
struct WakeupCounter([u8; 8]);

/// Sleeps in `io_uring_enter` on the queue ring (woken by the kernel's
/// requests and, through the armed read, by the wakeup eventfd) and drives
/// the io tasks until the queue is down. One syscall per turn submits the
/// turn's commits and waits for the next requests.
async fn event_loop<T>(
    executor: &smol::LocalExecutor<'_>,
    q: &UblkQueue<'_>,
    tasks: Vec<smol::Task<T>>,
    wakeup: &EventFd,
    counter: &mut WakeupCounter,
) -> Result<(), UblkError> {
    let counter = counter.0.as_mut_ptr();
    let arm = || {
        // SAFETY: `counter` points at 8 bytes owned by the queue thread
        // that outlive the ring (`WakeupCounter`), and only this read
        // writes them: one read is armed at a time, and the next is armed
        // only after its completion was reaped. Nothing reads the bytes.
        let read = opcode::Read::new(types::Fd(wakeup.as_fd().as_raw_fd()), counter, 8)
            .build()
            .user_data(EVENTFD_DATA);
        q.ublk_submit_sqe_sync(read)
    };
    arm()?;
    let woken = std::cell::Cell::new(false);
    let poll = || async { libublk::uring_poll_io_fn::<io_uring::squeue::Entry>(q, None, 1) };
    let reap = |poll_timeout| {
        let aborted = libublk::uring_async::ublk_reap_io_events_with_update_queue(
            q,
            poll_timeout,
            None,
            |cqe| {
                if cqe.user_data() == EVENTFD_DATA {
                    woken.set(true);
                } else {
                    ublk_wake_task(cqe.user_data(), cqe);
                }
            },
        )?;
        if woken.replace(false) {
            arm()?;
        }
        Ok(aborted)
    };
    let run = || while executor.try_tick() {};
    let done = || tasks.iter().all(|task| task.is_finished());
    libublk::run_uring_tasks(poll, reap, run, done).await
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECTORS_4K: u32 = 8;

    #[test]
    fn fua_is_honoured_on_writes_discards_and_write_zeroes() {
        let fua = sys::UBLK_IO_F_FUA;
        let buf = [7u8; 4096];
        let write = decode_request(sys::UBLK_IO_OP_WRITE | fua, 8, SECTORS_4K, &buf);
        assert!(matches!(write, Ok(Op::Write(4096, _, true))));
        let discard = decode_request(sys::UBLK_IO_OP_DISCARD | fua, 8, SECTORS_4K, &[]);
        assert!(matches!(discard, Ok(Op::Discard(4096, 4096, true))));
        let zeroes = decode_request(sys::UBLK_IO_OP_WRITE_ZEROES | fua, 8, SECTORS_4K, &[]);
        assert!(matches!(zeroes, Ok(Op::Zeroes(4096, 4096, true))));
        let plain = decode_request(sys::UBLK_IO_OP_DISCARD, 8, SECTORS_4K, &[]);
        assert!(matches!(plain, Ok(Op::Discard(4096, 4096, false))));
    }

    #[test]
    fn a_read_only_device_is_read_only_with_nothing_to_flush_or_discard() {
        let mut params = sys::ublk_params::default();
        set_params(&mut params, 1 << 20, true);
        assert_eq!(params.basic.attrs, sys::UBLK_ATTR_READ_ONLY);
        assert_eq!(params.types & sys::UBLK_PARAM_TYPE_DISCARD, 0);
        assert_eq!(params.basic.io_opt_shift, 20);
        let mut params = sys::ublk_params::default();
        set_params(&mut params, 1 << 20, false);
        assert_eq!(params.basic.attrs & sys::UBLK_ATTR_READ_ONLY, 0);
        assert_ne!(params.basic.attrs & sys::UBLK_ATTR_VOLATILE_CACHE, 0);
        assert_eq!(params.discard.discard_granularity, 1 << 20);
    }

    #[test]
    fn live_resizing_is_the_drivers_to_report() {
        assert!(!can_resize_live(None));
        let features_of_6_12 = u64::from(sys::UBLK_F_USER_RECOVERY | sys::UBLK_F_USER_COPY);
        assert!(!can_resize_live(Some(features_of_6_12)));
        let update_size = u64::from(sys::UBLK_F_UPDATE_SIZE);
        assert!(can_resize_live(Some(features_of_6_12 | update_size)));
    }

    #[test]
    fn a_flush_carries_no_range_and_odd_requests_are_refused() {
        let flush = decode_request(sys::UBLK_IO_OP_FLUSH, u64::MAX, 0, &[]);
        assert!(matches!(flush, Ok(Op::Flush)));
        let past_u64 = decode_request(sys::UBLK_IO_OP_READ, u64::MAX, SECTORS_4K, &[]);
        assert_eq!(past_u64.err(), Some(libc::EINVAL));
        let short_buffer = decode_request(sys::UBLK_IO_OP_WRITE, 0, SECTORS_4K, &[0; 512]);
        assert_eq!(short_buffer.err(), Some(libc::EINVAL));
        let unknown = decode_request(0xfe, 0, SECTORS_4K, &[]);
        assert_eq!(unknown.err(), Some(libc::EOPNOTSUPP));
    }
}
