//! `zeroblk volume ...`: the volumes of a store.

use std::time::{Duration, UNIX_EPOCH};

use clap::Subcommand;

use super::progress::StageBar;
use super::settings::{EngineArgs, Settings};
use anyhow::Context;

use crate::control;
use crate::crypto::Password;
use crate::engine::{self, EngineError, NewVolume, Volume, VolumeInfo, VolumeRef};
use crate::format::{Compression, DEFAULT_CHUNK_SIZE};
use crate::size::{ByteSize, human};
use crate::store::Fencing;

/// What a store that ignores conditional writes risks, said by `volume info`.
const UNFENCED_RISK: &str = "this store ignores conditional writes: the lease cannot keep a second writer out, and a writer taken over with --force that still runs can overwrite the new writer's commits and lease (its flushed writes are then lost), and gc keeps a commit in flight only by its grace period; take a volume over only when its old writer is surely gone";

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (refused if the name is taken)
    Create {
        name: String,
        /// Size of the volume, e.g. 100G
        #[arg(long, value_name = "SIZE")]
        size: ByteSize,
        #[command(flatten)]
        layout: LayoutArgs,
    },
    /// List the store's volumes
    List {
        #[arg(long)]
        json: bool,
    },
    /// Show a volume's size, layout, usage and newest generation
    Info {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a volume (its chunks are freed by garbage collection)
    Delete {
        name: String,
        /// Delete it even though its lease says a writer on another host
        /// has it open (that writer crashed)
        #[arg(long)]
        force: bool,
    },
    /// Read and check every chunk and map page a volume references; exits
    /// non-zero if any is missing or corrupt
    Verify {
        name: String,
        /// Draw no progress bar
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Change an encrypted volume's password (the data is not rewritten):
    /// the old one as usual, the new one from --new-password-file or
    /// ZEROBLK_NEW_PASSWORD
    Rekey {
        name: String,
        /// A file whose first line is the new password (mode 600)
        #[arg(long, value_name = "FILE")]
        new_password_file: Option<std::path::PathBuf>,
    },
    /// Snapshots of a whole volume: create, list, delete, prune
    #[command(subcommand)]
    Snapshot(super::volume_snapshot::VolumeSnapshotCommand),
    /// Make a new volume that starts from SRC (its newest state, or a
    /// snapshot SRC@SNAP) without copying data; writes to either never show
    /// in the other
    Clone {
        /// The volume, or snapshot NAME@SNAP, to start from
        source: String,
        /// The new volume's name
        target: String,
    },
    /// Make a snapshot the volume's newest state (the volume must be
    /// detached); what it held is kept first as snapshot pre-rollback-TIME
    Rollback {
        name: String,
        snapshot: String,
        #[command(flatten)]
        engine: EngineArgs,
    },
    /// Grow a volume; one attached on this host grows while attached
    /// (through its daemon), and so does its device where the kernel can
    Resize {
        name: String,
        /// The new size, larger than the current one
        #[arg(long, value_name = "SIZE")]
        size: ByteSize,
        #[command(flatten)]
        engine: EngineArgs,
    },
    Copy(super::copy::CopyArgs),
    Import(super::image::ImportArgs),
    Export(super::image::ExportArgs),
}

/// How a new volume stores its chunks (`volume create`, and `volume
/// import` when it makes the volume).
#[derive(Debug, clap::Args)]
pub struct LayoutArgs {
    /// Chunk size, a power of two from 64K to 16M, fixed for the volume's life
    #[arg(long, value_name = "SIZE", default_value_t = ByteSize(DEFAULT_CHUNK_SIZE))]
    pub chunk_size: ByteSize,
    /// How chunks are compressed in the store: zstd, zstd:LEVEL or none
    #[arg(long, value_name = "CODEC", default_value = "zstd:3")]
    pub compression: Compression,
    /// Encrypt everything the volume stores, with the password of
    /// --password-file, ZEROBLK_PASSWORD or [storage]
    /// encryption_password (given a password, volumes are encrypted
    /// even without this flag)
    #[arg(long)]
    pub encrypt: bool,
}

pub async fn run(command: VolumeCommand, settings: &Settings) -> anyhow::Result<()> {
    let store = settings.open_store()?;
    match command {
        VolumeCommand::Create { name, size, layout } => {
            let LayoutArgs {
                chunk_size,
                compression,
                encrypt,
            } = layout;
            let new = NewVolume {
                name: name.clone(),
                size: size.bytes(),
                chunk_size: chunk_size.bytes(),
                compression,
                encrypt_with: settings.password_for_new_volume(encrypt)?,
            };
            let encrypted = match new.encrypt_with {
                Some(_) => ", encrypted",
                None => "",
            };
            let superblock = engine::create(&store, &new).await?;
            outln!(
                "created volume {name}: {size}, {chunk_size} chunks, {compression}{encrypted}, in {} (uuid {})",
                store.url(),
                superblock.uuid
            );
        }
        VolumeCommand::List { json } => {
            let (mut volumes, mut locked) = (Vec::new(), Vec::new());
            for name in engine::list(&store).await? {
                match engine::info(&store, &name, settings.password()).await {
                    Ok(info) => volumes.push(info),
                    Err(
                        EngineError::PasswordNeeded(_)
                        | EngineError::WrongPassword(_)
                        | EngineError::Key { .. },
                    ) => locked.push(name),
                    Err(error @ EngineError::Unfinished(_)) => tracing::warn!("{error}"),
                    Err(error) => return Err(error.into()),
                }
            }
            if json {
                let mut listed = serde_json::to_value(&volumes)?;
                for name in locked {
                    let entry =
                        serde_json::json!({ "name": name, "encrypted": true, "locked": true });
                    listed.as_array_mut().expect("a list").push(entry);
                }
                outln!("{}", serde_json::to_string_pretty(&listed)?);
            } else {
                print_list(&volumes, &locked);
            }
        }
        VolumeCommand::Info { name, json } => {
            let info = engine::info(&store, &name, settings.password()).await?;
            let fencing = store.fencing().await?;
            if json {
                let mut value = serde_json::to_value(&info)?;
                value["store"] = store.url().into();
                value["fencing"] = serde_json::to_value(fencing)?;
                if fencing == Fencing::Unsupported {
                    value["fencing_risk"] = UNFENCED_RISK.into();
                }
                value["requests"] = serde_json::to_value(store.counters())?;
                outln!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_info(&info);
                outln!(
                    "store:       {} (fencing: {})",
                    store.url(),
                    serde_json::to_value(fencing)?.as_str().unwrap_or("?")
                );
                if fencing == Fencing::Unsupported {
                    outln!("             {UNFENCED_RISK}");
                }
            }
        }
        VolumeCommand::Delete { name, force } => {
            let password = settings.password().cloned();
            engine::delete_unused(&store, &name, &settings.cache_dir, password, force).await?;
            outln!("deleted volume {name}; `zeroblk gc` frees chunks no volume uses");
        }
        VolumeCommand::Verify { name, quiet, json } => {
            let bar = StageBar::new(!quiet && !json);
            let password = settings.password().cloned();
            let verified = engine::verify_metered(&store, &name, password, &bar).await;
            bar.clear();
            let report = verified?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                for bad in &report.bad {
                    outln!("BAD {}: {}", bad.key, bad.problem);
                }
                outln!(
                    "volume {name}, generation {}: {} pages and {} chunks ({}) checked, {} bad",
                    report.generation,
                    report.pages,
                    report.chunks,
                    human(report.bytes),
                    report.bad.len()
                );
            }
            anyhow::ensure!(
                report.is_clean(),
                "volume {name} has {} missing or corrupt objects: its data there cannot be read; restore them from a backup of the bucket, or rewrite the affected ranges",
                report.bad.len()
            );
        }
        VolumeCommand::Rekey {
            name,
            new_password_file,
        } => {
            let old = settings.password().with_context(|| {
                format!("volume {name}: give its current password with --password-file FILE or ZEROBLK_PASSWORD")
            })?;
            let new = new_password(new_password_file.as_deref())?;
            engine::rekey(&store, &name, old, &new).await?;
            outln!(
                "volume {name}: its password is changed (its data key is not: a copy of its old superblock still opens with the old password)"
            );
        }
        VolumeCommand::Snapshot(command) => {
            super::volume_snapshot::run(command, &store, settings).await?;
        }
        VolumeCommand::Clone { source, target } => {
            let source: VolumeRef = source.parse()?;
            if source.snapshot().is_none() {
                super::volume_snapshot::commit_or_warn(&store, source.name()).await?;
            }
            let password = settings.password().cloned();
            let clone = engine::clone_volume(&store, &source, &target, password).await?;
            outln!(
                "cloned {source} as volume {target} ({}, uuid {}): no data copied; writes to either never show in the other",
                ByteSize(clone.size),
                clone.uuid
            );
        }
        VolumeCommand::Rollback {
            name,
            snapshot,
            engine,
        } => {
            let options = settings.engine_options(&engine)?;
            let rolled = engine::rollback(&store, &name, &snapshot, options).await?;
            outln!(
                "volume {name} now holds snapshot {snapshot} (generation {}); what it held before is kept as snapshot {name}@{}",
                rolled.generation(),
                rolled.kept().name()
            );
        }
        VolumeCommand::Resize { name, size, engine } => {
            if let Some(record) = super::volume_snapshot::attached_here(&store, &name)? {
                let grown = control::request_resize(&record.control_socket, size.bytes())
                    .await
                    .map_err(|why| anyhow::anyhow!("volume {name}'s daemon: {why}"))?;
                outln!("{grown}");
                return Ok(());
            }
            let volume = Volume::open(&store, &name, settings.engine_options(&engine)?).await?;
            let before = volume.size();
            volume.resize(size.bytes()).await?;
            volume.close().await?;
            match before == size.bytes() {
                true => outln!("volume {name} is {size} already: nothing changed"),
                false => outln!("volume {name}: {} -> {size}", ByteSize(before)),
            }
        }
        VolumeCommand::Copy(args) => super::copy::run(args, settings).await?,
        VolumeCommand::Import(args) => super::image::import(args, settings).await?,
        VolumeCommand::Export(args) => super::image::export(args, settings).await?,
    }
    Ok(())
}

