//! Which volumes are attached on this host: one JSON record per volume in
//! the runtime directory (`/run/zeroblk` for root), written by the daemon
//! that serves it and removed when it detaches.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// How an attached volume is served.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    /// By its writer (the one holding its lease).
    #[default]
    ReadWrite,
    /// Read-only, from one root: a snapshot, or a volume as it was.
    ReadOnly,
    /// Read-only, following its writer's commits.
    Following,
}

impl Access {
    pub fn is_read_only(self) -> bool {
        self != Access::ReadWrite
    }
}

impl std::fmt::Display for Access {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::ReadWrite => "read-write",
            Access::ReadOnly => "read-only",
            Access::Following => "following",
        })
    }
}

/// The name the registry keeps an attach under: the volume's own for its
/// writer and for a snapshot (`NAME@SNAP`), `NAME+ro` for a read-only
/// attach of a volume, so that one can run beside its writer (no volume
/// or snapshot name has a `+`). Its record, socket and log are named so.
pub fn key(name: &str, access: Access) -> String {
    match access.is_read_only() && !name.contains('@') {
        true => format!("{name}+ro"),
        false => name.to_string(),
    }
}

/// An attached volume, as `zeroblk list` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachRecord {
    /// The volume, or `NAME@SNAP` for a snapshot.
    pub name: String,
    /// Records of older versions are all of writers.
    #[serde(default)]
    pub access: Access,
    pub device: String,
    pub size: u64,
    pub store: String,
    pub pid: u32,
    /// When the daemon started (`process::ProcessId`): a later process
    /// given its pid is not it.
    #[serde(default)]
    pub pid_started: u64,
    pub transport: String,
    /// `attached`, or `dead` when its daemon is gone.
    pub state: String,
    pub control_socket: PathBuf,
    #[serde(default)]
    pub nbd_listen: Vec<String>,
    /// Where the provisioned filesystem is mounted, if it is.
    #[serde(default)]
    pub mount_point: Option<PathBuf>,
    /// The NFS export of that mount point (`--nfs-options`), if any.
    #[serde(default)]
    pub nfs: Option<String>,
}

impl AttachRecord {
    /// The registry's name for it (see [`key`]).
    pub fn key(&self) -> String {
        key(&self.name, self.access)
    }

    pub fn daemon_alive(&self) -> bool {
        crate::process::ProcessId::recorded(self.pid, self.pid_started).is_running()
    }
}

/// The runtime directory, created on first use.
pub fn runtime_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("ZEROBLK_RUNTIME_DIR") {
        return PathBuf::from(dir);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/run/zeroblk");
    }
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(dir) => PathBuf::from(dir).join("zeroblk"),
        None => PathBuf::from(format!("/tmp/zeroblk-{}", nix::unistd::geteuid())),
    }
}

fn record_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.json"))
}

pub fn control_socket(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.sock"))
}

/// The control socket of the `zeroblk serve` process `pid` (named with a
/// `+`, which no volume's name has).
pub fn serve_socket(dir: &Path, pid: u32) -> PathBuf {
    dir.join(format!("+serve-{pid}.sock"))
}

/// The control sockets of `zeroblk serve` processes, live or left by dead
/// ones, each with its process id.
pub fn serve_sockets(dir: &Path) -> io::Result<Vec<(u32, PathBuf)>> {
    if !check_trusted(dir)? {
        return Ok(Vec::new());
    }
    let mut sockets = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let pid = name
            .strip_prefix("+serve-")
            .and_then(|n| n.strip_suffix(".sock"));
        let Some(pid) = pid.and_then(|p| p.parse().ok()) else {
            continue;
        };
        match nobody_listens(&path) {
            true => remove_dead_socket(&path),
            false => sockets.push((pid, path)),
        }
    }
    sockets.sort();
    Ok(sockets)
}

/// Whether no process listens on the socket at `path` any more (its
/// `zeroblk serve` was killed): a connection is refused.
fn nobody_listens(path: &Path) -> bool {
    let refused = std::os::unix::net::UnixStream::connect(path).err();
    refused.is_some_and(|error| error.kind() == io::ErrorKind::ConnectionRefused)
}

