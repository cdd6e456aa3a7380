//! The background uploader: when to commit, and retrying when the store
//! fails.
//!
//! It commits when someone waits for it (a remote flush, a close), when
//! dirty data passes half of `--max-dirty`, and otherwise once per
//! commit interval if anything was written, at the first pause in the
//! writes: a commit re-encodes every chunk it touches, so during a burst
//! the log absorbs the writes and the commit follows the burst, or comes
//! after [`LONGEST_DEFERRAL`] intervals if the writes never pause. Local
//! flushes never wait for any of this. An idle volume commits
//! nothing; its only requests renew its lease (a GET and a PUT every
//! 10 s, see `lease/`). Store errors that may pass are retried with exponential
//! backoff and jitter, indefinitely: writes go on until `--max-dirty`, then
//! wait. Errors that cannot pass (fenced out, damaged data) stop the volume.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::shared::Shared;

/// Intervals a due commit may wait for writes to pause.
const LONGEST_DEFERRAL: u32 = 4;

pub(super) async fn run(shared: Arc<Shared>) {
    let interval = shared.options().commit_interval;
    // Writes are "paused" when none came during one look.
    let look = (interval / 8).max(Duration::from_millis(10));
    let mut last_commit = Instant::now();
    let mut backoff = Backoff::default();
    let mut writes_seen = shared.stats().write_requests();
    loop {
        let _ = tokio::time::timeout(look, shared.progress().uploader_kicked()).await;
        let writes = shared.stats().write_requests();
        let writing = writes != writes_seen;
        writes_seen = writes;
        loop {
            if shared.check_running().is_err() {
                return;
            }
            let due = commit_due(last_commit.elapsed(), interval, writing);
            let pressure = shared.backlog().upload_pressure();
            let wanted = shared.progress().commit_wanted();
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
                    tracing::warn!(volume = %shared.name(), %error, retry_in = ?wait, "cannot commit to the object store; writes are kept in the local log and retried");
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

/// Whether the interval's commit is due: the interval has passed, and the
/// writes paused or have gone on for [`LONGEST_DEFERRAL`] intervals.
fn commit_due(since_commit: Duration, interval: Duration, writing: bool) -> bool {
    since_commit >= interval && (!writing || since_commit >= interval * LONGEST_DEFERRAL)
}

/// Renews the writer's lease every third of its time to live. Failing to
/// reach the store is retried; finding the lease taken stops the volume.
pub(super) async fn renew_lease(shared: Arc<Shared>) {
    let every = shared.lease().lock().await.renew_every();
    loop {
        tokio::time::sleep(every).await;
        let renewed = {
            let mut lease = shared.lease().lock().await;
            let renewed = lease.renew(shared.store(), shared.name()).await;
            renewed.map(|()| lease.last_sent())
        };
        match renewed {
            Ok(sent) => shared.tenure().renewed(sent),
            Err(error) if error.is_transient() => {
                tracing::warn!(volume = %shared.name(), %error, "cannot renew the lease; retrying");
            }
            Err(error) => {
                tracing::error!(volume = %shared.name(), %error, "stopping");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_due_commit_waits_for_a_pause_but_not_forever() {
        let interval = Duration::from_secs(2);
        let at = Duration::from_secs;
        assert!(!commit_due(at(1), interval, false), "not yet due");
        assert!(commit_due(at(2), interval, false), "due, writes paused");
        assert!(!commit_due(at(3), interval, true), "due, but writes go on");
        assert!(commit_due(at(8), interval, true), "writes never pause");
    }
}
