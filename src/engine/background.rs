//! Background CPU work: building a commit's chunks (reading them out of the
//! log, compressing, hashing) on threads that yield to the request path.
//!
//! A commit re-encodes every chunk its epochs touched: after scattered
//! small writes, a whole chunk for each 4 KiB written. On tokio's blocking
//! pool that work competed as an equal with the threads serving requests,
//! and on a machine of two cores took half of the CPU from the writes the
//! log was meant to absorb. Here it runs on one thread per core at a
//! lower priority ([`NICE`]): idle CPU goes to commits, busy CPU to
//! requests. Commits never starve: a lower priority is a smaller share,
//! not none, and once `--max-dirty` is reached writes wait for them.
//!
//! The pool is the process's: volumes served together share it, so their
//! commits together never take more than the machine's cores.

use std::panic::{self, AssertUnwindSafe};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;

use tokio::sync::oneshot;

/// The nice value of background threads: a tenth of the CPU share of a
/// request thread when both want to run.
const NICE: i32 = 10;

type Job = Box<dyn FnOnce() + Send>;

/// Runs `work` on a background thread and returns what it returns. A panic
/// in `work` is raised again here, in the caller, and the thread lives on.
pub async fn run<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = oneshot::channel();
    let job: Job = Box::new(move || {
        let _ = done.send(panic::catch_unwind(AssertUnwindSafe(work)));
    });
    if let Err(unsent) = pool().send(job) {
        // No thread could be started: run it on tokio's blocking pool.
        crate::blocking::run(unsent.0).await;
    }
    match result.await.expect("every job sends its outcome") {
        Ok(value) => value,
        Err(payload) => panic::resume_unwind(payload),
    }
}

/// The process's background threads, started on first use.
fn pool() -> &'static Sender<Job> {
    static POOL: OnceLock<Sender<Job>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (jobs, queue) = channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let threads = thread::available_parallelism().map_or(2, |n| n.get());
        for i in 0..threads {
            let queue = Arc::clone(&queue);
            let started = thread::Builder::new()
                .name(format!("zeroblk-bg-{i}"))
                .spawn(move || work_through(&queue));
            if let Err(error) = started {
                tracing::warn!(%error, "could not start a background thread");
            }
        }
        jobs
    })
}

fn work_through(queue: &Mutex<Receiver<Job>>) {
    lower_priority();
    loop {
        let job = queue
            .lock()
            .expect("no job panics holding the queue")
            .recv();
        match job {
            Ok(job) => job(),
            Err(_) => return,
        }
    }
}

/// Lowers the calling thread's CPU priority to [`NICE`]. On Linux the nice
/// value belongs to a thread, not its process. Failing leaves the thread
/// at normal priority: slower requests during commits, nothing worse.
#[allow(unsafe_code)]
fn lower_priority() {
    let tid = nix::unistd::gettid().as_raw() as libc::id_t;
    // SAFETY: setpriority takes no pointers; it only changes the nice value
    // of the thread `tid`, which is this one.
    let status = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, NICE) };
    if status != 0 {
        let error = std::io::Error::last_os_error();
        tracing::debug!(%error, "background thread runs at normal priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn work_runs_on_a_background_thread_at_lower_priority() {
        let (name, stat) = run(|| {
            let name = thread::current().name().map(str::to_string);
            (
                name,
                std::fs::read_to_string("/proc/thread-self/stat").unwrap(),
            )
        })
        .await;
        assert!(name.unwrap().starts_with("zeroblk-bg-"));
        // After the command name: state is field 3, nice field 19.
        let (_, fields) = stat.rsplit_once(')').unwrap();
        let nice: i32 = fields.split_whitespace().nth(16).unwrap().parse().unwrap();
        assert_eq!(nice, NICE);
    }

    #[tokio::test]
    async fn a_panic_reaches_the_caller_and_the_pool_lives_on() {
        let caller = tokio::spawn(run(|| panic!("a bug in background work")));
        assert!(caller.await.unwrap_err().is_panic());
        for _ in 0..2 * thread::available_parallelism().map_or(2, |n| n.get()) {
            assert_eq!(run(|| 7).await, 7);
        }
    }
}