fn remove_dead_socket(path: &Path) {
    match std::fs::remove_file(path) {
        Ok(()) => {
            tracing::debug!(socket = %path.display(), "removed the socket of a zeroblk serve that was killed")
        }
        Err(error) => {
            tracing::debug!(socket = %path.display(), %error, "cannot remove a dead socket")
        }
    }
}

pub fn log_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.log"))
}

/// Makes the runtime dir `dir` (0700) if it is missing, and checks one
/// that is there: a directory of this user's, not a symlink, open to no
/// one else (made private if an older version left it open). Someone
/// else's directory is refused: its owner could swap records and sockets.
pub fn ensure_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    match std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    check_owner(dir, &meta)?;
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

/// Whether the runtime dir `dir` (if it is there) can be trusted for what
/// it holds: a plain directory of this user's that no one else can write.
/// Records and sockets in any other could have been planted.
fn check_trusted(dir: &Path) -> io::Result<bool> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    check_owner(dir, &meta)?;
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is writable by other users, who could have planted records in it: check its files, then `chmod 700` it",
                dir.display()
            ),
        ));
    }
    Ok(true)
}

fn check_owner(dir: &Path, meta: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    if !crate::process::is_own_dir(meta) {
        let me = nix::unistd::geteuid().as_raw();
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of user {me} (it is owned by {}, or is not a plain directory): remove it, or set ZEROBLK_RUNTIME_DIR to a directory of your own",
                dir.display(),
                meta.uid()
            ),
        ));
    }
    Ok(())
}

/// The daemon log of volume `name`, created or truncated, private, and
/// never opened through a symlink.
pub fn create_log(dir: &Path, name: &str) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(log_path(dir, name))
}

/// Writes a record atomically.
pub fn write(dir: &Path, record: &AttachRecord) -> io::Result<()> {
    ensure_private_dir(dir)?;
    let path = record_path(dir, &record.key());
    let temporary = path.with_extension("json.tmp");
    std::fs::write(
        &temporary,
        serde_json::to_vec_pretty(record).map_err(io::Error::other)?,
    )?;
    std::fs::rename(temporary, path)
}

/// Removes the record kept under `key`.
pub fn remove(dir: &Path, key: &str) {
    let _ = std::fs::remove_file(record_path(dir, key));
}

/// Every record, with `state` set to `dead` where the daemon is gone.
pub fn list(dir: &Path) -> io::Result<Vec<AttachRecord>> {
    if !check_trusted(dir)? {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir)?;
    let mut records = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let Ok(mut record) = serde_json::from_slice::<AttachRecord>(&bytes) else {
                continue;
            };
            if !record.daemon_alive() {
                record.state = "dead".into();
            }
            records.push(record);
        }
    }
    records.sort_by_key(|r| (r.name.clone(), r.access));
    Ok(records)
}