/// How `zeroblk gc` runs and reports.
pub struct GcArgs {
    pub dry_run: bool,
    pub grace: Duration,
    pub quiet: bool,
    pub json: bool,
}

/// `zeroblk gc`.
pub async fn gc(settings: &Settings, args: GcArgs) -> anyhow::Result<()> {
    let GcArgs {
        dry_run,
        grace,
        quiet,
        json,
    } = args;
    let store = settings.open_store()?;
    let options = engine::GcOptions {
        grace,
        dry_run,
        password: settings.password().cloned(),
    };
    let bar = StageBar::new(!quiet && !json);
    let collected = engine::collect_garbage_metered(&store, options, &bar).await;
    bar.clear();
    let report = collected?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let verb = if dry_run { "would free" } else { "freed" };
    outln!(
        "{verb} {} in {} chunks, {} packs ({} more split, being mostly garbage), {} map pages and {} old roots, across {} volumes; {} chunks on their own, {} packs and {} pages are in use",
        human(report.bytes_freed),
        report.chunks_deleted,
        report.packs_deleted,
        report.packs_split,
        report.pages_deleted,
        report.roots_deleted,
        report.volumes,
        report.chunks_kept,
        report.packs_kept,
        report.pages_kept
    );
    Ok(())
}

/// The new password of `volume rekey`: from the file, else the
/// environment.
fn new_password(file: Option<&std::path::Path>) -> anyhow::Result<Password> {
    if let Some(file) = file {
        return Ok(Password::from_file(file)?);
    }
    let text = std::env::var("ZEROBLK_NEW_PASSWORD").map_err(|_| {
        anyhow::anyhow!(
            "give the new password with --new-password-file FILE or ZEROBLK_NEW_PASSWORD"
        )
    })?;
    Ok(Password::new(text)?)
}

