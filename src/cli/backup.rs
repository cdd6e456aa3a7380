//! `zeroblk backup`: push btrfs snapshots to a store as incremental send
//! chains, list, verify, restore and prune them (`crate::backup`).
//!
//! The destination URL is opened as the main store is: the same `AWS_*`
//! credentials and region, endpoint and `--store-timeout`.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::progress::ByteBar;
use super::retention::RetentionArgs;
use super::settings::Settings;
use crate::attach::registry;
use crate::backup::{self, Destination, Opener, PushReport, PushRequest, Which};
use crate::crypto::{AgeIdentities, AgeRecipients};
use crate::size::{ByteSize, human};
use crate::store::Store;

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Send a read-only snapshot of a subvolume to a store: against the
    /// newest snapshot of the chain still here (btrfs send -p), or full
    Push(PushArgs),
    /// The chains in a store: snapshots, parents and sizes
    List {
        /// The store of backups (file:///PATH, s3://BUCKET/PREFIX, ...)
        url: String,
        #[arg(long)]
        json: bool,
    },
    /// Fetch, hash and decrypt every chunk a snapshot's chain needs (every
    /// snapshot's without --snapshot), receiving nothing
    Verify {
        url: String,
        /// The snapshot whose chain to check, by its name in `backup list`
        #[arg(long, value_name = "SNAP")]
        snapshot: Option<String>,
        /// The age identity file of encrypted backups
        #[arg(long, value_name = "FILE")]
        age_identity: Option<PathBuf>,
        /// Draw no progress bar
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Receive a snapshot's chain, from its full stream, into a directory
    /// on btrfs (created if missing)
    Restore {
        url: String,
        /// The snapshot, by its name in `backup list`
        #[arg(long, value_name = "SNAP")]
        snapshot: String,
        /// A directory on a btrfs filesystem
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[arg(long, value_name = "FILE")]
        age_identity: Option<PathBuf>,
        /// Draw no progress bar
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Delete the snapshots a retention policy does not keep, never one a
    /// kept snapshot needs as a parent
    Prune {
        url: String,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Say what would be deleted, delete nothing
        #[arg(long)]
        dry_run: bool,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The attached volume's name, or the mount point of its filesystem
    target: String,
    /// The subvolume to back up
    #[arg(long, default_value = "@")]
    subvolume: String,
    /// The store to push to (file:///PATH, s3://BUCKET/PREFIX, gs://, az://)
    #[arg(long, value_name = "URL")]
    to: String,
    /// Push this read-only snapshot (its name in @snapshots, or `newest`)
    /// instead of taking one
    #[arg(long, value_name = "SNAP")]
    snapshot: Option<String>,
    /// Encrypt to this age recipient (age1...), or to those of a
    /// recipients file; repeatable
    #[arg(long = "age-recipient", value_name = "KEY")]
    age_recipients: Vec<String>,
    /// Start a new chain with a full stream once the current one holds N
    /// snapshots (old chains can then be pruned whole)
    #[arg(long, value_name = "N")]
    full_every: Option<u32>,
    /// Say what would be sent (full or incremental, the parent, an
    /// estimate of its size); touch nothing
    #[arg(long)]
    dry_run: bool,
    /// The storage class of data objects (S3: STANDARD_IA, GLACIER_IR, ...)
    #[arg(long, value_name = "CLASS")]
    storage_class: Option<String>,
    /// The size of the stream's chunks
    #[arg(long, value_name = "SIZE", default_value = "32M")]
    chunk_size: ByteSize,
    /// Draw no progress bar
    #[arg(long, short)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(command: BackupCommand, settings: &Settings) -> anyhow::Result<()> {
    match command {
        BackupCommand::Push(args) => push(args, settings).await,
        BackupCommand::List { url, json } => {
            let listing = backup::list(&destination(&url, settings)?).await?;
            match json {
                true => outln!("{}", serde_json::to_string_pretty(&listing)?),
                false => print_listing(&listing),
            }
            Ok(())
        }
        BackupCommand::Verify {
            url,
            snapshot,
            age_identity,
            quiet,
            json,
        } => {
            let bar = ByteBar::new(!json && !quiet);
            let opener = opener(age_identity.as_deref())?;
            let verified = backup::verify(
                &destination(&url, settings)?,
                snapshot.as_deref(),
                opener,
                &bar,
            )
            .await;
            bar.clear();
            let report = verified?;
            match json {
                true => outln!("{}", serde_json::to_string_pretty(&report)?),
                false => {
                    for bad in report.bad() {
                        outln!("bad {}: {}", bad.key(), bad.problem());
                    }
                    if report.bad().is_empty() {
                        outln!(
                            "verified {} snapshots: {} objects, {} of send stream, every chunk matching its hash and opening",
                            report.snapshots(),
                            report.objects(),
                            human(report.stream_bytes())
                        );
                    }
                }
            }
            anyhow::ensure!(
                report.bad().is_empty(),
                "{} of {} objects the backups need are bad or missing: restore them from another copy, or push again (a new full stream with --full-every 1)",
                report.bad().len(),
                report.objects()
            );
            Ok(())
        }
        BackupCommand::Restore {
            url,
            snapshot,
            to,
            age_identity,
            quiet,
            json,
        } => {
            let bar = ByteBar::new(!json && !quiet);
            let opener = opener(age_identity.as_deref())?;
            let restored =
                backup::restore(&destination(&url, settings)?, &snapshot, &to, opener, &bar).await;
            bar.clear();
            let report = restored?;
            match json {
                true => outln!("{}", serde_json::to_string_pretty(&report)?),
                false => {
                    let there = match report.already_there() {
                        [] => String::new(),
                        names => format!("; {} was there already", names.join(", ")),
                    };
                    outln!(
                        "restored {snapshot} into {} ({} of send stream received: {}{there})",
                        report.path().display(),
                        human(report.stream_bytes()),
                        report.received().join(", ")
                    );
                }
            }
            Ok(())
        }
        BackupCommand::Prune {
            url,
            retention,
            dry_run,
            json,
        } => {
            let policy = retention.policy()?;
            let reports = backup::prune(&destination(&url, settings)?, &policy, dry_run).await?;
            match json {
                true => outln!("{}", serde_json::to_string_pretty(&reports)?),
                false => print_prune(&reports, dry_run),
            }
            Ok(())
        }
    }
}

async fn push(args: PushArgs, settings: &Settings) -> anyhow::Result<()> {
    let (volume, mount) = source(&args.target)?;
    let recipients = match args.age_recipients.is_empty() {
        true => None,
        false => Some(AgeRecipients::parse(&args.age_recipients)?),
    };
    let which = match args.snapshot.as_deref() {
        None => Which::Take,
        Some("newest") => Which::Newest,
        Some(name) => Which::Named(name.to_string()),
    };
    let destination = destination(&args.to, settings)?;
    if args.storage_class.is_some() && args.to.starts_with("file:") {
        anyhow::bail!(
            "--storage-class needs an S3, GCS or Azure store: a local directory has no storage classes"
        );
    }
    let request = PushRequest::new(
        &volume,
        &args.subvolume,
        &mount,
        &settings.cache_dir.join("backups"),
    )?
    .snapshot(which)
    .recipients(recipients)
    .full_every(args.full_every)?
    .dry_run(args.dry_run)
    .storage_class(args.storage_class)
    .chunk_size(args.chunk_size.bytes())?;
    let bar = ByteBar::new(!args.json && !args.quiet && !args.dry_run);
    let pushed = backup::push(&destination, &request, &bar).await;
    bar.clear();
    let report = match pushed {
        Ok(report) => report,
        Err(error) if error.is_interruption() => {
            let url = destination.url();
            let stopped = format!(
                "the push of {volume} {} to {url} stopped; run it again: it resumes, without sending again what is stored",
                args.subvolume
            );
            return Err(anyhow::Error::new(error).context(stopped));
        }
        Err(error) => return Err(error.into()),
    };
    match args.json {
        true => outln!("{}", serde_json::to_string_pretty(&report)?),
        false => print_push(&report),
    }
    Ok(())
}

/// The volume name and mount point `target` names: an attached volume's
/// name, or a mount point (named after the volume attached there, or
/// else after its last component).
fn source(target: &str) -> anyhow::Result<(String, PathBuf)> {
    let mount = super::provision::mount_point(target)?;
    if !target.contains('/') {
        return Ok((target.to_string(), mount));
    }
    let attached = registry::list(&registry::runtime_dir())
        .unwrap_or_default()
        .into_iter()
        .find(|r| r.mount_point.as_deref() == Some(mount.as_path()));
    let name = match attached {
        Some(record) => record.name,
        None => mount
            .file_name()
            .and_then(|n| n.to_str())
            .map(str::to_string)
            .with_context(|| format!("{target} names no volume: give the volume's name"))?,
    };
    Ok((name, mount))
}

fn destination(url: &str, settings: &Settings) -> anyhow::Result<Destination> {
    Ok(Destination::new(Store::open(url, &settings.store_options)?))
}

fn opener(identity: Option<&Path>) -> anyhow::Result<Opener> {
    let identities = identity.map(AgeIdentities::from_file).transpose()?;
    Ok(Opener::new(identities))
}

fn print_push(report: &PushReport) {
    let (volume, subvolume) = report.lineage();
    let how = match (report.parent(), report.full_reason()) {
        (Some(parent), _) => format!("incremental against {parent}"),
        (None, Some(reason)) => format!("a full stream, as {reason}"),
        (None, None) => "a full stream".to_string(),
    };
    let to = report.destination();
    if report.already_pushed() {
        let name = report.snapshot().unwrap_or_default();
        outln!("{name} is in {to} already: nothing to push");
        return;
    }
    if report.dry_run() {
        let what = match report.snapshot() {
            Some(name) => name.to_string(),
            None => format!("a new snapshot of {subvolume}"),
        };
        let estimate = match report.estimate() {
            Some((bytes, None)) => format!("about {} to send", human(bytes)),
            Some((bytes, Some(from))) => format!(
                "about {} to send, as of {from} (the newest snapshot; what changed since is not counted)",
                human(bytes)
            ),
            None => "no estimate: no read-only snapshot of the subvolume newer than the parent is here to measure".to_string(),
        };
        outln!("would push {what} of {volume} to {to}: {how}; {estimate}");
        return;
    }
    let name = report.snapshot().unwrap_or_default();
    if report.taken() {
        outln!("took snapshot {name}");
    }
    let (chunks, reused) = report.chunks();
    let resumed = match (report.resumed(), reused) {
        (_, 0) if !report.resumed() => String::new(),
        (_, reused) => {
            format!(", resuming an interrupted push ({reused} chunks were stored already)")
        }
    };
    let encrypted = match report.encrypted() {
        true => ", encrypted",
        false => "",
    };
    outln!(
        "pushed {name} to {to}: {how}; {} of send stream stored as {} in {chunks} chunks{encrypted}, {} uploaded{resumed}",
        human(report.stream_bytes()),
        human(report.stored_bytes()),
        human(report.uploaded_bytes()),
    );
}

fn print_listing(listing: &backup::Listing) {
    for damaged in listing.damaged() {
        eprintln!(
            "zeroblk: warning: {} is damaged ({}); what it lists is left out: `zeroblk backup verify` names what is wrong",
            damaged.key(),
            damaged.problem()
        );
    }
    if listing.snapshots().is_empty() {
        outln!("no backups yet");
        return;
    }
    outln!(
        "{:<12} {:<10} {:<44} {:<44} {:<20} {:>10} {:>10} ENC",
        "VOLUME",
        "SUBVOLUME",
        "SNAPSHOT",
        "PARENT",
        "CREATED (UTC)",
        "STREAM",
        "STORED"
    );
    for s in listing.snapshots() {
        outln!(
            "{:<12} {:<10} {:<44} {:<44} {:<20} {:>10} {:>10} {}",
            s.volume(),
            s.subvolume(),
            s.name(),
            s.parent().unwrap_or("(full)"),
            s.created().format("%Y-%m-%d %H:%M:%S"),
            human(s.stream_bytes()),
            human(s.stored_bytes()),
            if s.encrypted() { "age" } else { "-" }
        );
    }
    for chain in listing.chains() {
        let (volume, subvolume) = chain.lineage();
        let sequences: Vec<String> = chain
            .sequences()
            .iter()
            .map(|s| {
                let current = if chain.head() == Some(s.name()) {
                    " (current)"
                } else {
                    ""
                };
                format!(
                    "{}{current}: {} snapshots, {}",
                    s.name(),
                    s.snapshots(),
                    human(s.stored_bytes())
                )
            })
            .collect();
        outln!("chains of {volume} {subvolume}: {}", sequences.join("; "));
    }
}

fn print_prune(reports: &[backup::LineagePrune], dry_run: bool) {
    let deleted = if dry_run { "would delete" } else { "delete" };
    for report in reports {
        let (volume, subvolume) = report.lineage();
        outln!("{volume} {subvolume}:");
        for (name, why) in report.kept() {
            outln!("  keep   {name} ({why})");
        }
        for name in report.deleted() {
            outln!("  {deleted} {name}");
        }
        if report.unfinished_deleted() > 0 {
            outln!(
                "  {deleted} {} objects of pushes that never completed (a day old or more)",
                report.unfinished_deleted()
            );
        }
    }
}