/// The record kept under `key_or_device` (see [`key`]), or of that device.
pub fn find(dir: &Path, key_or_device: &str) -> io::Result<Option<AttachRecord>> {
    Ok(list(dir)?
        .into_iter()
        .find(|r| r.key() == key_or_device || r.device == key_or_device))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_killed_serves_socket_is_swept_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let live = std::os::unix::net::UnixListener::bind(dir.path().join("+serve-11.sock"));
        let killed = dir.path().join("+serve-12.sock");
        drop(std::os::unix::net::UnixListener::bind(&killed).unwrap());
        assert!(
            killed.exists(),
            "a listener's socket outlives it, as a kill leaves it"
        );
        let found = serve_sockets(dir.path()).unwrap();
        assert_eq!(found, [(11, dir.path().join("+serve-11.sock"))]);
        assert!(!killed.exists(), "the dead socket was removed");
        drop(live);
    }

    #[test]
    fn the_runtime_dir_is_private_and_this_users() {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        let top = tempfile::tempdir().unwrap();
        let fresh = top.path().join("a/run");
        ensure_private_dir(&fresh).unwrap();
        assert_eq!(std::fs::metadata(&fresh).unwrap().mode() & 0o777, 0o700);
        let open = top.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        ensure_private_dir(&open).unwrap();
        assert_eq!(std::fs::metadata(&open).unwrap().mode() & 0o777, 0o700);
        let link = top.path().join("link");
        std::os::unix::fs::symlink(&open, &link).unwrap();
        assert!(ensure_private_dir(&link).is_err());
        if nix::unistd::geteuid().is_root() {
            let theirs = top.path().join("theirs");
            std::fs::create_dir(&theirs).unwrap();
            let other = Some(nix::unistd::Uid::from_raw(65534));
            nix::unistd::chown(&theirs, other, None).unwrap();
            let refused = ensure_private_dir(&theirs).unwrap_err().to_string();
            assert!(refused.contains("ZEROBLK_RUNTIME_DIR"), "{refused}");
            assert!(
                list(&theirs).is_err(),
                "records read from someone else's dir"
            );
        }
        assert!(list(&link).is_err(), "records read through a symlink");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(
            list(&open).is_err(),
            "records read from a dir others can write"
        );
        assert!(list(&top.path().join("missing")).unwrap().is_empty());
    }

    #[test]
    fn records_round_trip_and_dead_daemons_show() {
        let dir = tempfile::tempdir().unwrap();
        let mut record = AttachRecord {
            name: "v".into(),
            access: Access::ReadWrite,
            device: "/dev/nbd3".into(),
            size: 1 << 30,
            store: "file:///x".into(),
            pid: std::process::id(),
            pid_started: crate::process::ProcessId::current().started(),
            transport: "nbd".into(),
            state: "attached".into(),
            control_socket: control_socket(dir.path(), "v"),
            nbd_listen: vec![],
            mount_point: None,
            nfs: None,
        };
        write(dir.path(), &record).unwrap();
        assert_eq!(find(dir.path(), "/dev/nbd3").unwrap(), Some(record.clone()));
        record.name = "w".into();
        record.pid = u32::MAX - 1;
        write(dir.path(), &record).unwrap();
        let all = list(dir.path()).unwrap();
        assert_eq!(all.len(), 2);
        assert_eq!(all[1].state, "dead");
        remove(dir.path(), "v");
        assert!(find(dir.path(), "v").unwrap().is_none());
    }

    #[test]
    fn read_only_attaches_of_a_volume_are_kept_beside_its_writer() {
        assert_eq!(key("v", Access::ReadWrite), "v");
        assert_eq!(key("v", Access::Following), "v+ro");
        assert_eq!(key("v@s", Access::ReadOnly), "v@s");
        let dir = tempfile::tempdir().unwrap();
        let record = |name: &str, access, device: &str| AttachRecord {
            name: name.into(),
            access,
            device: device.into(),
            size: 1 << 30,
            store: "file:///x".into(),
            pid: std::process::id(),
            pid_started: crate::process::ProcessId::current().started(),
            transport: "ublk".into(),
            state: "attached".into(),
            control_socket: control_socket(dir.path(), name),
            nbd_listen: vec![],
            mount_point: None,
            nfs: None,
        };
        write(dir.path(), &record("v", Access::ReadWrite, "/dev/ublkb0")).unwrap();
        write(dir.path(), &record("v", Access::Following, "/dev/ublkb1")).unwrap();
        write(dir.path(), &record("v@s", Access::ReadOnly, "/dev/ublkb2")).unwrap();
        assert_eq!(list(dir.path()).unwrap().len(), 3);
        let device = |key: &str| find(dir.path(), key).unwrap().map(|r| r.device);
        assert_eq!(device("v").as_deref(), Some("/dev/ublkb0"));
        assert_eq!(device("v+ro").as_deref(), Some("/dev/ublkb1"));
        assert_eq!(device("v@s").as_deref(), Some("/dev/ublkb2"));
        assert_eq!(
            find(dir.path(), "/dev/ublkb1").unwrap().map(|r| r.access),
            Some(Access::Following)
        );
        // A record an older version wrote is a writer's.
        let old = r#"{"name":"w","device":"/dev/nbd0","size":1,"store":"s","pid":1,"transport":"nbd","state":"attached","control_socket":"/x"}"#;
        let old: AttachRecord = serde_json::from_str(old).unwrap();
        assert_eq!(old.access, Access::ReadWrite);
    }
}
