//! The background uploader: when to commit, and retrying when the store
//! fails.
//!
//! It commits when someone waits for it (a remote flush, a close), when
//! dirty data passes half of `--max-dirty`, and otherwise once per
//! commit interval if anything was written. An idle volume commits
//! nothing; its only requests renew its lease (a GET and a PUT every
//! 10 s, see `lease.rs`). Store errors that may pass are retried with exponential
//! backoff and jitter, indefinitely: writes go on until `--max-dirty`, then
//! wait. Errors that cannot pass (fenced out, damaged data) stop the volume.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::volume::Shared;

pub(super) async fn run(shared: Arc<Shared>) {
    let interval = shared.options.commit_interval;
    let mut last_commit = Instant::now();
    let mut backoff = Backoff::default();
    loop {
        let _ = tokio::time::timeout(interval, shared.kick.notified()).await;
        loop {
            if shared.check_running().is_err() {
                return;
            }
            let due = last_commit.elapsed() >= interval;
            let pressure = shared.dirty_bytes.load(Ordering::Acquire) >= shared.upload_threshold();
            let wanted = shared.commit_wanted.load(Ordering::Acquire) > *shared.committed.borrow();
            if !(due || pressure || wanted) {
                break;
            }
            if (due || pressure) && shared.seal_current().await.is_err() {
                return;
            }
            match shared.commit_sealed().await {
                Ok(committed) => {
                    last_commit = Instant::now();
                    backoff = Backoff::default();
                    if !committed {
                        break;
                    }
                }
                Err(error) if error.is_transient() => {
                    let wait = backoff.next();
                    tracing::warn!(volume = %shared.name, %error, retry_in = ?wait, "cannot commit to the object store; writes are kept in the local log and retried");
                    tokio::time::sleep(wait).await;
                }
                Err(error) => {
                    shared.fail(error);
                    return;
                }
            }
        }
    }
}

/// Renews the writer's lease every third of its time to live. Failing to
/// reach the store is retried; finding the lease taken stops the volume.
pub(super) async fn renew_lease(shared: Arc<Shared>) {
    let every = shared.lease.lock().await.renew_every();
    loop {
        tokio::time::sleep(every).await;
        let renewed = shared
            .lease
            .lock()
            .await
            .renew(&shared.store, &shared.name)
            .await;
        match renewed {
            Ok(()) => {}
            Err(error) if error.is_transient() => {
                tracing::warn!(volume = %shared.name, %error, "cannot renew the lease; retrying");
            }
            Err(error) => {
                tracing::error!(volume = %shared.name, %error, "stopping");
                shared.fail(error);
                return;
            }
        }
    }
}

/// Exponential backoff from 100 ms to 10 s, with full jitter.
struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            next: Duration::from_millis(100),
        }
    }
}

impl Backoff {
    fn next(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(Duration::from_secs(10));
        ceiling.mul_f64(0.5 + fastrand::f64() / 2.0)
    }
}
