//! Pausing an actor at a named failpoint while another acts, and noticing
//! that an actor passed one: how the durability tests reach the
//! interleavings they check, without sleeping.
//!
//! Failpoints are global to the process: a test that configures them
//! holds a `fail::FailScenario` for its whole run, which also keeps other
//! such tests out.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// How long a test waits for an actor to reach a failpoint before it
/// says the actor never got there.
const REACH_LIMIT: Duration = Duration::from_secs(60);

/// Holds the first thread that reaches a failpoint until [`Pause::resume`]
/// (or until dropped); later ones pass.
pub struct Pause {
    name: &'static str,
    state: Arc<State>,
}

#[derive(Default)]
struct State {
    armed: AtomicBool,
    reached: Mutex<bool>,
    resumed: Mutex<bool>,
    changed: Condvar,
}

impl Pause {
    pub fn first_at(name: &'static str) -> Pause {
        let state = Arc::new(State::default());
        state.armed.store(true, Ordering::SeqCst);
        let held = Arc::clone(&state);
        fail::cfg_callback(name, move || {
            if !held.armed.swap(false, Ordering::SeqCst) {
                return;
            }
            *held.reached.lock().unwrap() = true;
            held.changed.notify_all();
            let resumed = held.resumed.lock().unwrap();
            let _resumed = held
                .changed
                .wait_while(resumed, |resumed| !*resumed)
                .unwrap();
        })
        .expect("configure the failpoint");
        Pause { name, state }
    }

    /// Waits until a thread is held at the failpoint.
    pub async fn reached(&self) {
        let state = Arc::clone(&self.state);
        let name = self.name;
        tokio::task::spawn_blocking(move || {
            let reached = state.reached.lock().unwrap();
            let (_reached, timeout) = state
                .changed
                .wait_timeout_while(reached, REACH_LIMIT, |reached| !*reached)
                .unwrap();
            assert!(!timeout.timed_out(), "nothing reached failpoint {name}");
        })
        .await
        .unwrap();
    }

    /// Lets the held thread go on; later ones pass.
    pub fn resume(&self) {
        self.state.armed.store(false, Ordering::SeqCst);
        *self.state.resumed.lock().unwrap() = true;
        self.state.changed.notify_all();
        fail::remove(self.name);
    }
}

impl Drop for Pause {
    fn drop(&mut self) {
        self.resume();
    }
}

/// Notices that some thread passed a failpoint, without holding it.
pub struct Passed {
    name: &'static str,
    passed: Arc<tokio::sync::Notify>,
    seen: Arc<AtomicBool>,
}

impl Passed {
    pub fn at(name: &'static str) -> Passed {
        let passed = Arc::new(tokio::sync::Notify::new());
        let seen = Arc::new(AtomicBool::new(false));
        let (notify, flag) = (Arc::clone(&passed), Arc::clone(&seen));
        fail::cfg_callback(name, move || {
            flag.store(true, Ordering::SeqCst);
            notify.notify_waiters();
        })
        .expect("configure the failpoint");
        Passed { name, passed, seen }
    }

    /// Waits until some thread passed the failpoint.
    pub async fn wait(&self) {
        loop {
            let passed = self.passed.notified();
            tokio::pin!(passed);
            passed.as_mut().enable();
            if self.seen.load(Ordering::SeqCst) {
                return;
            }
            passed.await;
        }
    }
}

impl Drop for Passed {
    fn drop(&mut self) {
        fail::remove(self.name);
    }
}
