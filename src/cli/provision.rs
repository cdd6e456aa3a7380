//! `zeroblk snapshot`, `zeroblk quota`, and the hook the attach daemon
//! runs to provision its device.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use chrono::Utc;

use super::retention::RetentionArgs;
use crate::attach::registry;
use crate::provision::foreign::{self, CheckedSnapshot, ForeignSnapshot};
use crate::provision::snapshot::{self, Snapshot};
use crate::provision::{self, Lifted, Provision, SNAPSHOTS_DIR, pushed, quota};
use crate::retention::{self as prune, Retention};
use crate::size::ByteSize;

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Snapshot a subvolume into @snapshots (read-only unless --writable)
    Create {
        /// The attached volume's name, or its mount point
        target: String,
        /// The subvolume to snapshot
        #[arg(long, default_value = "@")]
        subvolume: String,
        /// A label added to the snapshot's timestamped name
        #[arg(long = "name", value_name = "LABEL")]
        label: Option<String>,
        #[arg(long)]
        writable: bool,
        /// Also pin a snapshot of the whole volume, with the filesystem
        /// frozen meanwhile, so the btrfs snapshot lives outside the
        /// volume's log too (named like the btrfs snapshot, `@` left out)
        #[arg(long)]
        volume_snapshot: bool,
    },
    /// List snapshots (of every attached volume unless one is named)
    List {
        target: Option<String>,
        /// Also the snapshots zeroblk did not name (snapper's, a cron
        /// script's): every read-only subvolume of the filesystem, by path
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots: zeroblk's by name, others by path (absolute, or
    /// from the top of the filesystem), as `snapshot list --all` shows them
    Delete {
        target: String,
        #[arg(required = true)]
        snapshots: Vec<String>,
        /// Delete a snapshot the next backup push sends from too (that
        /// push then sends a full stream)
        #[arg(long)]
        force: bool,
    },
    /// Put a snapshot back in place of its subvolume; the current state is
    /// kept as a read-only "pre-rollback" snapshot first
    Rollback { target: String, snapshot: String },
    /// Delete the snapshots a retention policy does not keep (each
    /// subvolume on its own); safe to run from cron or a timer
    Prune {
        /// The volume or mount point (every attached volume if left out)
        target: Option<String>,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Say what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Delete snapshots the next backup push sends from too (that push
        /// then sends a full stream)
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum QuotaCommand {
    /// Limit what a subvolume may refer to (btrfs qgroups); "none" lifts it
    Set {
        target: String,
        #[arg(long, default_value = "@")]
        subvolume: String,
        /// A size such as 50G, or none
        limit: String,
    },
    /// Each subvolume's usage and limit
    Show {
        target: String,
        #[arg(long)]
        json: bool,
    },
}

/// The daemon's provisioning steps, run in the host's mount namespace.
#[derive(Debug, clap::Subcommand)]
pub enum HookCommand {
    Up {
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        label: String,
        #[arg(long)]
        spec: String,
        /// The nosuid and nodev this host lifts (not in the spec, which
        /// is what the volume remembers)
        #[arg(long, default_value = "")]
        lift: Lifted,
    },
    Down {
        #[arg(long)]
        device: PathBuf,
        #[arg(long)]
        spec: Option<String>,
    },
    /// Grow the filesystem to its device's new size
    Grow {
        #[arg(long)]
        mount_point: PathBuf,
    },
}

pub fn hook(command: HookCommand) -> anyhow::Result<()> {
    let parse = |spec: &str| -> anyhow::Result<Provision> {
        serde_json::from_str(spec).context("the provisioning spec is not valid")
    };
    match command {
        HookCommand::Up {
            device,
            label,
            spec,
            lift,
        } => {
            let provision = Provision {
                lifted: lift,
                ..parse(&spec)?
            };
            provision::up(&device, &label, &provision)?
        }
        HookCommand::Down { device, spec } => {
            let provision = spec.as_deref().map(parse).transpose()?;
            provision::down(&device, provision.as_ref())?;
        }
        HookCommand::Grow { mount_point } => provision::grow_filesystem(&mount_point)?,
    }
    Ok(())
}

/// The mount point `target` names: a path, or an attached volume.
pub(super) fn mount_point(target: &str) -> anyhow::Result<PathBuf> {
    if target.contains('/') {
        let path = PathBuf::from(target);
        anyhow::ensure!(path.is_dir(), "{target} is not a directory");
        return Ok(path);
    }
    let record = registry::find(&registry::runtime_dir(), target)?.with_context(|| {
        format!("volume {target} is not attached here: attach it first, or name its mount point")
    })?;
    record.mount_point.with_context(|| {
        format!("volume {target} is attached without a filesystem: attach it with --mount-point DIR to provision btrfs")
    })
}

/// The volume attached here whose filesystem is mounted at `mount`.
fn attached_at(mount: &Path) -> anyhow::Result<registry::AttachRecord> {
    let records = registry::list(&registry::runtime_dir())?;
    records
        .into_iter()
        .find(|r| r.mount_point.as_deref() == Some(mount) && r.daemon_alive())
        .with_context(|| {
            format!(
                "no volume attached here is mounted at {}: --volume-snapshot needs the volume's daemon",
                mount.display()
            )
        })
}

/// The volume snapshot beside btrfs snapshot `btrfs_name`: the same name
/// without the subvolume's `@` (`@home.T.L` -> `home.T.L`, `@.T` ->
/// `root.T`), since `@` separates a volume from its snapshot.
fn volume_snapshot_name(btrfs_name: &str) -> String {
    match btrfs_name.strip_prefix('@') {
        Some(rest) if rest.starts_with('.') => format!("root{rest}"),
        Some(rest) => rest.to_string(),
        None => btrfs_name.to_string(),
    }
    .replace('@', "-")
}

/// The mount points of every attached, provisioned volume, by name.
fn all_mount_points() -> anyhow::Result<Vec<(String, PathBuf)>> {
    Ok(registry::list(&registry::runtime_dir())?
        .into_iter()
        .filter_map(|record| Some((record.name, record.mount_point?)))
        .collect())
}

fn targets(target: Option<String>) -> anyhow::Result<Vec<(String, PathBuf)>> {
    match target {
        Some(target) => Ok(vec![(target.clone(), mount_point(&target)?)]),
        None => all_mount_points(),
    }
}

pub async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create {
            target,
            subvolume,
            label,
            writable,
            volume_snapshot,
        } => {
            let mount = mount_point(&target)?;
            let taken =
                snapshot::create(&mount, &subvolume, label.as_deref(), writable, Utc::now())?;
            outln!("{}", taken.path.display());
            if volume_snapshot {
                let record = attached_at(&mount)?;
                let label = volume_snapshot_name(&taken.name);
                let pinned = super::volume_snapshot::take_attached(&record, Some(&label)).await?;
                outln!("{}@{pinned}", record.name);
            }
        }
        SnapshotCommand::List { target, all, json } => list_snapshots(targets(target)?, all, json)?,
        SnapshotCommand::Delete {
            target,
            snapshots,
            force,
        } => delete_snapshots(&mount_point(&target)?, &snapshots, force)?,
        SnapshotCommand::Rollback { target, snapshot } => {
            let mount = mount_point(&target)?;
            let kept = snapshot::rollback(&mount, &snapshot, Utc::now())?;
            outln!(
                "rolled {} back to {snapshot}; what it held is kept as {}",
                kept.subvolume,
                kept.name
            );
        }
        SnapshotCommand::Prune {
            target,
            retention,
            dry_run,
            force,
        } => {
            let retention = retention.policy()?;
            for (_, mount) in targets(target)? {
                prune_snapshots(&mount, &retention, dry_run, force)?;
            }
        }
    }
    Ok(())
}

/// A snapshot `snapshot delete` was given: one of zeroblk's, by name,
/// or another, by path (checked by [`foreign::resolve`]).
enum ToDelete {
    Named(String),
    Foreign(CheckedSnapshot),
}

impl ToDelete {
    /// What `given` names in the filesystem mounted at `mount`: a
    /// zeroblk snapshot name, else a path.
    fn find(mount: &Path, given: &str) -> anyhow::Result<ToDelete> {
        if !given.contains('/') && snapshot::parse_name(given).is_some() {
            return Ok(ToDelete::Named(given.to_string()));
        }
        Ok(ToDelete::Foreign(foreign::resolve(
            mount,
            Path::new(given),
        )?))
    }

    /// Its name in `@snapshots`, where the backup records name parents.
    fn name_in_snapshots(&self) -> Option<String> {
        match self {
            ToDelete::Named(name) => Some(name.clone()),
            ToDelete::Foreign(checked) => {
                let path = checked.path_from_top();
                (path.parent() == Some(Path::new(SNAPSHOTS_DIR)))
                    .then(|| path.file_name()?.to_str().map(str::to_string))
                    .flatten()
            }
        }
    }

    fn delete(&self, mount: &Path) -> anyhow::Result<()> {
        match self {
            ToDelete::Named(name) => snapshot::delete(mount, name)?,
            ToDelete::Foreign(checked) => foreign::delete(checked)?,
        }
        Ok(())
    }
}

fn delete_snapshots(mount: &Path, given: &[String], force: bool) -> anyhow::Result<()> {
    // Refuse before deleting any.
    let mut found = Vec::new();
    for given in given {
        let to_delete = ToDelete::find(mount, given)?;
        if let Some(name) = to_delete.name_in_snapshots().filter(|_| !force) {
            let parent_for = pushed::parent_for(mount, &name)?;
            anyhow::ensure!(
                parent_for.is_empty(),
                "{given} is the parent of the next backup push to {}: deleting it makes that push send a full stream; --force deletes it anyway",
                parent_for.join(", ")
            );
        }
        found.push((given, to_delete));
    }
    for (given, to_delete) in found {
        to_delete.delete(mount)?;
        let full = match to_delete.name_in_snapshots() {
            Some(name) => forget_parent(mount, &name)?,
            None => String::new(),
        };
        outln!("deleted {given}{full}");
    }
    Ok(())
}

/// One volume's snapshots as `snapshot list` shows them: zeroblk's, then
/// (with `--all`) the others.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Listed {
    Named(Snapshot),
    Foreign(ForeignSnapshot),
}

