//! Running outside commands from tests without ever hanging the suite.
//!
//! A test waits for a client (fio, nbdcopy, qemu-img) or for zeroblk itself.
//! If what it talks to stops answering (a full disk, a deadlock), the
//! command would wait for ever and CI would end at its time limit with no
//! word of which test hung. Here a command gets [`DEADLINE`], far beyond
//! any normal run; past it, the command and every process it started are
//! killed and the test fails naming the command and what it printed. This
//! is a safety net, not a timing check: nothing passes or fails by how fast
//! it was.

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// How long any one outside command may run.
pub const DEADLINE: Duration = Duration::from_secs(15 * 60);

/// How long to wait for a killed command's output: a process it started
/// in a session of its own (fio's jobs do) may still hold the pipes.
const OUTPUT_AFTER_KILL: Duration = Duration::from_secs(5);

/// Like [`Command::output`] (stdin closed, stdout and stderr captured), but
/// a command still running after [`DEADLINE`] is killed, with every process
/// it started, and the test panics.
pub fn output(command: &mut Command) -> Output {
    output_within(command, DEADLINE)
}

/// [`output`] with a deadline of its own (a whole VM boot and script).
pub fn output_within(command: &mut Command, deadline: Duration) -> Output {
    let deadline = Instant::now() + deadline;
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    let stdout = drain(child.stdout.take().expect("piped stdout"));
    let stderr = drain(child.stderr.take().expect("piped stderr"));
    if let Some(status) = wait_until(&mut child, deadline) {
        let left = deadline.saturating_duration_since(Instant::now());
        if let (Some(stdout), Some(stderr)) = (collect(&stdout, left), collect(&stderr, left)) {
            return Output {
                status,
                stdout,
                stderr,
            };
        }
        panic!(
            "{command:?} exited ({status}), but a process it started kept its output open until the deadline"
        );
    }
    kill_tree(child.id());
    let _ = child.wait();
    let shown = |pipe: &Receiver<Vec<u8>>| {
        collect(pipe, OUTPUT_AFTER_KILL).map_or("(still held open)".into(), |bytes| {
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    panic!(
        "{command:?} was still running at its deadline and was killed: it hangs.\n\
         stdout: {}\nstderr: {}",
        shown(&stdout),
        shown(&stderr)
    );
}

/// Reads a pipe to its end on a thread of its own, so that a chatty command
/// never blocks on a full pipe while we wait for it.
fn drain(mut pipe: impl Read + Send + 'static) -> Receiver<Vec<u8>> {
    let (sender, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        let _ = sender.send(bytes);
    });
    receiver
}

/// What a pipe's reader read, if the pipe closed within `limit`.
fn collect(pipe: &Receiver<Vec<u8>>, limit: Duration) -> Option<Vec<u8>> {
    pipe.recv_timeout(limit).ok()
}

/// The command's exit status, or `None` if it is still running at
/// `deadline`.
fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait for a command") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Kills `root` and every process descended from it, found through /proc
/// before any is killed (once a parent dies, its children move to init and
/// can no longer be traced to the command).
fn kill_tree(root: u32) {
    let mut doomed = vec![root];
    let mut next = 0;
    let parents = parent_of_each_process();
    while next < doomed.len() {
        let parent = doomed[next];
        doomed.extend(
            parents
                .iter()
                .filter(|&&(_, p)| p == parent)
                .map(|&(pid, _)| pid),
        );
        next += 1;
    }
    for pid in doomed {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// `(pid, parent pid)` of every process, from /proc/PID/stat.
fn parent_of_each_process() -> Vec<(u32, u32)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // "PID (COMM) STATE PPID ...": COMM may hold spaces and ')'.
            let after_comm = &stat[stat.rfind(')')? + 1..];
            let parent = after_comm.split_whitespace().nth(1)?.parse().ok()?;
            Some((pid, parent))
        })
        .collect()
}
