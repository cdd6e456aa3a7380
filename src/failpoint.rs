//! Failpoints in async code.
//!
//! `fail::fail_point!` runs a test's callback on the calling thread. In
//! async code that thread is a runtime worker, and a test that pauses an
//! actor there (to let another act) would stall every task queued on that
//! worker, the I/O driver too. [`async_fail_point!`] hands the worker's
//! other tasks to the runtime first (`block_in_place`) when a test has
//! configured the point; otherwise it costs what `fail_point!` does.
//! Without the `failpoints` feature (release builds) it is nothing.

/// A named failpoint in async code (see the module documentation).
#[macro_export]
macro_rules! async_fail_point {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        $crate::failpoint::hit($name);
    };
}

/// Evaluates failpoint `name`, off the runtime's worker if a test has
/// configured it.
#[cfg(feature = "failpoints")]
pub fn hit(name: &str) {
    let configured = fail::list().iter().any(|(point, _)| point == name);
    if !configured {
        return;
    }
    let on_a_worker = tokio::runtime::Handle::try_current().is_ok_and(|runtime| {
        runtime.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread
    });
    match on_a_worker {
        true => tokio::task::block_in_place(|| fail::eval(name, |_| ())),
        false => fail::eval(name, |_| ()),
    };
}
