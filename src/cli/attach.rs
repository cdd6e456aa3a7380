//! `zeroblk attach`, `detach` and `list`: volumes as block devices here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::Context;

use super::nbd_tls::TlsArgs;
use super::settings::{EngineArgs, Settings};
use crate::attach::daemon::{self, AttachOptions};
use crate::attach::{AttachError, Transport, UblkOptions, choose_transport, orphan, registry};
use crate::engine::{self, EngineError, NewVolume, Volume};
use crate::format::{Compression, DEFAULT_CHUNK_SIZE};
use crate::nbd::ListenAddr;
use crate::provision::{
    self, BtrfsCompression, Filesystem, MountOptions, NfsExport, PROVISION_FILE, Provision,
};
use crate::size::ByteSize;
use crate::store::Store;

#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// The volume to attach, created when missing (then --size is needed)
    #[arg(default_value = "default")]
    pub name: String,
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
    /// Lift the nosuid and nodev the mount gets: `suid`, `dev` or
    /// `suid,dev`. Only for this host; never remembered with the volume
    #[arg(long, value_name = "LIST")]
    pub mount_options: Option<MountOptions>,
}

impl ProvisionArgs {
    fn given(&self) -> bool {
        self.mount_point.is_some()
            || self.filesystem.is_some()
            || self.compress.is_some()
            || self.nfs_options.is_some()
    }
}

