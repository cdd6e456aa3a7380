//! `zeroblk attach`, `detach` and `list`: volumes as block devices here.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::nbd_tls::TlsArgs;
use super::read_only::{self, Mode, ReadOnlyArgs};
use super::settings::{EngineArgs, Settings};
use super::status::MetricsArgs;
use crate::attach::daemon::{self, AttachOptions};
use crate::attach::provisioning::{self, ProvisionFlags};
use crate::attach::registry::Access;
use crate::attach::{
    AttachError, Transport, UblkOptions, choose_transport, orphan, registry, spawn,
};
use crate::control;
use crate::engine::{self, EngineError, NewVolume, VolumeRef};
use crate::format::{Compression, DEFAULT_CHUNK_SIZE};
use crate::nbd::ListenAddr;
use crate::provision::{self, BtrfsCompression, Filesystem, MountOptions, NfsExport};
use crate::size::ByteSize;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The volume to attach, created when missing (then --size is needed),
    /// or NAME@SNAP for one of its snapshots (read-only) [default: default]
    #[arg(value_name = "NAME")]
    pub name: Option<VolumeRef>,
    /// The volume to attach, as a flag: the same as NAME (the shape of
    /// `zerofs nbd export --name NAME`)
    #[arg(long = "name", value_name = "NAME")]
    pub name_flag: Option<VolumeRef>,
    /// Size of a volume to create, e.g. 100G
    #[arg(long, value_name = "SIZE")]
    pub size: Option<ByteSize>,
    /// Chunk size of a volume to create
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(DEFAULT_CHUNK_SIZE))]
    pub chunk_size: ByteSize,
    /// Compression of a volume to create: zstd, zstd:LEVEL or none
    #[arg(long, value_name = "CODEC", default_value = "zstd:3")]
    pub compression: Compression,
    /// Stay in the foreground and serve the device (for systemd)
    #[arg(long)]
    pub foreground: bool,
    /// How the device reaches the kernel: auto (ublk, else nbd), ublk or nbd
    #[arg(long, value_name = "KIND", default_value = "auto")]
    pub transport: Transport,
    /// ublk: hardware queues (one thread each)
    #[arg(long, default_value_t = 1)]
    pub queues: u16,
    /// ublk: requests in flight per queue
    #[arg(long, default_value_t = 128)]
    pub depth: u16,
    /// Take back the ublk device of this volume after its daemon died;
    /// requests waiting on it go on, without errors
    #[arg(long)]
    pub recover: bool,
    /// Also serve the volume over NBD at ADDR, from the same daemon
    #[arg(long = "nbd-listen", value_name = "ADDR")]
    pub nbd_listen: Vec<ListenAddr>,
    /// TLS for --nbd-listen
    #[command(flatten)]
    pub nbd_tls: TlsArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
    #[command(flatten)]
    pub provision: ProvisionArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

/// How to provision the device; remembered with the volume, so a later
/// `zeroblk attach NAME` brings the same back.
#[derive(Debug, Default, clap::Args)]
pub struct ProvisionArgs {
    /// Put btrfs on the device (made only if the device is empty), with
    /// the subvolumes @, @home and @snapshots, mounted here
    #[arg(long, value_name = "DIR")]
    pub mount_point: Option<PathBuf>,
    /// The filesystem: btrfs, or none for a raw device
    #[arg(long, value_name = "FS")]
    pub filesystem: Option<Filesystem>,
    /// btrfs compression: zstd:3 (default), zstd:N, lzo, zlib or none
    #[arg(long, value_name = "CODEC")]
    pub compress: Option<BtrfsCompression>,
    /// Share the mount point over NFS: export options and clients, as in
    /// "rw,sync,no_subtree_check,10.0.0.0/24"
    #[arg(long, value_name = "OPTIONS")]
    pub nfs_options: Option<NfsExport>,
    /// btrfs mount options, e.g. "ssd,commit=120,space_cache=v2", checked
    /// against a list and remembered with the volume ("defaults" forgets
    /// them); "suid" and "dev" lift the mount's nosuid and nodev on this
    /// host only, never remembered
    #[arg(long, value_name = "LIST")]
    pub mount_options: Option<MountOptions>,
}

impl ProvisionArgs {
    /// Whether any provisioning flag was given.
    fn given(&self) -> bool {
        self.mount_point.is_some()
            || self.filesystem.is_some()
            || self.compress.is_some()
            || self.nfs_options.is_some()
            || self.mount_options.is_some()
    }

