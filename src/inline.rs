//! Running a request where it arrived when it need not wait.
//!
//! Most block requests finish without waiting: a write goes into the log
//! (the page cache), a read comes from the memory cache. Handing each to a
//! task of its own, and its answer back, costs more than the work. So a
//! transport polls a request's future once where it arrived, and only a
//! future that has to wait (for the store, a flush, room for dirty data)
//! moves to a task.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Polls `future` once, with no task to wake. A future that is not done may
/// then be moved to a task: its next poll, there, registers the waker that
/// counts (every future must wake the waker of its latest poll).
pub fn poll_once<F: Future + ?Sized>(future: Pin<&mut F>) -> Poll<F::Output> {
    future.poll(&mut Context::from_waker(Waker::noop()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_future_finishes_here_and_a_waiting_one_later() {
        assert_eq!(poll_once(std::pin::pin!(async { 7 })), Poll::Ready(7));
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (send, receive) = tokio::sync::oneshot::channel::<u32>();
        let mut waiting = Box::pin(async move { receive.await.unwrap() + 1 });
        assert!(poll_once(waiting.as_mut()).is_pending());
        let task = runtime.spawn(waiting);
        send.send(41).unwrap();
        assert_eq!(runtime.block_on(task).unwrap(), 42);
    }
}
