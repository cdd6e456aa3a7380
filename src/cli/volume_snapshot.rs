//! `zeroblk volume snapshot ...`: snapshots of whole volumes, and the way
//! every command that pins one reaches a volume attached on this host.
//!
//! A volume attached here is snapshotted by its daemon, which commits
//! first, so the snapshot holds every write acknowledged before it was
//! asked for. When the daemon mounted a filesystem on the device, that
//! filesystem is written out and frozen (FIFREEZE) around the snapshot,
//! so the snapshot holds it clean, as of one moment. A volume attached
//! nowhere, or elsewhere, is snapshotted at its newest commit.

use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use clap::Subcommand;

use super::retention::RetentionArgs;
use super::settings::Settings;
use crate::attach::registry;
use crate::control;
use crate::engine::{self, SnapshotInfo};
use crate::provision::freeze;
use crate::size::human;
use crate::store::Store;

#[derive(Debug, Subcommand)]
pub enum VolumeSnapshotCommand {
    /// Pin the volume's current state as a snapshot (committing it first
    /// through its daemon, if attached here); prints the snapshot's name
    Create {
        name: String,
        /// The snapshot's name (default: the time, YYYY-MM-DDTHHMMSSZ)
        #[arg(long = "name", value_name = "LABEL")]
        label: Option<String>,
    },
    /// List a volume's snapshots, oldest first, with the bytes only each holds
    List {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Delete a snapshot (gc frees what only it held; clones keep theirs)
    Delete { name: String, snapshot: String },
    /// Delete the snapshots a retention policy does not keep
    Prune {
        name: String,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Say what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
    },
}

pub async fn run(
    command: VolumeSnapshotCommand,
    store: &Store,
    settings: &Settings,
) -> anyhow::Result<()> {
    let password = || settings.password().cloned();
    match command {
        VolumeSnapshotCommand::Create { name, label } => {
            let taken = take(store, settings, &name, label.as_deref()).await?;
            outln!("{taken}");
        }
        VolumeSnapshotCommand::List { name, json } => {
            let snapshots = engine::list_snapshots_with_usage(store, &name, password()).await?;
            match json {
                true => outln!("{}", serde_json::to_string_pretty(&snapshots)?),
                false => print_list(&name, &snapshots),
            }
        }
        VolumeSnapshotCommand::Delete { name, snapshot } => {
            engine::delete_snapshot(store, &name, &snapshot).await?;
            outln!("deleted snapshot {name}@{snapshot}; `zeroblk gc` frees what only it held");
        }
        VolumeSnapshotCommand::Prune {
            name,
            retention,
            dry_run,
        } => {
            let retention = retention.policy()?;
            let doomed =
                engine::prune_snapshots(store, &name, &retention, dry_run, password()).await?;
            let verb = if dry_run { "would delete" } else { "deleted" };
            for snapshot in &doomed {
                outln!("{verb} {name}@{snapshot}");
            }
            if doomed.is_empty() {
                outln!("nothing to prune: the policy keeps every snapshot of {name}");
            }
        }
    }
    Ok(())
}

/// Pins a snapshot of volume `name`, named `label` or after the time:
/// through its daemon when it is attached on this host (freezing its
/// mounted filesystem meanwhile), else at its newest commit. Returns the
/// snapshot's name.
pub async fn take(
    store: &Store,
    settings: &Settings,
    name: &str,
    label: Option<&str>,
) -> anyhow::Result<String> {
    let Some(record) = attached_here(store, name)? else {
        warn_of_writer(store, name).await?;
        let taken =
            engine::create_snapshot(store, name, label, settings.password().cloned()).await?;
        return Ok(taken.name().to_string());
    };
    take_attached(&record, label).await
}

/// Pins a snapshot of the volume `record` says is attached here, through
/// its daemon, freezing its mounted filesystem meanwhile.
pub async fn take_attached(
    record: &registry::AttachRecord,
    label: Option<&str>,
) -> anyhow::Result<String> {
    let socket = &record.control_socket;
    let name = &record.name;
    let daemon_failed = |why: String| anyhow::anyhow!("volume {name}'s daemon: {why}");
    let Some(mount_point) = &record.mount_point else {
        return control::request_snapshot(socket, label)
            .await
            .map_err(daemon_failed);
    };
    // Most of the work before the freeze, so the filesystem waits little.
    freeze::sync(mount_point)?;
    control::request_commit(socket)
        .await
        .map_err(daemon_failed)?;
    // While frozen, SIGINT and SIGTERM wait: the filesystem must thaw.
    let _held = hold_signals()?;
    let frozen = freeze::freeze(mount_point)?;
    let taken = control::request_snapshot(socket, label).await;
    frozen.thaw()?;
    taken.map_err(daemon_failed)
}

/// Commits volume `name` through its daemon if it is attached on this
/// host, so that what reads its newest root sees every write acknowledged
/// so far; else, if a writer holds it (`zeroblk serve`, another host),
/// warns that its newest root is its last commit.
pub async fn commit_or_warn(store: &Store, name: &str) -> anyhow::Result<()> {
    match attached_here(store, name)? {
        Some(record) => control::request_commit(&record.control_socket)
            .await
            .map_err(|why| anyhow::anyhow!("volume {name}'s daemon: {why}")),
        None => warn_of_writer(store, name).await,
    }
}

/// Warns when a writer not attached here holds volume `name`, or died
/// here leaving flushed writes in its log: what the store holds of it is
/// its last commit.
async fn warn_of_writer(store: &Store, name: &str) -> anyhow::Result<()> {
    if let Some(writer) = engine::writer_of(store, name).await? {
        tracing::warn!(
            "volume {name} is written by {writer} (`zeroblk serve`, or an attach on another host): this holds its last commit, not what it wrote since; to include that, stop or detach the writer first, or attach the volume here, whose daemon commits on request"
        );
    } else if let Some(log) = engine::dead_writers_log(store, name).await? {
        tracing::warn!(
            "volume {name}'s last writer died without detaching: writes it acknowledged may be only in its write-back log ({log}), not in the store; this holds the last commit; to include them, attach or serve the volume from that log's cache dir first (it replays them), then detach or stop it"
        );
    }
    Ok(())
}

/// The record of volume `name` if a live daemon attached it on this host,
/// from `store`.
pub(super) fn attached_here(
    store: &Store,
    name: &str,
) -> anyhow::Result<Option<registry::AttachRecord>> {
    let found = registry::find(&registry::runtime_dir(), name)?;
    Ok(found.filter(|record| {
        record.name == name
            && !record.access.is_read_only()
            && record.store == store.url()
            && record.daemon_alive()
    }))
}

/// Keeps SIGINT and SIGTERM from killing this process from now on (tokio
/// never gives a signal back): they arrive, and nobody reads them.
fn hold_signals() -> anyhow::Result<[tokio::signal::unix::Signal; 2]> {
    use tokio::signal::unix::{SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).context("holding SIGINT")?;
    let terminate = signal(SignalKind::terminate()).context("holding SIGTERM")?;
    Ok([interrupt, terminate])
}

fn print_list(name: &str, snapshots: &[SnapshotInfo]) {
    if snapshots.is_empty() {
        outln!(
            "volume {name} has no snapshots; take one with `zeroblk volume snapshot create {name}`"
        );
        return;
    }
    outln!(
        "{:<32} {:>10} {:<20} {:>12} {:>12}",
        "SNAPSHOT",
        "GENERATION",
        "TAKEN",
        "STORED",
        "ONLY HERE"
    );
    for snapshot in snapshots {
        let taken = UNIX_EPOCH + Duration::from_millis(snapshot.taken_at_ms());
        outln!(
            "{:<32} {:>10} {:<20} {:>12} {:>12}",
            snapshot.name(),
            snapshot.generation(),
            humantime::format_rfc3339_seconds(taken).to_string(),
            human(snapshot.stored_bytes()),
            snapshot.exclusive_bytes().map(human).unwrap_or_default()
        );
    }
}
