//! How hard a store request is tried: the policy `RetryingStore`
//! (`retrying.rs`) runs every request under.
//!
//! Each attempt has a deadline (`--store-timeout`), so a request the store
//! never answers becomes a failure instead of a stuck read. A failure that
//! may pass (a 5xx, SlowDown, a reset, a timeout) is tried again after an
//! exponential backoff with full jitter, for at least `min_attempts` and
//! then while the budget lasts; anything else (not found, a refused
//! condition, denied) is final at once. Callers with their own patience
//! (the uploader retries commits forever) see a failure within the budget.

use std::future::Future;
use std::time::{Duration, Instant};

/// How hard a request is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The longest one attempt may take.
    pub attempt_timeout: Duration,
    /// Attempts made whatever the time.
    pub min_attempts: u32,
    /// Attempts never made past this.
    pub max_attempts: u32,
    /// No new attempt starts once this long has passed since the first.
    pub budget: Duration,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempt_timeout: Duration::from_secs(30),
            min_attempts: 3,
            max_attempts: 12,
            budget: Duration::from_secs(20),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(2),
        }
    }
}

/// What a retried request came to.
pub(super) struct Outcome<T> {
    pub result: object_store::Result<T>,
    /// Whether an earlier attempt failed: it may still have taken effect.
    pub retried: bool,
}

impl RetryPolicy {
    /// A policy whose attempts each get `timeout`.
    pub fn with_attempt_timeout(timeout: Duration) -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: timeout,
            ..RetryPolicy::default()
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the policy
    /// gives up; `on_retry` hears of each attempt that will be repeated.
    pub(super) async fn run<T, F, Fut>(
        &self,
        mut attempt: F,
        mut on_retry: impl FnMut(&object_store::Error, Duration),
    ) -> Outcome<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let started = Instant::now();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let result = match tokio::time::timeout(self.attempt_timeout, attempt()).await {
                Ok(result) => result,
                Err(_) => Err(timed_out(self.attempt_timeout)),
            };
            let error = match result {
                Err(error) if self.should_retry(&error, attempts, started) => error,
                result => {
                    return Outcome {
                        result,
                        retried: attempts > 1,
                    };
                }
            };
            let wait = self.backoff(attempts);
            on_retry(&error, wait);
            tokio::time::sleep(wait).await;
        }
    }

    fn should_retry(&self, error: &object_store::Error, attempts: u32, started: Instant) -> bool {
        let patient = attempts < self.min_attempts
            || (attempts < self.max_attempts && started.elapsed() < self.budget);
        patient && may_pass(error)
    }

    /// Full jitter: anywhere up to the exponential step, so clients that
    /// failed together do not come back together.
    fn backoff(&self, attempts: u32) -> Duration {
        let step = self
            .first_backoff
            .saturating_mul(1 << attempts.min(16))
            .min(self.max_backoff);
        step.mul_f64(fastrand::f64())
    }
}

fn timed_out(after: Duration) -> object_store::Error {
    object_store::Error::Generic {
        store: "zeroblk",
        source: format!("the request timed out after {after:?} (--store-timeout)").into(),
    }
}

/// Whether trying the same request again may succeed.
fn may_pass(error: &object_store::Error) -> bool {
    use object_store::Error::*;
    match error {
        NotFound { .. }
        | AlreadyExists { .. }
        | Precondition { .. }
        | NotModified { .. }
        | PermissionDenied { .. }
        | Unauthenticated { .. }
        | InvalidPath { .. }
        | NotSupported { .. }
        | NotImplemented { .. }
        | UnknownConfigurationKey { .. } => false,
        other => {
            let text = other.to_string();
            ![
                "NoSuchBucket",
                "InvalidAccessKeyId",
                "SignatureDoesNotMatch",
                "169.254.169.254",
            ]
            .iter()
            .any(|final_answer| text.contains(final_answer))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn quick() -> RetryPolicy {
        RetryPolicy {
            attempt_timeout: Duration::from_millis(50),
            first_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    fn transient() -> object_store::Error {
        object_store::Error::Generic {
            store: "test",
            source: "503 SlowDown".into(),
        }
    }

    #[tokio::test]
    async fn transient_failures_and_hangs_are_retried_until_one_succeeds() {
        let calls = AtomicU32::new(0);
        let outcome = quick()
            .run(
                || async {
                    match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => Err(transient()),
                        1 => std::future::pending().await,
                        _ => Ok(7),
                    }
                },
                |_, _| {},
            )
            .await;
        assert_eq!(outcome.result.unwrap(), 7);
        assert!(outcome.retried);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn final_answers_are_not_retried_and_patience_ends() {
        let calls = AtomicU32::new(0);
        let outcome: Outcome<()> = quick()
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(object_store::Error::NotFound {
                        path: "k".into(),
                        source: "gone".into(),
                    })
                },
                |_, _| {},
            )
            .await;
        assert!(outcome.result.is_err() && !outcome.retried);
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let policy = RetryPolicy {
            max_attempts: 5,
            ..quick()
        };
        let calls = AtomicU32::new(0);
        let outcome: Outcome<()> = policy
            .run(
                || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    Err(transient())
                },
                |_, _| {},
            )
            .await;
        assert!(outcome.result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 5);
    }
}
