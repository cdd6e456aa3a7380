//! A writer's tenure: how long it may still acknowledge anything on the
//! strength of its lease, by its own monotonic clock.
//!
//! A taker judges a holder it cannot see (on another host, in another pid
//! namespace) gone once the lease has not changed for a whole time to
//! live, watched on the taker's clock from its first read of the lease.
//! That read comes after the holder's last successful renewal landed, so
//! after the holder sent it. The holder, in turn, acknowledges no write
//! and no flush later than three quarters of a time to live after it sent
//! its last renewal that went through. So everything it acknowledges, it
//! acknowledges before any taker can have judged it gone: two writers never
//! both acknowledge writes to one volume. The quarter left over covers
//! clocks that tick at slightly different rates, and the moment between
//! the check and the reply.
//!
//! A holder whose renewals do not get through (a slow or unreachable
//! store, a process stalled for a while) therefore holds its writes and
//! flushes once its tenure lapses, until a renewal gets through (they go
//! on) or finds the lease taken (the volume stops, and they fail).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

/// The part of the time to live a renewal buys.
const TENURE_NUMERATOR: u32 = 3;
const TENURE_DENOMINATOR: u32 = 4;

#[derive(Debug)]
pub struct Tenure {
    /// What `until` counts from.
    epoch: Instant,
    /// Nanoseconds after `epoch` at which the tenure lapses.
    until: AtomicU64,
    term: Duration,
    renewed: Notify,
}

impl Tenure {
    /// A tenure for a lease of time to live `ttl` whose taking was sent at
    /// `sent`.
    pub fn new(ttl: Duration, sent: Instant) -> Tenure {
        let tenure = Tenure {
            epoch: sent,
            until: AtomicU64::new(0),
            term: ttl * TENURE_NUMERATOR / TENURE_DENOMINATOR,
            renewed: Notify::new(),
        };
        tenure.renewed(sent);
        tenure
    }

    /// A renewal sent at `sent` went through.
    pub fn renewed(&self, sent: Instant) {
        let until = sent.saturating_duration_since(self.epoch) + self.term;
        self.until
            .fetch_max(until.as_nanos() as u64, Ordering::AcqRel);
        self.renewed.notify_waiters();
    }

    /// Whether the writer may acknowledge now.
    pub fn holds(&self) -> bool {
        let now = self.epoch.elapsed().as_nanos() as u64;
        now < self.until.load(Ordering::Acquire)
    }

    /// How long since the tenure lapsed (zero while it holds).
    pub fn lapsed_for(&self) -> Duration {
        let until = Duration::from_nanos(self.until.load(Ordering::Acquire));
        self.epoch.elapsed().saturating_sub(until)
    }

    /// How long since the lease was taken.
    pub fn held_for(&self) -> Duration {
        self.epoch.elapsed()
    }

    /// How long since the last renewal that went through was sent.
    pub fn renewed_ago(&self) -> Duration {
        let until = Duration::from_nanos(self.until.load(Ordering::Acquire));
        let sent = until.saturating_sub(self.term);
        self.epoch.elapsed().saturating_sub(sent)
    }

    /// Waits for the next renewal, or for [`Tenure::wake`]; a caller that
    /// checks [`Tenure::holds`] after `renewal()` was created misses none.
    pub fn renewal(&self) -> tokio::sync::futures::Notified<'_> {
        self.renewed.notified()
    }

    /// Wakes every waiter (the volume stopped).
    pub fn wake(&self) {
        self.renewed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenure_lasts_three_quarters_of_a_ttl_from_the_renewal_sent() {
        let long_ago = Instant::now() - Duration::from_secs(10);
        let tenure = Tenure::new(Duration::from_secs(8), long_ago);
        assert!(!tenure.holds(), "6 s after a renewal sent 10 s ago");
        assert!(tenure.lapsed_for() >= Duration::from_secs(3));
        tenure.renewed(Instant::now());
        assert!(tenure.holds());
        tenure.renewed(long_ago);
        assert!(
            tenure.holds(),
            "a late reply to an old renewal shortens nothing"
        );
    }

    #[test]
    fn its_age_counts_from_the_taking_and_its_freshness_from_the_last_renewal() {
        let taken = Instant::now() - Duration::from_secs(100);
        let tenure = Tenure::new(Duration::from_secs(8), taken);
        assert!(tenure.held_for() >= Duration::from_secs(100));
        assert!(tenure.renewed_ago() >= Duration::from_secs(100));
        tenure.renewed(Instant::now() - Duration::from_secs(2));
        assert!(tenure.held_for() >= Duration::from_secs(100));
        let ago = tenure.renewed_ago();
        assert!(
            ago >= Duration::from_secs(2) && ago < Duration::from_secs(50),
            "{ago:?}"
        );
    }

    #[tokio::test]
    async fn waiters_wake_at_a_renewal() {
        let tenure = std::sync::Arc::new(Tenure::new(
            Duration::from_secs(4),
            Instant::now() - Duration::from_secs(5),
        ));
        let waiting = {
            let tenure = tenure.clone();
            tokio::spawn(async move {
                loop {
                    let renewal = tenure.renewal();
                    if tenure.holds() {
                        return;
                    }
                    renewal.await;
                }
            })
        };
        tokio::task::yield_now().await;
        tenure.renewed(Instant::now());
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("woken")
            .unwrap();
    }
}
