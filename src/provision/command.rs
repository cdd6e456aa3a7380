//! Running the system tools provisioning needs (mkfs.btrfs, blkid,
//! exportfs, btrfs), with errors that name the package of a missing tool.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;

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
        let message = [stderr.trim(), stdout.trim()]
            .into_iter()
            .find(|text| !text.is_empty())
            .unwrap_or("no output")
            .lines()
            .last()
            .unwrap_or_default()
            .to_string();
        ProvisionError::ToolFailed {
            tool: self.program,
            status: output.status.to_string(),
            message,
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
}
