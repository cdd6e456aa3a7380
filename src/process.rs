//! Processes on this host, told apart for good: a pid alone names a
//! process only until it exits, after which the kernel hands the number to
//! another one; and it means something only inside one pid namespace of
//! one boot. So a process is its pid *and* its start time, and two records
//! speak of the same processes only if they share a [`pid_space`].
//!
//! Also this process's own limits and file modes:
//! [`raise_open_file_limit`], [`keep_new_files_private`].

/// Raises this process's soft limit on open files to its hard limit, as
/// a daemon that keeps files open should (the disk cache keeps a quarter
/// of the limit open). The soft limit of 1024 that many services start
/// with only guards old programs using `select`.
pub fn raise_open_file_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(error) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::debug!(%error, soft, hard, "cannot raise the open-file limit");
    }
}

/// Makes every file and directory this process creates from now on
/// private to its user (umask 077), whatever umask it was started with:
/// cache dirs, log segments, `file://` store objects and daemon logs all
/// hold volume data. Not for the provisioning helper, whose mount points
/// and subvolumes are the user's to share: see [`share_new_files`].
pub fn keep_new_files_private() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o077));
}

/// The usual umask 022, for the provisioning helper: the daemon that starts
/// it has 077, and a mount point or subvolume made under that would shut
/// out every other user of the filesystem and its NFS clients.
pub fn share_new_files() {
    use nix::sys::stat::{Mode, umask};
    umask(Mode::from_bits_truncate(0o022));
}

/// Whether `meta` is a directory owned by this process's user. Taken with
/// `symlink_metadata`, a symlink is not one.
pub fn is_own_dir(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    meta.is_dir() && meta.uid() == nix::unistd::geteuid().as_raw()
}

/// A process: its pid, and when it started (clock ticks after boot, field
/// 22 of `/proc/PID/stat`), so that a later process given the same pid is
/// not taken for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessId {
    pid: u32,
    started: u64,
}

impl ProcessId {
    /// This process.
    pub fn current() -> ProcessId {
        let pid = std::process::id();
        ProcessId {
            pid,
            started: start_time(pid).unwrap_or(0),
        }
    }

    /// A process recorded earlier; `started` 0 means "not recorded" (a
    /// record from an older version), which then trusts the pid alone.
    pub fn recorded(pid: u32, started: u64) -> ProcessId {
        ProcessId { pid, started }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn started(&self) -> u64 {
        self.started
    }

    /// Whether this very process still runs: its pid exists, has not
    /// exited (a zombie holds nothing), and started when it did.
    pub fn is_running(&self) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(fields) = fields_after_name(&stat) else {
            return false;
        };
        let exited = matches!(fields.first(), Some(&("Z" | "X")));
        let same_start = self.started == 0 || start_of(&fields) == Some(self.started);
        !exited && same_start
    }
}

/// Where pids mean the same processes: this boot of this host's kernel
/// (its boot id) and this process's pid namespace. Empty if unknown, which
/// matches nothing.
pub fn pid_space() -> String {
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id");
    let namespace = std::fs::read_link("/proc/self/ns/pid");
    match (boot, namespace) {
        (Ok(boot), Ok(namespace)) => format!("{}/{}", boot.trim(), namespace.display()),
        _ => String::new(),
    }
}

/// The boot a [`pid_space`] belongs to: records with the same one were
/// written on this machine since it last started, whatever their pid
/// namespace (a container, `unshare -p`).
pub fn boot_of(pid_space: &str) -> &str {
    pid_space.split_once('/').map_or("", |(boot, _)| boot)
}

/// This machine's id (`/etc/machine-id`, kept across reboots), or empty.
/// Cloned images may share one, so it may only ever make zeroblk more
/// careful, never judge another machine's process.
pub fn machine_id() -> String {
    std::fs::read_to_string("/etc/machine-id")
        .map(|id| id.trim().chars().take(64).collect())
        .unwrap_or_default()
}

/// When process `pid` started, in clock ticks after boot.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_of(&fields_after_name(&stat)?)
}

/// The fields of a /proc/PID/stat line after the command name, which is in
/// parentheses and may itself hold spaces and ')': the first is the state
/// (field 3).
fn fields_after_name(stat: &str) -> Option<Vec<&str>> {
    let (_, after_name) = stat.rsplit_once(')')?;
    Some(after_name.split_whitespace().collect())
}

/// Field 22 (start time), counted from field 3 (the state).
fn start_of(fields: &[&str]) -> Option<u64> {
    fields.get(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_runs_and_stat_lines_parse() {
        let me = ProcessId::current();
        assert!(me.started() > 0);
        assert!(me.is_running());
        assert!(!ProcessId::recorded(u32::MAX, 0).is_running());
        let line = "12 (a b) c) Z 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 4242 20";
        let fields = fields_after_name(line).unwrap();
        assert_eq!(fields[0], "Z");
        assert_eq!(start_of(&fields), Some(4242));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(
            !ProcessId::recorded(pid, 0).is_running(),
            "exited, not yet reaped"
        );
        drop(child);
    }

    #[test]
    fn a_reused_pid_is_another_process() {
        let me = ProcessId::current();
        let earlier = ProcessId::recorded(me.pid(), me.started() - 1);
        assert!(!earlier.is_running(), "same pid, other start time");
    }

    #[test]
    fn this_process_has_a_pid_space() {
        let space = pid_space();
        assert!(space.contains("pid:["), "{space}");
        assert_eq!(space, pid_space());
    }
}
