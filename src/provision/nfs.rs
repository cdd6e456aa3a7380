//! Sharing a mount point over NFS with the kernel's NFS server
//! (nfs-kernel-server): starting the server when it is not running,
//! exporting and unexporting.

use std::fmt;
use std::path::Path;
use std::process::Stdio;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::ProvisionError;
use super::command::{EXPORTFS, RPC_MOUNTD, RPC_NFSD, Tool};

/// `--nfs-options`: export options and the clients they apply to, written
/// as one list the way users think of it (`rw,sync,no_subtree_check,
/// 10.0.0.0/24`). Items exports(5) knows as options are options; the rest
/// name clients (hosts, networks, wildcards, @netgroups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct NfsExport {
    pub options: Vec<String>,
    pub clients: Vec<String>,
}

/// exports(5) options without a value.
const FLAG_OPTIONS: &[&str] = &[
    "secure",
    "insecure",
    "rw",
    "ro",
    "async",
    "sync",
    "wdelay",
    "no_wdelay",
    "hide",
    "nohide",
    "crossmnt",
    "subtree_check",
    "no_subtree_check",
    "secure_locks",
    "insecure_locks",
    "auth_nlm",
    "no_auth_nlm",
    "mountpoint",
    "mp",
    "nordirplus",
    "pnfs",
    "no_pnfs",
    "security_label",
    "root_squash",
    "no_root_squash",
    "all_squash",
    "no_all_squash",
];

fn is_option(item: &str) -> bool {
    item.contains('=') || FLAG_OPTIONS.contains(&item)
}

impl FromStr for NfsExport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let items: Vec<&str> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .collect();
        let (options, clients): (Vec<&str>, Vec<&str>) =
            items.into_iter().partition(|item| is_option(item));
        if clients.is_empty() {
            return Err(format!(
                "--nfs-options `{s}` names no client: add the hosts or network to share with, e.g. `{s},10.0.0.0/24` (or `*` for everyone)"
            ));
        }
        if let Some(bad) = clients.iter().find(|c| c.starts_with('-')) {
            return Err(format!(
                "`{bad}` in --nfs-options starts with `-`, which exportfs would take for a flag: name clients by host, network or @netgroup"
            ));
        }
        if let Some(bad) = clients.iter().find(|c| c.contains(char::is_whitespace)) {
            return Err(format!(
                "`{bad}` in --nfs-options is neither an export option nor a client"
            ));
        }
        Ok(NfsExport {
            options: options.into_iter().map(String::from).collect(),
            clients: clients.into_iter().map(String::from).collect(),
        })
    }
}

impl TryFrom<String> for NfsExport {
    type Error = String;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        value.parse()
    }
}

impl From<NfsExport> for String {
    fn from(value: NfsExport) -> Self {
        value.to_string()
    }
}

impl fmt::Display for NfsExport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<&str> = self
            .options
            .iter()
            .chain(&self.clients)
            .map(String::as_str)
            .collect();
        f.write_str(&items.join(","))
    }
}

const NFSD_THREADS: &str = "/proc/fs/nfsd/threads";

/// Whether the kernel NFS server runs (has threads).
pub fn server_running() -> bool {
    std::fs::read_to_string(NFSD_THREADS)
        .ok()
        .and_then(|t| t.trim().parse::<u32>().ok())
        .is_some_and(|threads| threads > 0)
}

/// Starts the NFS server when it is not running: through systemd where it
/// runs, else its pieces by hand (rpcbind, rpc.mountd, rpc.nfsd).
pub fn ensure_server() -> Result<(), ProvisionError> {
    if server_running() {
        return Ok(());
    }
    EXPORTFS.find()?;
    if Path::new("/run/systemd/system").exists() {
        SYSTEMCTL.run(["start", "nfs-server"])?;
    } else {
        start_server_by_hand()?;
    }
    if !server_running() {
        return Err(ProvisionError::Invalid(
            "the NFS server did not start (no nfsd threads): check that the kernel has nfsd (`modprobe nfsd`) and see the system log".into(),
        ));
    }
    tracing::info!("started the NFS server");
    Ok(())
}