fn list_snapshots(targets: Vec<(String, PathBuf)>, all: bool, json: bool) -> anyhow::Result<()> {
    let mut listed: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for (name, mount) in targets {
        let mut snapshots: Vec<Listed> = snapshot::list(&mount)?
            .into_iter()
            .map(Listed::Named)
            .collect();
        if all {
            snapshots.extend(foreign::list(&mount)?.into_iter().map(Listed::Foreign));
        }
        listed.insert(name, snapshots);
    }
    if json {
        outln!("{}", serde_json::to_string_pretty(&listed)?);
        return Ok(());
    }
    if listed.is_empty() {
        outln!(
            "no provisioned volume is attached here: name a mount point, or attach one with `zeroblk attach NAME --mount-point DIR`"
        );
        return Ok(());
    }
    outln!(
        "{:<16} {:<48} {:<12} {:<20} {:<4} LABEL",
        "VOLUME",
        "SNAPSHOT",
        "SUBVOLUME",
        "CREATED (UTC)",
        "RO"
    );
    for (volume, snapshots) in listed {
        for listed in snapshots {
            let time = |t: Option<chrono::DateTime<Utc>>| {
                t.map_or_else(|| "-".into(), |t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            };
            let (name, subvolume, created, read_only, label) = match &listed {
                Listed::Named(s) => (
                    s.name.clone(),
                    s.subvolume.as_str(),
                    time(Some(s.created)),
                    s.read_only,
                    s.label.as_deref().unwrap_or("-"),
                ),
                // A path, and a label no zeroblk snapshot can have.
                Listed::Foreign(s) => (
                    s.path.display().to_string(),
                    s.subvolume.as_deref().unwrap_or("-"),
                    time(s.created),
                    s.read_only,
                    "(not zeroblk's)",
                ),
            };
            outln!(
                "{:<16} {:<48} {:<12} {:<20} {:<4} {}",
                volume,
                name,
                subvolume,
                created,
                if read_only { "yes" } else { "no" },
                label
            );
        }
    }
    Ok(())
}

/// Forgets deleted snapshot `name` as a backup's parent; what to add to
/// the line that says it is deleted (which push now sends a full stream).
fn forget_parent(mount: &Path, name: &str) -> anyhow::Result<String> {
    let forgotten = pushed::forget(mount, name)?;
    Ok(if forgotten.is_empty() {
        String::new()
    } else {
        format!(
            " (the next backup push to {} sends a full stream)",
            forgotten.join(", ")
        )
    })
}

fn prune_snapshots(
    mount: &Path,
    retention: &Retention,
    dry_run: bool,
    force: bool,
) -> anyhow::Result<()> {
    let mut by_subvolume: BTreeMap<String, Vec<Snapshot>> = BTreeMap::new();
    for s in snapshot::list(mount)? {
        by_subvolume.entry(s.subvolume.clone()).or_default().push(s);
    }
    for snapshots in by_subvolume.values() {
        let times: Vec<_> = snapshots.iter().map(|s| s.created).collect();
        let kept = prune::keep(&times, retention);
        for (index, s) in snapshots.iter().enumerate() {
            if kept.contains(&index) {
                outln!("keep   {}", s.name);
                continue;
            }
            let parent_for = pushed::parent_for(mount, &s.name)?;
            if !force && !parent_for.is_empty() {
                outln!(
                    "keep   {} (the parent of the next backup push to {}; --force deletes it)",
                    s.name,
                    parent_for.join(", ")
                );
            } else if dry_run {
                outln!("delete {} (dry run)", s.name);
            } else {
                match snapshot::delete(mount, &s.name) {
                    Ok(()) => {
                        let full = forget_parent(mount, &s.name)?;
                        outln!("delete {}{full}", s.name);
                    }
                    // Another prune got there first.
                    Err(_) if !s.path.exists() => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }
    Ok(())
}

pub fn quota(command: QuotaCommand) -> anyhow::Result<()> {
    match command {
        QuotaCommand::Set {
            target,
            subvolume,
            limit,
        } => {
            let mount = mount_point(&target)?;
            let bytes = match limit.as_str() {
                "none" => None,
                size => Some(
                    size.parse::<ByteSize>()
                        .map_err(anyhow::Error::msg)?
                        .bytes(),
                ),
            };
            quota::set(&mount, &subvolume, bytes)?;
            outln!("{subvolume} of {target}: limit {limit}");
        }
        QuotaCommand::Show { target, json } => {
            let rows = quota::show(&mount_point(&target)?)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&rows)?);
            } else if rows.is_empty() {
                outln!(
                    "quotas are off: `zeroblk quota set {target} --subvolume @home 50G` turns them on"
                );
            } else {
                outln!(
                    "{:<32} {:>10} {:>10} {:>10}",
                    "SUBVOLUME",
                    "REFERENCED",
                    "EXCLUSIVE",
                    "LIMIT"
                );
                for row in rows {
                    outln!(
                        "{:<32} {:>10} {:>10} {:>10}",
                        row.subvolume,
                        ByteSize(row.referenced).to_string(),
                        ByteSize(row.exclusive).to_string(),
                        row.limit
                            .map_or_else(|| "none".to_string(), |l| ByteSize(l).to_string())
                    );
                }
            }
        }
    }
    Ok(())
}
