//! Starting the attach daemon: this same command again with
//! `--foreground`, in a process group of its own, its log in the runtime
//! directory. The caller learns the device path from the daemon's first
//! line of output, or why it failed from the last line of its log.

use std::io::{BufRead, BufReader};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{AttachError, registry};

/// How long a daemon may take to say its device (opening a volume may
/// replay a large log, and a recovery waits for the kernel).
const START_LIMIT: Duration = Duration::from_secs(600);

/// Starts the daemon of `name`, kept in the registry in `dir` under `key`
/// (see [`registry::key`]), and returns the device path it prints once it
/// serves it.
pub fn daemon(name: &str, key: &str, dir: &Path) -> Result<String, AttachError> {
    let io = |what: String| move |source| AttachError::Io { what, source };
    registry::ensure_private_dir(dir).map_err(io(format!("cannot make {}", dir.display())))?;
    let log = registry::log_path(dir, key);
    let log_file = registry::create_log(dir, key).map_err(io(format!(
        "cannot create the daemon's log {}",
        log.display()
    )))?;
    let exe = std::env::current_exe().map_err(io("cannot find the zeroblk binary".into()))?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .map_err(io("cannot start the zeroblk daemon".into()))?;
    let stdout = child.stdout.take().expect("piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver.recv_timeout(START_LIMIT).unwrap_or_default();
    let device = line.trim();
    if device.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        return Err(AttachError::DaemonFailed {
            name: name.to_string(),
            last: last_line(&log),
            log: log.display().to_string(),
        });
    }
    Ok(device.to_string())
}

/// The last line of the daemon's log that says something.
fn last_line(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no output")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_line_that_says_something_explains_a_failure() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("d.log");
        std::fs::write(&log, "starting\nError: no such bucket\n\n").unwrap();
        assert_eq!(last_line(&log), "Error: no such bucket");
        assert_eq!(last_line(&dir.path().join("missing")), "no output");
    }
}