fn print_list(volumes: &[VolumeInfo], locked: &[String]) {
    if volumes.is_empty() && locked.is_empty() {
        outln!("no volumes; create one with `zeroblk volume create NAME --size 100G`");
        return;
    }
    outln!(
        "{:<24} {:>10} {:>8} {:>12} {:>12} {:>10}",
        "NAME",
        "SIZE",
        "CHUNK",
        "ALLOCATED",
        "STORED",
        "GENERATION"
    );
    for v in volumes {
        outln!(
            "{:<24} {:>10} {:>8} {:>12} {:>12} {:>10}",
            v.name,
            ByteSize(v.size).to_string(),
            ByteSize(v.chunk_size).to_string(),
            human(v.allocated_bytes),
            human(v.stored_bytes),
            v.generation
        );
    }
    for name in locked {
        outln!("{name:<24} (encrypted: give its password to see more)");
    }
}

fn print_info(v: &VolumeInfo) {
    let committed = UNIX_EPOCH + Duration::from_millis(v.committed_at_ms);
    outln!("name:        {}", v.name);
    outln!("uuid:        {}", v.uuid);
    outln!("size:        {} ({} bytes)", ByteSize(v.size), v.size);
    outln!("chunk size:  {}", ByteSize(v.chunk_size));
    outln!("compression: {}", v.compression);
    outln!(
        "encryption:  {}",
        v.encryption
            .as_deref()
            .unwrap_or("none (stored in the clear)")
    );
    outln!("format:      version {}", v.format_version);
    outln!(
        "generation:  {} (committed {})",
        v.generation,
        humantime::format_rfc3339_seconds(committed)
    );
    outln!(
        "allocated:   {} ({} bytes)",
        human(v.allocated_bytes),
        v.allocated_bytes
    );
    outln!(
        "stored:      {} ({} bytes)",
        human(v.stored_bytes),
        v.stored_bytes
    );
}