    fn flags(&self) -> ProvisionFlags {
        ProvisionFlags {
            mount_point: self.mount_point.clone(),
            filesystem: self.filesystem,
            compress: self.compress.clone(),
            nfs_options: self.nfs_options.clone(),
            mount_options: self.mount_options.clone(),
        }
    }
}

impl AttachArgs {
    /// The volume to attach: NAME or --name NAME (both only when they
    /// agree), else the volume called `default`.
    pub fn volume(&self) -> anyhow::Result<VolumeRef> {
        match (&self.name, &self.name_flag) {
            (Some(positional), Some(flag)) if positional != flag => anyhow::bail!(
                "the volume is named twice, `{positional}` and --name {flag}: give it once, as NAME or as --name NAME"
            ),
            (Some(name), _) | (None, Some(name)) => Ok(name.clone()),
            (None, None) => Ok(VolumeRef::volume(DEFAULT_VOLUME)),
        }
    }
}

/// The volume `zeroblk attach` attaches when none is named.
const DEFAULT_VOLUME: &str = "default";

pub async fn attach(args: AttachArgs, settings: &Settings) -> anyhow::Result<()> {
    let volume = args.volume()?;
    anyhow::ensure!(
        !args.nbd_listen.is_empty() || !args.nbd_tls.given(),
        "the TLS flags are for the NBD server of --nbd-listen ADDR: add it, or leave them out"
    );
    let mode = args.read_only.mode(&volume)?;
    if mode.is_read_only() {
        check_read_only(&args, &volume)?;
    }
    // Checked here too, so a mistake shows before the daemon starts.
    let nbd_tls = args.nbd_tls.load(&args.nbd_listen)?;
    let dir = registry::runtime_dir();
    let name = volume.to_string();
    let key = registry::key(&name, mode.access());
    let recover = if args.recover {
        Some(orphan::device_to_recover(&dir, &name, mode.access())?)
    } else {
        None
    };
    if recover.is_none() {
        // A recovery keeps the dead daemon's record until the new daemon
        // has read it.
        daemon::ensure_not_attached(&dir, &key)?;
        choose_transport(args.transport)?;
    }
    let store = settings.open_store()?;
    let provision = match mode {
        Mode::Write => {
            ensure_volume(&store, &args, volume.name(), settings).await?;
            let flags = args.provision.flags();
            provisioning::resolve(&store, volume.name(), &flags).await?
        }
        Mode::Read(_) => {
            engine::open_root(&store, &volume, settings.password().cloned()).await?;
            None
        }
    };
    if let Some(provision) = &provision {
        provision::preflight(provision)?;
    }
    if !args.foreground {
        let device = spawn::daemon(&name, &key, &dir)?;
        outln!("{device}");
        return Ok(());
    }
    let options = settings.engine_options(&args.engine)?;
    let volume = read_only::open(&store, &volume, mode, options).await?;
    let options = AttachOptions {
        name,
        access: mode.access(),
        transport: args.transport,
        nbd_listen: args.nbd_listen.clone(),
        metrics_listen: args.metrics.addresses(settings),
        nbd_tls,
        store_url: store.url().to_string(),
        ublk: UblkOptions {
            queues: args.queues,
            depth: args.depth,
            recover,
        },
        provision,
    };
    daemon::run(volume, options, |device| {
        let mut stdout = std::io::stdout();
        let _ = writeln!(stdout, "{device}");
        let _ = stdout.flush();
    })
    .await?;
    Ok(())
}

/// Refuses what a read-only attach cannot do: create or grow a volume,
/// or provision anything (mkfs, a mount that writes, an export).
fn check_read_only(args: &AttachArgs, what: &VolumeRef) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.size.is_none(),
        "--size creates or checks a volume to write: leave it out to attach `{what}` read-only"
    );
    anyhow::ensure!(
        !args.provision.given(),
        "a read-only attach makes no filesystem, mount or export: leave out --mount-point, --filesystem, --compress, --nfs-options and --mount-options, and mount the device read-only yourself"
    );
    anyhow::ensure!(
        !args.engine.force,
        "--force takes a writer's lease over, and a read-only attach takes none: leave it out"
    );
    Ok(())
}

