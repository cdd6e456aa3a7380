//! Running the system tools provisioning needs (mkfs.btrfs, blkid,
//! exportfs, btrfs), with errors that name the package of a missing tool.
//!
//! A tool run in the background ([`Running`]) has its standard error
//! drained on a thread, so a chatty tool never blocks on a full pipe, and
//! is killed and reaped if it is dropped before it was waited for: no
//! zombie, and no tool left running for nobody.

use std::ffi::OsStr;
use std::io::Read;
use std::path::Path;
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::thread::JoinHandle;

use super::ProvisionError;

/// A system tool and the Debian package that ships it.
#[derive(Debug, Clone, Copy)]
pub struct Tool {
    pub program: &'static str,
    pub package: &'static str,
}

pub const MKFS_BTRFS: Tool = Tool {
    program: "mkfs.btrfs",
    package: "btrfs-progs",
};
pub const BTRFS: Tool = Tool {
    program: "btrfs",
    package: "btrfs-progs",
};
pub const BLKID: Tool = Tool {
    program: "blkid",
    package: "util-linux",
};
pub const EXPORTFS: Tool = Tool {
    program: "exportfs",
    package: "nfs-kernel-server",
};
pub const RPC_NFSD: Tool = Tool {
    program: "rpc.nfsd",
    package: "nfs-kernel-server",
};
pub const RPC_MOUNTD: Tool = Tool {
    program: "rpc.mountd",
    package: "nfs-kernel-server",
};

const SEARCH_PATH: [&str; 4] = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"];

impl Tool {
    /// The tool's path, or an error naming the package to install.
    pub fn find(&self) -> Result<std::path::PathBuf, ProvisionError> {
        let path = std::env::var_os("PATH").unwrap_or_default();
        std::env::split_paths(&path)
            .chain(SEARCH_PATH.iter().map(Into::into))
            .map(|dir| dir.join(self.program))
            .find(|candidate| is_executable(candidate))
            .ok_or(ProvisionError::MissingTool {
                tool: self.program,
                package: self.package,
            })
    }

    /// Runs the tool and returns its standard output; a non-zero exit is
    /// an error carrying its standard error.
    pub fn run<I, S>(&self, args: I) -> Result<String, ProvisionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let output = self.output(args)?;
        if !output.status.success() {
            return Err(self.failed(&output));
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs the tool and returns whatever it did, exit status included.
    pub fn output<I, S>(&self, args: I) -> Result<std::process::Output, ProvisionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = self.find()?;
        let mut command = Command::new(&program);
        command.args(args);
        tracing::debug!(?command, "running");
        command.output().map_err(|source| ProvisionError::Io {
            what: format!("running {}", program.display()),
            source,
        })
    }

    /// The error for a run that exited non-zero.
    pub fn failed(&self, output: &std::process::Output) -> ProvisionError {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let stdout = String::from_utf8_lossy(&output.stdout);
        ProvisionError::ToolFailed {
            tool: self.program,
            status: output.status.to_string(),
            message: last_line(&[&stderr, &stdout]),
        }
    }

    /// Starts the tool in the background with `stdin` and `stdout` as
    /// given and its standard error captured; `what` names it in errors
    /// (`btrfs send`).
    pub fn spawn<I, S>(
        &self,
        what: &'static str,
        args: I,
        stdin: Stdio,
        stdout: Stdio,
    ) -> Result<Running, ProvisionError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = self.find()?;
        let mut command = Command::new(&program);
        command
            .args(args)
            .stdin(stdin)
            .stdout(stdout)
            .stderr(Stdio::piped());
        tracing::debug!(?command, "starting");
        let io_error = |source| ProvisionError::Io {
            what: format!("running {}", program.display()),
            source,
        };
        let mut child = command.spawn().map_err(io_error)?;
        let drained = child.stderr.take().map(|stderr| {
            std::thread::Builder::new()
                .name(format!("{}-stderr", self.program))
                .spawn(move || stderr_tail(stderr))
        });
        let stderr = match drained.transpose() {
            Ok(stderr) => stderr,
            Err(source) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(io_error(source));
            }
        };
        Ok(Running {
            what,
            child,
            stderr,
            outcome: None,
        })
    }
}

/// The last line of the first of `texts` that says anything.
fn last_line(texts: &[&str]) -> String {
    texts
        .iter()
        .map(|text| text.trim())
        .find(|text| !text.is_empty())
        .unwrap_or("no output")
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

/// How much of a background tool's standard error is kept: its end, where
/// the reason it failed is.
const STDERR_TAIL: usize = 8 << 10;

/// Reads `stderr` to its end, keeping its last [`STDERR_TAIL`] bytes.
fn stderr_tail(mut stderr: impl Read) -> String {
    let mut tail = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        match stderr.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > 2 * STDERR_TAIL {
                    tail.drain(..tail.len() - STDERR_TAIL);
                }
            }
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&tail).into_owned()
}