pub async fn attach(args: AttachArgs, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.nbd_listen.is_empty() || !args.nbd_tls.given(),
        "the TLS flags are for the NBD server of --nbd-listen ADDR: add it, or leave them out"
    );
    // Checked here too, so a mistake shows before the daemon starts.
    let nbd_tls = args.nbd_tls.load(&args.nbd_listen)?;
    let dir = registry::runtime_dir();
    let recover = if args.recover {
        Some(orphan::device_to_recover(&dir, &args.name)?)
    } else {
        None
    };
    if recover.is_none() {
        // A recovery keeps the dead daemon's record until the new daemon
        // has read it.
        daemon::ensure_not_attached(&dir, &args.name)?;
        choose_transport(args.transport)?;
    }
    let store = settings.open_store()?;
    ensure_volume(&store, &args, settings).await?;
    let provision = resolve_provision(&store, &args.name, &args.provision).await?;
    if let Some(provision) = &provision {
        provision::preflight(provision)?;
    }
    if !args.foreground {
        return spawn_daemon(&args.name, &dir);
    }
    let volume = Volume::open(&store, &args.name, settings.engine_options(&args.engine)?).await?;
    let options = AttachOptions {
        transport: args.transport,
        nbd_listen: args.nbd_listen.clone(),
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

/// The provisioning to bring up: the flags given, over what the volume
/// remembers; remembered in turn when it changed. What the volume
/// remembers is checked like the flags (whoever can write the bucket
/// writes it), and its NFS export is applied only when this host's flags
/// repeat it.
async fn resolve_provision(
    store: &Store,
    name: &str,
    args: &ProvisionArgs,
) -> anyhow::Result<Option<Provision>> {
    let stored = stored_provision(store, name, args).await?;
    let wanted = match args.given() {
        true => provision_from_flags(store, name, args, stored.as_ref()).await?,
        false => stored,
    };
    Ok(wanted.map(|provision| applied_on_this_host(name, provision, args)))
}

/// What volume `name` remembers, checked; when it fails the check, an
/// error, unless the flags give a mount point to replace it.
async fn stored_provision(
    store: &Store,
    name: &str,
    args: &ProvisionArgs,
) -> anyhow::Result<Option<Provision>> {
    let Some(bytes) = engine::read_volume_file(store, name, PROVISION_FILE).await? else {
        return Ok(None);
    };
    let checked = serde_json::from_slice::<Provision>(&bytes)
        .map_err(|e| e.to_string())
        .and_then(|p| p.check().map(|()| p).map_err(|e| e.to_string()));
    match checked {
        Ok(provision) => Ok(Some(provision)),
        Err(why) if args.mount_point.is_some() => {
            tracing::warn!(volume = name, %why, "replacing the stored provisioning settings with the flags");
            Ok(None)
        }
        Err(why) => anyhow::bail!(
            "the provisioning settings stored with volume {name} ({PROVISION_FILE}) are refused: {why}; attach it with --mount-point DIR and the other options to replace them"
        ),
    }
}

/// The provisioning the flags ask for, over `stored`; remembered with the
/// volume when it changed.
async fn provision_from_flags(
    store: &Store,
    name: &str,
    args: &ProvisionArgs,
    stored: Option<&Provision>,
) -> anyhow::Result<Option<Provision>> {
    if args.filesystem == Some(Filesystem::None) {
        anyhow::ensure!(
            args.mount_point.is_none() && args.compress.is_none() && args.nfs_options.is_none(),
            "--filesystem none leaves the device raw: leave out --mount-point, --compress and --nfs-options"
        );
        if stored.is_some() {
            engine::write_volume_file(store, name, PROVISION_FILE, None).await?;
        }
        return Ok(None);
    }
    let mount_point = args
        .mount_point
        .clone()
        .or_else(|| stored.map(|p| p.mount_point.clone()))
        .context(
            "a filesystem needs a place to mount it: give --mount-point DIR (e.g. /mnt/NAME)",
        )?;
    let provision = Provision {
        filesystem: Filesystem::Btrfs,
        compress: args
            .compress
            .clone()
            .or_else(|| stored.map(|p| p.compress.clone()))
            .unwrap_or_default(),
        mount_point,
        nfs: args
            .nfs_options
            .clone()
            .or_else(|| stored.and_then(|p| p.nfs.clone())),
        mount: MountOptions::default(),
    };
    provision.check()?;
    if stored != Some(&provision) {
        let json = serde_json::to_vec_pretty(&provision)?;
        engine::write_volume_file(store, name, PROVISION_FILE, Some(json.into())).await?;
    }
    Ok(Some(provision))
}

/// `provision` as this host applies it: its NFS export only when the
/// flags give one, and the mount options of the flags.
fn applied_on_this_host(name: &str, mut provision: Provision, args: &ProvisionArgs) -> Provision {
    if args.nfs_options.is_none()
        && let Some(export) = provision.nfs.take()
    {
        tracing::warn!(
            volume = name,
            "the volume remembers the NFS export `{export}`, which is not applied: a host shares a volume only when its own flags say so; pass --nfs-options '{export}' to share it"
        );
    }
    provision.mount = args.mount_options.unwrap_or_default();
    provision
}

async fn ensure_volume(
    store: &Store,
    args: &AttachArgs,
    settings: &Settings,
) -> anyhow::Result<()> {
    match engine::info(store, &args.name, settings.password()).await {
        Ok(info) => {
            if let Some(size) = args.size.filter(|s| s.bytes() != info.size) {
                anyhow::bail!(
                    "volume {} is {}, not {size}: leave out --size, or grow it with `zeroblk volume resize {} --size {size}`",
                    args.name,
                    ByteSize(info.size),
                    args.name
                );
            }
            Ok(())
        }
        Err(EngineError::NoSuchVolume(_)) => {
            let size = args.size.with_context(|| {
                format!(
                    "volume {} does not exist: give --size (e.g. --size 100G) to create it",
                    args.name
                )
            })?;
            let new = NewVolume {
                name: args.name.clone(),
                size: size.bytes(),
                chunk_size: args.chunk_size.bytes(),
                compression: args.compression,
                encrypt_with: settings.password_for_new_volume(false)?,
            };
            engine::create(store, &new).await?;
            eprintln!("created volume {} ({size})", args.name);
            Ok(())
        }
        Err(error) => Err(error.into()),
    }
}

/// Starts this same command with `--foreground` in the background, and
/// returns once it prints the device path (or fails).
fn spawn_daemon(name: &str, dir: &std::path::Path) -> anyhow::Result<()> {
    registry::ensure_private_dir(dir)?;
    let log = registry::log_path(dir, name);
    let log_file = registry::create_log(dir, name)
        .with_context(|| format!("cannot create {}", log.display()))?;
    let exe = std::env::current_exe().context("cannot find the zeroblk binary")?;
    let mut child = Command::new(exe)
        .args(std::env::args_os().skip(1))
        .arg("--foreground")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(log_file)
        .process_group(0)
        .spawn()
        .context("cannot start the zeroblk daemon")?;
    let stdout = child.stdout.take().expect("piped");
    let (sender, receiver) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = sender.send(line);
    });
    let line = receiver
        .recv_timeout(Duration::from_secs(600))
        .unwrap_or_default();
    let device = line.trim();
    if device.is_empty() {
        let _ = child.kill();
        let _ = child.wait();
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let last = text
            .lines()
            .rfind(|l| !l.trim().is_empty())
            .unwrap_or("no output");
        anyhow::bail!(
            "the daemon for {name} failed to start: {last} (log: {})",
            log.display()
        );
    }
    outln!("{device}");
    Ok(())
}