const SYSTEMCTL: Tool = Tool {
    program: "systemctl",
    package: "systemd",
};
const MODPROBE: Tool = Tool {
    program: "modprobe",
    package: "kmod",
};
const RPCBIND: Tool = Tool {
    program: "rpcbind",
    package: "rpcbind",
};

fn start_server_by_hand() -> Result<(), ProvisionError> {
    if !Path::new(NFSD_THREADS).exists() {
        let _ = MODPROBE.output(["nfsd"]);
        nix::mount::mount(
            Some("nfsd"),
            "/proc/fs/nfsd",
            Some("nfsd"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|errno| ProvisionError::Io {
            what: "mounting /proc/fs/nfsd (is nfsd in this kernel? `modprobe nfsd`)".into(),
            source: errno.into(),
        })?;
    }
    if RPCBIND.find().is_ok() && !Path::new("/run/rpcbind.sock").exists() {
        start_daemon(RPCBIND, &["-w"])?;
    }
    if !process_running("rpc.mountd") {
        start_daemon(RPC_MOUNTD, &[])?;
    }
    RPC_NFSD.run(["8"])?;
    Ok(())
}

/// Starts a tool that forks into the background, with nothing inherited.
fn start_daemon(tool: Tool, args: &[&str]) -> Result<(), ProvisionError> {
    let status = std::process::Command::new(tool.find()?)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|source| ProvisionError::Io {
            what: format!("starting {}", tool.program),
            source,
        })?;
    if !status.success() {
        return Err(ProvisionError::ToolFailed {
            tool: tool.program,
            status: status.to_string(),
            message: "see the system log".into(),
        });
    }
    Ok(())
}

fn process_running(name: &str) -> bool {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return false;
    };
    entries.flatten().any(|entry| {
        std::fs::read_to_string(entry.path().join("comm")).is_ok_and(|comm| comm.trim() == name)
    })
}

/// Exports `path` to every client of `export`.
pub fn export(path: &Path, export: &NfsExport) -> Result<(), ProvisionError> {
    let options = export.options.join(",");
    for client in &export.clients {
        let target = format!("{client}:{}", path.display());
        let mut args = vec!["-i".to_string()];
        if !options.is_empty() {
            args.extend(["-o".to_string(), options.clone()]);
        }
        args.push(target.clone());
        EXPORTFS.run(&args)?;
        tracing::info!(%target, %options, "exported over NFS");
    }
    Ok(())
}

/// Withdraws the exports of `path`.
pub fn unexport(path: &Path, export: &NfsExport) -> Result<(), ProvisionError> {
    for client in &export.clients {
        let target = format!("{client}:{}", path.display());
        EXPORTFS.run(["-u", target.as_str()])?;
        tracing::info!(%target, "unexported");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_clients_are_told_apart() {
        let export: NfsExport = "rw,sync,no_subtree_check,10.0.0.0/24".parse().unwrap();
        assert_eq!(export.options, ["rw", "sync", "no_subtree_check"]);
        assert_eq!(export.clients, ["10.0.0.0/24"]);
        let export: NfsExport = "ro, fsid=7,anonuid=1000,*.lan,host1,@group"
            .parse()
            .unwrap();
        assert_eq!(export.options, ["ro", "fsid=7", "anonuid=1000"]);
        assert_eq!(export.clients, ["*.lan", "host1", "@group"]);
        assert_eq!(
            export.to_string(),
            "ro,fsid=7,anonuid=1000,*.lan,host1,@group"
        );
    }

    #[test]
    fn an_export_needs_a_client() {
        let error = "rw,sync".parse::<NfsExport>().unwrap_err();
        assert!(error.contains("names no client"), "{error}");
    }
}