/// A tool started by [`Tool::spawn`]. Dropped before [`Running::wait`],
/// it is killed and reaped.
pub struct Running {
    what: &'static str,
    child: Child,
    stderr: Option<JoinHandle<String>>,
    /// Set once the tool is reaped: its exit status, and the last line of
    /// its standard error if it failed.
    outcome: Option<(ExitStatus, String)>,
}

impl Running {
    /// The tool's standard input, if it was piped and not taken yet.
    pub fn take_stdin(&mut self) -> Option<ChildStdin> {
        self.child.stdin.take()
    }

    /// The tool's standard output, if it was piped and not taken yet.
    pub fn take_stdout(&mut self) -> Option<ChildStdout> {
        self.child.stdout.take()
    }

    /// The tool's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the tool to exit; a non-zero exit is an error carrying
    /// the last line of its standard error. Waiting again gives the same
    /// answer.
    pub fn wait(&mut self) -> Result<(), ProvisionError> {
        let (status, message) = match &self.outcome {
            Some(outcome) => outcome.clone(),
            None => {
                let status = self.child.wait().map_err(|source| ProvisionError::Io {
                    what: format!("waiting for {}", self.what),
                    source,
                })?;
                let message = last_line(&[&self.join_stderr()]);
                self.outcome = Some((status, message.clone()));
                (status, message)
            }
        };
        if status.success() {
            Ok(())
        } else {
            Err(ProvisionError::ToolFailed {
                tool: self.what,
                status: status.to_string(),
                message,
            })
        }
    }

    fn join_stderr(&mut self) -> String {
        self.stderr
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.outcome.is_none() {
            // It may have exited already: then the kill fails, and the
            // wait reaps it all the same. The stderr thread is left to
            // end on its own, when the pipe closes: a child of the tool
            // that still holds the pipe must not hold this up.
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    path.metadata()
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_tool_names_its_package() {
        let tool = Tool {
            program: "zeroblk-no-such-tool",
            package: "zeroblk-no-such-package",
        };
        let error = tool.run(["--help"]).unwrap_err().to_string();
        assert!(error.contains("zeroblk-no-such-tool"), "{error}");
        assert!(
            error.contains("apt-get install zeroblk-no-such-package"),
            "{error}"
        );
    }

    #[test]
    fn a_failing_tool_reports_its_last_error_line() {
        let tool = Tool {
            program: "sh",
            package: "dash",
        };
        let error = tool
            .run(["-c", "echo first >&2; echo 'the real reason' >&2; exit 3"])
            .unwrap_err()
            .to_string();
        assert!(error.contains("the real reason"), "{error}");
        assert!(error.contains('3'), "{error}");
    }

    const SH: Tool = Tool {
        program: "sh",
        package: "dash",
    };

    fn background(script: &str) -> Running {
        SH.spawn("sh script", ["-c", script], Stdio::null(), Stdio::null())
            .unwrap()
    }

    #[test]
    fn a_background_tool_that_fails_reports_its_last_error_line_each_time() {
        let mut running = background("echo first >&2; echo 'the real reason' >&2; exit 4");
        for _ in 0..2 {
            let error = running.wait().unwrap_err().to_string();
            assert_eq!(error, "sh script failed (exit status: 4): the real reason");
        }
        assert!(background("exit 0").wait().is_ok());
    }

    #[test]
    fn a_background_tool_that_fills_its_error_pipe_still_finishes() {
        // 1 MiB of standard error: a pipe holds 64 KiB, so this exits only
        // if something reads it.
        let mut running = background(
            "head -c 1048576 /dev/zero | tr '\\0' x >&2; echo >&2; echo last >&2; exit 1",
        );
        let error = running.wait().unwrap_err().to_string();
        assert!(error.ends_with(": last"), "{error}");
    }

    /// The start time of process `pid`, while it runs or is a zombie.
    fn start_time(pid: u32) -> Option<String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let after_name = &stat[stat.rfind(')')? + 2..];
        after_name.split(' ').nth(19).map(str::to_string)
    }

    #[test]
    fn a_background_tool_dropped_before_its_end_is_killed_and_reaped() {
        let running = background("exec sleep 600");
        let pid = running.id();
        let started = start_time(pid).expect("running");
        drop(running);
        // Gone, not a zombie; a process that took its id since started
        // later.
        assert_ne!(start_time(pid), Some(started));
    }
}