pub async fn detach(target: &str) -> anyhow::Result<()> {
    let dir = registry::runtime_dir();
    let record = registry::find(&dir, target)?
        .ok_or_else(|| AttachError::NotAttached(target.to_string()))?;
    if !record.daemon_alive() {
        return detach_dead(&dir, &record);
    }
    daemon::request_detach(&record.control_socket)
        .await
        .map_err(|e| anyhow::anyhow!("cannot detach {}: {e}", record.name))?;
    for _ in 0..600 {
        if !record.daemon_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    outln!(
        "detached {} ({}); everything is committed to {}",
        record.name,
        record.device,
        record.store
    );
    Ok(())
}

/// Detaching a volume whose daemon died: its device and record go (see
/// `attach::orphan::remove_dead`).
fn detach_dead(dir: &std::path::Path, record: &registry::AttachRecord) -> anyhow::Result<()> {
    orphan::remove_dead(dir, record)?;
    outln!(
        "the daemon of {} (pid {}) had died (its log: {}); removed {}. Writes it acknowledged are in the cache's write-back log: `zeroblk attach {}` replays them",
        record.name,
        record.pid,
        registry::log_path(dir, &record.name).display(),
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
        "{:<20} {:<14} {:>8} {:>8} {:<10} {:<9} {:<24} STORE",
        "NAME",
        "DEVICE",
        "SIZE",
        "PID",
        "TRANSPORT",
        "STATE",
        "MOUNT"
    );
    for r in records {
        outln!(
            "{:<20} {:<14} {:>8} {:>8} {:<10} {:<9} {:<24} {}",
            r.name,
            r.device,
            ByteSize(r.size).to_string(),
            r.pid,
            r.transport,
            r.state,
            r.mount_point
                .as_ref()
                .map_or_else(|| "-".to_string(), |m| m.display().to_string()),
            r.store
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::Compression;
    use std::path::Path;

    /// A volume `v` in a memory store that remembers `stored` as its
    /// provisioning, as if a bucket writer had put it there.
    async fn volume_remembering(stored: &str) -> Store {
        let store = Store::memory();
        let new = NewVolume {
            name: "v".into(),
            size: 1 << 30,
            chunk_size: 1 << 20,
            compression: Compression::default(),
            encrypt_with: None,
        };
        engine::create(&store, &new).await.unwrap();
        let bytes = bytes::Bytes::from(stored.to_string());
        engine::write_volume_file(&store, "v", PROVISION_FILE, Some(bytes))
            .await
            .unwrap();
        store
    }

    #[tokio::test]
    async fn a_stored_mount_point_in_the_system_is_refused_until_the_flags_replace_it() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/etc"}"#,
        )
        .await;
        let refused = resolve_provision(&store, "v", &ProvisionArgs::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("are refused: mount point /etc is a system directory"),
            "{refused}"
        );
        let flags = ProvisionArgs {
            mount_point: Some("/mnt/v".into()),
            ..ProvisionArgs::default()
        };
        let replaced = resolve_provision(&store, "v", &flags)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(replaced.mount_point, Path::new("/mnt/v"));
        let again = resolve_provision(&store, "v", &ProvisionArgs::default()).await;
        assert_eq!(again.unwrap().unwrap().mount_point, Path::new("/mnt/v"));
    }

    #[tokio::test]
    async fn a_stored_nfs_export_is_applied_only_when_the_flags_repeat_it() {
        let store = volume_remembering(
            r#"{"filesystem": "btrfs", "compress": "zstd:3", "mount_point": "/mnt/v", "nfs": "rw,*"}"#,
        )
        .await;
        let applied = resolve_provision(&store, "v", &ProvisionArgs::default()).await;
        let applied = applied.unwrap().unwrap();
        assert_eq!(applied.nfs, None);
        assert_eq!(applied.mount, MountOptions::default(), "nosuid and nodev");
        let compress_only = ProvisionArgs {
            compress: Some("zstd:1".parse().unwrap()),
            ..ProvisionArgs::default()
        };
        let applied = resolve_provision(&store, "v", &compress_only).await;
        assert_eq!(applied.unwrap().unwrap().nfs, None);
        let flags = ProvisionArgs {
            nfs_options: Some("rw,10.0.0.0/24".parse().unwrap()),
            ..ProvisionArgs::default()
        };
        let applied = resolve_provision(&store, "v", &flags)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(applied.nfs, Some("rw,10.0.0.0/24".parse().unwrap()));
    }
}
