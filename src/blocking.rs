//! Blocking work (file I/O, decoding, device set-up) run from async code.
//!
//! Promises, for every caller:
//! - a panic in the work is raised again in the caller, as if the work had
//!   run there: a bug is never turned into a silent `None`;
//! - work the runtime cancels (only when it shuts down, before the work
//!   started) leaves the caller waiting; the runtime drops the caller next.
//!   Before, each caller unwrapped the join with `expect`, and a process
//!   that shut down its runtime while a task waited for the blocking pool
//!   printed a panic on its way out.

use std::future::Future;

use tokio::task::JoinError;

/// Runs `work` on tokio's blocking pool and returns what it returns.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match settle(tokio::task::spawn_blocking(work).await) {
        Some(value) => value,
        None => std::future::pending().await,
    }
}

/// Runs `work` on this thread when the runtime lets a worker block
/// (`block_in_place`: the worker's other tasks move to another thread),
/// else as [`run`] does. It saves waking another thread and being woken
/// back, for work shorter than those wake-ups.
pub fn here<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> impl Future<Output = T> + Send {
    let inline = may_block_in_place();
    async move {
        match inline {
            true => tokio::task::block_in_place(work),
            false => run(work).await,
        }
    }
}

/// Whether `tokio::task::block_in_place` may be called here: inside a
/// multi-threaded runtime (it panics on a current-thread one).
pub fn may_block_in_place() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|runtime| runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread)
}

/// What a join of blocking work gives its caller: the value, a panic
/// raised again, or `None` when the runtime cancelled the work.
fn settle<T>(joined: Result<T, JoinError>) -> Option<T> {
    match joined {
        Ok(value) => Some(value),
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_gives_its_value_and_its_panic_to_the_caller() {
        assert_eq!(run(|| 7).await, 7);
        let caller = tokio::spawn(run(|| panic!("a bug in blocking work")));
        let raised = caller.await.unwrap_err();
        assert!(raised.is_panic());
        let message = raised.into_panic();
        assert_eq!(
            message.downcast_ref::<&str>(),
            Some(&"a bug in blocking work")
        );
    }

    #[tokio::test]
    async fn cancelled_work_is_no_panic() {
        let never = tokio::spawn(std::future::pending::<u32>());
        never.abort();
        let cancelled = never.await.unwrap_err();
        assert!(cancelled.is_cancelled());
        assert_eq!(settle(Err::<u32, _>(cancelled)), None);
    }

    #[test]
    fn here_runs_inline_only_on_a_multi_threaded_runtime() {
        let on_this_thread = |runtime: tokio::runtime::Runtime| {
            runtime.block_on(async {
                let caller = std::thread::current().id();
                here(move || std::thread::current().id() == caller).await
            })
        };
        let multi = tokio::runtime::Builder::new_multi_thread().build().unwrap();
        assert!(on_this_thread(multi));
        let single = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert!(!on_this_thread(single));
        assert!(!may_block_in_place());
    }
}