async fn ensure_volume(
    store: &Store,
    args: &AttachArgs,
    name: &str,
    settings: &Settings,
) -> anyhow::Result<()> {
    match engine::info(store, name, settings.password()).await {
        Ok(info) => {
            if let Some(size) = args.size.filter(|s| s.bytes() != info.size) {
                anyhow::bail!(
                    "volume {} is {}, not {size}: leave out --size, or grow it with `zeroblk volume resize {} --size {size}`",
                    name,
                    ByteSize(info.size),
                    name
                );
            }
            Ok(())
        }
        Err(EngineError::NoSuchVolume(_)) => {
            let size = args.size.with_context(|| {
                format!(
                    "volume {} does not exist: give --size (e.g. --size 100G) to create it",
                    name
                )
            })?;
            let new = NewVolume {
                name: name.to_string(),
                size: size.bytes(),
                chunk_size: args.chunk_size.bytes(),
                compression: args.compression,
                encrypt_with: settings.password_for_new_volume(false)?,
            };
            engine::create(store, &new).await?;
            eprintln!("created volume {name} ({size})");
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Detaches `target`: an attach by its name (`NAME`, `NAME@SNAP`; with
/// `read_only`, the read-only attach of `NAME`), or a device.
pub async fn detach(target: &str, read_only: bool) -> anyhow::Result<()> {
    let dir = registry::runtime_dir();
    let record = find_attached(&dir, target, read_only)?;
    if !record.daemon_alive() {
        return detach_dead(&dir, &record);
    }
    control::request_detach(&record.control_socket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot detach {}: {e}", record.name))?;
    for _ in 0..600 {
        if !record.daemon_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    match record.access.is_read_only() {
        true => outln!(
            "detached {} ({}, {}): it wrote nothing",
            record.name,
            record.access,
            record.device
        ),
        false => outln!(
            "detached {} ({}); everything is committed to {}",
            record.name,
            record.device,
            record.store
        ),
    }
    Ok(())
}

/// The record `detach` means; a volume attached only read-only, named
/// without `--read-only`, is refused with the command that detaches it.
fn find_attached(
    dir: &std::path::Path,
    target: &str,
    read_only: bool,
) -> anyhow::Result<registry::AttachRecord> {
    let access = match read_only {
        true => Access::ReadOnly,
        false => Access::ReadWrite,
    };
    let key = match target.starts_with("/dev/") {
        true => target.to_string(),
        false => {
            // A name that is no volume or snapshot is a typo, not a detach.
            target.parse::<crate::engine::VolumeRef>()?;
            registry::key(target, access)
        }
    };
    if let Some(record) = registry::find(dir, &key)? {
        return Ok(record);
    }
    let read_only_key = registry::key(target, Access::ReadOnly);
    if !read_only && registry::find(dir, &read_only_key)?.is_some() {
        return Err(AttachError::OnlyReadOnly(target.to_string()).into());
    }
    Err(AttachError::NotAttached(target.to_string()).into())
}

/// Detaching a volume whose daemon died: its device and record go (see
/// `attach::orphan::remove_dead`).
fn detach_dead(dir: &std::path::Path, record: &registry::AttachRecord) -> anyhow::Result<()> {
    orphan::remove_dead(dir, record)?;
    let log = registry::log_path(dir, &record.key());
    if record.access.is_read_only() {
        outln!(
            "the daemon of {} (pid {}, {}) had died (its log: {}); removed {}. It wrote nothing",
            record.name,
            record.pid,
            record.access,
            log.display(),
            record.device
        );
        return Ok(());
    }
    outln!(
        "the daemon of {} (pid {}) had died (its log: {}); removed {}. Writes it acknowledged are in the cache's write-back log: `zeroblk attach {}` replays them",
        record.name,
        record.pid,
        log.display(),
        record.device,
        record.name
    );
    Ok(())
}

pub fn list(json: bool) -> anyhow::Result<()> {
    let records = registry::list(&registry::runtime_dir())?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&records)?);
        return Ok(());
    }
    if records.is_empty() {
        outln!("nothing attached; attach a volume with `zeroblk attach NAME --size 100G`");
        return Ok(());
    }
    outln!(
        "{:<20} {:<14} {:>8} {:>8} {:<10} {:<10} {:<9} {:<24} STORE",
        "NAME",
        "DEVICE",
        "SIZE",
        "PID",
        "TRANSPORT",
        "ACCESS",
        "STATE",
        "MOUNT"
    );
    for r in records {
        outln!(
            "{:<20} {:<14} {:>8} {:>8} {:<10} {:<10} {:<9} {:<24} {}",
            r.name,
            r.device,
            ByteSize(r.size).to_string(),
            r.pid,
            r.transport,
            r.access.to_string(),
            r.state,
            r.mount_point
                .as_ref()
                .map_or_else(|| "-".to_string(), |m| m.display().to_string()),
            r.store
        );
    }
    Ok(())
}
