//! What a lease object says (`LeaseRecord`), and what a holder's record
//! lets a taker judge: whether it runs here, whether it may have been on
//! this machine, and whether it left flushed writes in a write-back log the
//! taker would not replay.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::super::error::EngineError;
use super::{LIVE_HOLDERS, LONGEST_WATCH};
use crate::format::root::now_ms;
use crate::process::ProcessId;

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Uuid,
    /// The holder's hostname: shown to users, never trusted to tell hosts
    /// apart (containers share it, hosts may repeat it).
    pub host: String,
    pub pid: u32,
    /// When the holder's process started (`process::ProcessId`).
    #[serde(default)]
    pub pid_started: u64,
    /// Where `pid` means that process (`process::pid_space`); a taker in
    /// another one watches renewals instead.
    #[serde(default)]
    pub pid_space: String,
    /// When the holder last renewed it, by the holder's clock: shown to
    /// users, never compared with another clock.
    pub renewed_at_ms: u64,
    pub ttl_ms: u64,
    /// How many times the holder renewed it: what a taker watches.
    #[serde(default)]
    pub renewals: u64,
    /// The holder gave it up: anyone may take it.
    #[serde(default)]
    pub released: bool,
    /// What the holder does, when it is not the lease's usual holder (gc's
    /// lease is also held by a snapshot or a clone while it pins a root).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub purpose: String,
    /// The write-back log of a writer whose flushes it acknowledges
    /// (local durability): a taker on this machine with another log lets
    /// a dead holder's flushed writes be replayed from it first (see
    /// [`LeaseRecord::left_a_log_elsewhere`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_id: Option<Uuid>,
    /// Where that log is (absolute), to say so.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_dir: String,
    /// The inode of that log's folder (0: unknown): a copy of a cache dir
    /// holds a log of the same id, but not the same folder, and may lack
    /// the last flushed writes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub log_inode: u64,
    /// `/etc/machine-id` of the holder's machine: with the boot in
    /// `pid_space`, what tells a taker it may be on the same machine.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub machine_id: String,
}

/// The write-back log a writer opens the volume with, as its lease
/// speaks of it.
#[derive(Debug, Clone, Copy)]
pub struct LogClaim<'a> {
    /// The log's folder.
    pub dir: &'a Path,
    /// The log already there, if any.
    pub id: Option<Uuid>,
    /// The inode of its folder, if it is there.
    pub inode: Option<u64>,
    /// Whether the writer acknowledges flushes from it (local
    /// durability): only then does it hold writes the store lacks.
    pub holds_flushed_writes: bool,
}

/// Why a taker did not get a lease.
#[derive(Debug)]
pub enum Refusal {
    /// Its holder is alive, or may be.
    Held(LeaseRecord),
    /// Its holder died on this machine, leaving flushed writes in a log
    /// the taker would not replay.
    LogElsewhere(LeaseRecord),
}

impl Refusal {
    pub fn holder(self) -> LeaseRecord {
        match self {
            Refusal::Held(holder) | Refusal::LogElsewhere(holder) => holder,
        }
    }
}

impl LeaseRecord {
    pub(super) fn new(ttl: Duration, purpose: &str, log: Option<LogClaim>) -> LeaseRecord {
        let me = ProcessId::current();
        let log = log.filter(|log| log.holds_flushed_writes);
        LeaseRecord {
            holder: Uuid::new_v4(),
            host: hostname(),
            pid: me.pid(),
            pid_started: me.started(),
            pid_space: crate::process::pid_space(),
            renewed_at_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
            renewals: 0,
            released: false,
            purpose: purpose.to_string(),
            log_id: log.and_then(|log| log.id),
            log_inode: log.and_then(|log| log.inode).unwrap_or(0),
            log_dir: log.map(|log| absolute(log.dir)).unwrap_or_default(),
            machine_id: crate::process::machine_id(),
        }
    }

    /// Whether its pid names a process this host can look at.
    pub(super) fn shares_pid_space(&self) -> bool {
        !self.pid_space.is_empty() && self.pid_space == crate::process::pid_space()
    }

    /// Whether its holder is provably gone: a process of this pid space
    /// that no longer runs (it can commit nothing more).
    pub(super) fn is_dead_here(&self) -> bool {
        self.shares_pid_space() && !self.holder_runs_here()
    }

    /// In this pid space: whether its holder still runs.
    pub(super) fn holder_runs_here(&self) -> bool {
        if self.pid == std::process::id() {
            return LIVE_HOLDERS
                .lock()
                .expect("holders lock")
                .as_ref()
                .is_some_and(|live| live.contains(&self.holder));
        }
        ProcessId::recorded(self.pid, self.pid_started).is_running()
    }

    pub(super) fn ttl(&self) -> Duration {
        Duration::from_millis(self.ttl_ms).min(LONGEST_WATCH)
    }

    pub fn holder_name(&self) -> String {
        format!("pid {} on {}", self.pid, self.printable_host())
    }

    /// The holder's hostname as a terminal may show it: the record comes
    /// from the bucket, so control characters (escape sequences) become
    /// `?` and it is cut at 255 bytes' worth of characters.
    pub fn printable_host(&self) -> String {
        printable(&self.host)
    }

    /// Whether this holder, gone without releasing the lease, may have
    /// been on this machine (this boot, in any pid namespace, or an
    /// earlier boot) and kept flushed writes in a write-back log other
    /// than `mine`, the taker's: they are only in that log, and taking
    /// over from another one would leave them behind for good. zeroblk
    /// cannot tell a lost log from one in another cache dir or mount
    /// namespace, so either takes `--force`. A holder on another machine
    /// is taken over from once it is judged gone, losing its log's
    /// writes, as the durability contract says.
    pub(super) fn left_a_log_elsewhere(&self, mine: &LogClaim) -> bool {
        let same_log =
            self.log_id == mine.id && (self.log_inode == 0 || Some(self.log_inode) == mine.inode);
        self.log_id.is_some() && !same_log && self.may_be_this_machine()
    }

