//! Attaching a volume as a block device on this host: choosing the
//! transport, the daemon that serves the device, and the registry that
//! `zeroblk list` and `zeroblk detach` read.
//!
//! Transports, probed once (the way cloud-hypervisor's block factory asks
//! the kernel what it supports): the io_uring ublk target (`/dev/ublkbN`,
//! [`crate::ublk`]), else the kernel NBD client (`/dev/nbdN`, fed by
//! zeroblk's own NBD server over a socket pair). With neither, `auto` says
//! what a kernel needs.
//!
//! The daemon leaves the host's mount namespace as it starts
//! ([`namespace`]) and provisions its device through a hook that runs in
//! the host's ([`hook`]), so it never shares a namespace with a mount of
//! its own device: mounts its copy of the host's namespace starts with are
//! detached from it (`mountinfo` reads the mount table).

pub mod daemon;
mod hook;
mod mountinfo;
pub mod namespace;
pub mod orphan;
pub mod provisioning;
pub mod spawn;

pub use crate::ublk::UblkOptions;
pub mod registry;

use std::str::FromStr;

/// The transport `--transport` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Auto,
    Ublk,
    Nbd,
}

impl FromStr for Transport {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Transport::Auto),
            "nbd" => Ok(Transport::Nbd),
            "ublk" => Ok(Transport::Ublk),
            _ => Err(format!("`{s}` is not a transport: use auto, ublk or nbd")),
        }
    }
}

/// Why a volume could not be attached or detached.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(
        "this kernel has no block device driver zeroblk can use: it needs CONFIG_BLK_DEV_UBLK (`modprobe ublk_drv`) or CONFIG_BLK_DEV_NBD (`modprobe nbd`); without either, serve the volume with `zeroblk serve` and connect from a host that has one"
    )]
    NoKernelSupport,
    #[error(
        "the kernel ublk driver is not loaded (no /dev/ublk-control): run `modprobe ublk_drv` (CONFIG_BLK_DEV_UBLK, Linux 6.0+), or use --transport nbd"
    )]
    NoUblk,
    #[error(
        "the ublk device failed: {0}; `dmesg` may say more, and `--transport nbd` attaches without ublk"
    )]
    Ublk(crate::ublk::UblkFailure),
    #[error("{0}")]
    Metrics(String),
    #[error(
        "the kernel NBD driver is not loaded (no /dev/nbd0): run `modprobe nbd` (CONFIG_BLK_DEV_NBD), or use `zeroblk serve`"
    )]
    NoNbd,
    #[error(
        "every /dev/nbdN is in use: load more with `modprobe nbd nbds_max=64` after detaching, or detach one"
    )]
    NoFreeNbd,
    #[error(
        "`{name}` is already attached ({access}) at {device} (daemon pid {pid}): detach it first with `{detach}`"
    )]
    AlreadyAttached {
        name: String,
        access: registry::Access,
        device: String,
        pid: u32,
        /// The command that detaches it.
        detach: String,
    },
    #[error("{0} is not attached: `zeroblk list` shows what is")]
    NotAttached(String),
    #[error(
        "volume `{0}` is attached only read-only here: detach that with `zeroblk detach --read-only {0}`"
    )]
    OnlyReadOnly(String),
    #[error("volume {0} has no device to recover: attach it normally")]
    NothingToRecover(String),
    #[error("volume {name} is served by a live daemon (pid {pid}): nothing to recover")]
    RecoverLive { name: String, pid: u32 },
    #[error(
        "{0} is not a ublk device: only ublk devices can be recovered; detach and attach again"
    )]
    RecoverNotUblk(String),
    #[error(
        "the daemon of {name} (pid {pid}) is gone, and its device {device} cannot be removed: {failure}"
    )]
    OrphanStays {
        name: String,
        pid: u32,
        device: String,
        failure: crate::ublk::UblkFailure,
    },
    /// Provisioning (the filesystem, its mount, its NFS export) failed.
    #[error("{0}")]
    Provision(String),
    #[error("cannot set up {device}: {source}")]
    Device {
        device: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    #[error("the daemon for {name} failed to start: {last} (log: {log})")]
    DaemonFailed {
        name: String,
        last: String,
        log: String,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}

/// Picks the transport `--transport` asks for, checking the kernel has it.
pub fn choose_transport(wanted: Transport) -> Result<Transport, AttachError> {
    let nbd = crate::kernel_nbd::available();
    let ublk = crate::ublk::available();
    match wanted {
        Transport::Ublk if ublk => Ok(Transport::Ublk),
        Transport::Ublk => Err(AttachError::NoUblk),
        Transport::Nbd if nbd => Ok(Transport::Nbd),
        Transport::Nbd => Err(AttachError::NoNbd),
        Transport::Auto if ublk => Ok(Transport::Ublk),
        Transport::Auto if nbd => Ok(Transport::Nbd),
        Transport::Auto => Err(AttachError::NoKernelSupport),
    }
}