    /// Whether the holder ran on this machine: the same boot, or the same
    /// machine id (cloned images may share one: that only ever refuses).
    pub(super) fn may_be_this_machine(&self) -> bool {
        let boot = crate::process::boot_of(&self.pid_space);
        let same_boot =
            !boot.is_empty() && boot == crate::process::boot_of(&crate::process::pid_space());
        same_boot
            || (!self.machine_id.is_empty() && self.machine_id == crate::process::machine_id())
    }

    /// The error for volume `name` whose lease this record's holder keeps
    /// from a taker, alive on this host (no --force helps) or possibly
    /// alive anywhere.
    pub(crate) fn refusal(self, name: &str) -> EngineError {
        match self.runs_in_another_process_here() {
            true => EngineError::LeasedHere {
                name: name.to_string(),
                pid: self.pid,
            },
            false => EngineError::Leased {
                name: name.to_string(),
                host: self.printable_host(),
                pid: self.pid,
            },
        }
    }

    /// The error for volume `name` whose dead holder left its flushed
    /// writes in a log the taker would not replay.
    pub(super) fn log_elsewhere(self, name: &str) -> EngineError {
        let log_dir = printable(&self.log_dir);
        // CACHE_DIR/NAME.UUID/log
        let cache_dir = Path::new(&log_dir)
            .ancestors()
            .nth(2)
            .map_or_else(|| log_dir.clone(), |p| p.display().to_string());
        EngineError::LogElsewhere {
            name: name.to_string(),
            holder: self.holder_name(),
            log_dir,
            cache_dir,
        }
    }

    /// Whether another process of this host holds it and still runs: one
    /// that provably writes, which no `--force` may take over from (it
    /// would lose the writes that process acknowledged and still holds).
    pub fn runs_in_another_process_here(&self) -> bool {
        self.shares_pid_space() && self.pid != std::process::id() && self.holder_runs_here()
    }
}

/// Text from the bucket as a terminal may show it: control characters
/// (escape sequences) become `?`, and it is cut at 255 characters.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .take(255)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// `dir` as an absolute path with no links, as every process on this
/// machine names it (its parent at least exists: the writer made it).
fn absolute(dir: &Path) -> String {
    let canonical = |path: &Path| std::fs::canonicalize(path).ok();
    canonical(dir)
        .or_else(|| Some(canonical(dir.parent()?)?.join(dir.file_name()?)))
        .or_else(|| std::path::absolute(dir).ok())
        .unwrap_or_else(|| dir.to_path_buf())
        .display()
        .to_string()
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dead_holders_log_counts_on_this_machine_unless_the_taker_has_it() {
        let dir = tempfile::tempdir().unwrap();
        let ttl = Duration::from_secs(30);
        let (theirs, other) = (Uuid::new_v4(), Uuid::new_v4());
        let claim = |id, inode, holds_flushed_writes| LogClaim {
            dir: dir.path(),
            id,
            inode,
            holds_flushed_writes,
        };
        let holder = LeaseRecord::new(ttl, "", Some(claim(Some(theirs), Some(7), true)));
        let left_for =
            |record: &LeaseRecord, id, inode| record.left_a_log_elsewhere(&claim(id, inode, true));
        assert!(left_for(&holder, Some(other), Some(7)), "another log");
        assert!(left_for(&holder, None, None), "a lost cache dir");
        assert!(
            left_for(&holder, Some(theirs), Some(8)),
            "a copy of the log"
        );
        assert!(!left_for(&holder, Some(theirs), Some(7)), "the log itself");
        let no_inode = LeaseRecord {
            log_inode: 0,
            ..holder.clone()
        };
        assert!(!left_for(&no_inode, Some(theirs), Some(8)), "unknown inode");
        let in_a_container = LeaseRecord {
            pid_space: format!(
                "{}/pid:[4026531999]",
                crate::process::boot_of(&holder.pid_space)
            ),
            machine_id: String::new(),
            ..holder.clone()
        };
        assert!(left_for(&in_a_container, Some(other), None), "same boot");
        let before_a_reboot = LeaseRecord {
            pid_space: "an-earlier-boot/pid:[4026531836]".into(),
            ..holder.clone()
        };
        assert_eq!(
            left_for(&before_a_reboot, Some(other), None),
            !crate::process::machine_id().is_empty(),
            "same machine id"
        );
        let elsewhere = LeaseRecord {
            pid_space: "another-boot/pid:[4026531836]".into(),
            machine_id: "another-machine".into(),
            ..holder.clone()
        };
        assert!(!left_for(&elsewhere, Some(other), None));
        let remote = LeaseRecord::new(ttl, "", Some(claim(Some(theirs), Some(7), false)));
        assert!(!left_for(&remote, Some(other), None), "no flushed writes");
        let no_log = LeaseRecord::new(ttl, "", None);
        assert!(!left_for(&no_log, Some(other), None));
    }

    #[test]
    fn a_hostname_from_the_bucket_is_shown_without_escape_sequences() {
        let mut record = LeaseRecord::new(Duration::from_secs(30), "", None);
        record.host = "\u{1b}[2J\u{1b}[31mEVIL\nline".to_string() + &"x".repeat(1000);
        let shown = record.holder_name();
        assert!(!shown.chars().any(char::is_control), "{shown:?}");
        assert!(shown.contains("?[2J?[31mEVIL?line"), "{shown:?}");
        assert!(shown.len() < 300, "{}", shown.len());
    }
}
