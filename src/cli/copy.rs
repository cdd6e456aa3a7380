//! `zeroblk volume copy`: a snapshot to another store (`--to`), or back
//! from one (`--from`), by the same code (`engine::copy_volume`).
//!
//! The other store's URL is opened as the main store is: the same
//! credentials (`AWS_*`, `GOOGLE_*` or `AZURE_*`) and region, the same
//! endpoint (`--s3-endpoint`, `AWS_ENDPOINT_URL` or the config file's
//! `s3_endpoint`) and the same `--store-timeout`. The password
//! (`--password-file`, `ZEROBLK_PASSWORD` or the config file's) opens an
//! encrypted source, and the copy.

use super::progress::ByteBar;
use super::settings::Settings;
use crate::engine::{self, CopyProgress, CopyReport, CopyRequest, VolumeRef};
use crate::size::human;
use crate::store::Store;

/// Copy a snapshot to another store (--to), or back from one (--from)
///
/// Only the map pages and chunks that store lacks are copied, each checked
/// first; without @SNAP, a snapshot of the volume's newest committed state
/// is taken first. Run again after an interruption: it goes on where it
/// stopped.
#[derive(Debug, clap::Args)]
pub struct CopyArgs {
    /// The volume (a snapshot of it is taken first) or one of its snapshots
    #[arg(value_name = "SRC[@SNAP]")]
    source: VolumeRef,
    /// The volume's name where it is copied to [default: SRC]
    #[arg(value_name = "DST")]
    destination: Option<String>,
    /// The store to copy to (file:///PATH, s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX or az://CONTAINER/PREFIX), opened with the main
    /// store's credentials, region and endpoint
    #[arg(
        long,
        value_name = "URL",
        required_unless_present = "from",
        conflicts_with = "from"
    )]
    to: Option<String>,
    /// The store to copy from, into the main store (brings a copy back)
    #[arg(long, value_name = "URL")]
    from: Option<String>,
    /// Show what would be copied (objects and bytes, and how many are
    /// there already); write nothing, take no snapshot
    #[arg(long)]
    dry_run: bool,
    /// Draw no progress bar
    #[arg(long, short)]
    quiet: bool,
    #[arg(long)]
    json: bool,
}

pub async fn run(args: CopyArgs, settings: &Settings) -> anyhow::Result<()> {
    let main = settings.open_store()?;
    let (from, to) = match (&args.to, &args.from) {
        (Some(url), None) => (main, other_store(url, settings)?),
        (None, Some(url)) => (other_store(url, settings)?, main),
        _ => anyhow::bail!("give the other store with --to URL or --from URL"),
    };
    if args.source.snapshot().is_none() && !args.dry_run {
        super::volume_snapshot::commit_or_warn(&from, args.source.name()).await?;
    }
    let request = CopyRequest::new(args.source, args.destination.as_deref())?
        .with_password(settings.password().cloned())
        .with_dry_run(args.dry_run);
    let watch = Watch::new(!args.dry_run && !args.quiet, args.json);
    let copied = engine::copy_volume(&from, &to, &request, &watch).await;
    watch.clear();
    let report = match (copied, watch.taken()) {
        (Ok(report), _) => report,
        (Err(error), None) => return Err(error.into()),
        (Err(error), Some(snapshot)) => {
            let other = match (&args.to, &args.from) {
                (Some(url), _) => format!("--to {url}"),
                (_, url) => format!("--from {}", url.as_deref().unwrap_or_default()),
            };
            let dest = args.destination.as_deref().unwrap_or_default();
            return Err(anyhow::Error::new(error).context(format!(
                "the copy of {snapshot} stopped; `zeroblk volume copy {snapshot} {other} {dest}` goes on where it stopped"
            )));
        }
    };
    match args.json {
        true => outln!("{}", serde_json::to_string_pretty(&report)?),
        false => print(&report),
    }
    Ok(())
}

/// The store `url` names, opened as the main store is; refused when it is
/// the main store itself.
fn other_store(url: &str, settings: &Settings) -> anyhow::Result<Store> {
    let bare = |url: &str| url.trim_end_matches('/').to_string();
    anyhow::ensure!(
        bare(url) != bare(&settings.store_url) || url.starts_with("memory:"),
        "{url} is the store the volume is in: a copy goes to another store (within one store, clone the snapshot: `zeroblk volume clone SRC@SNAP NEW`)"
    );
    Ok(Store::open(url, &settings.store_options)?)
}

fn print(report: &CopyReport) {
    let copied = report.copied();
    let there = report.already_there();
    if report.dry_run() {
        let total = copied.total();
        outln!(
            "would copy {} to {} as {}: {} objects ({}): {} map pages, {} packs, {} chunks; {} objects ({}) already there",
            report.source(),
            report.store(),
            report.destination(),
            total.objects(),
            human(total.bytes()),
            copied.pages().objects(),
            copied.packs().objects(),
            copied.chunks().objects(),
            there.objects(),
            human(there.bytes()),
        );
        if report.snapshot().is_none() {
            outln!("(a copy takes a snapshot of that state first, and copies that)");
        }
        return;
    }
    let total = copied.total();
    let again = report.copied_again();
    let state = match report.up_to_date() {
        true => "which already read as it".to_string(),
        false => format!("generation {}", report.generation().unwrap_or_default()),
    };
    outln!(
        "copied {} to {} as {} ({state}): {} objects ({}) copied, {} ({}) already there{}; all {} objects it references are there with their sizes, each one copied checked against its hash",
        report.source(),
        report.store(),
        report.destination(),
        total.objects(),
        human(total.bytes()),
        there.objects(),
        human(there.bytes()),
        match again.objects() {
            0 => String::new(),
            n => format!(", {n} copied again (gone from there before the copy ended)"),
        },
        report.verified(),
    );
}

/// What a copy shows as it runs: the snapshot it took (remembered, to
/// name it if the copy stops), and a bar of the bytes copied, on stderr
/// when it is a terminal.
struct Watch {
    bar: ByteBar,
    json: bool,
    taken: std::sync::Mutex<Option<String>>,
}

impl Watch {
    fn new(bar: bool, json: bool) -> Watch {
        Watch {
            bar: ByteBar::new(bar && !json),
            json,
            taken: Default::default(),
        }
    }

    fn clear(&self) {
        self.bar.clear();
    }

    fn taken(&self) -> Option<String> {
        self.taken.lock().map_or(None, |taken| taken.clone())
    }
}

impl CopyProgress for Watch {
    fn snapshot_taken(&self, snapshot: &str) {
        if let Ok(mut taken) = self.taken.lock() {
            *taken = Some(snapshot.to_string());
        }
        if !self.json {
            outln!("took snapshot {snapshot}");
        }
    }

    fn start(&self, objects: u64, bytes: u64) {
        self.bar.set_total(Some(bytes));
        self.bar.set_message(format!("{objects} objects"));
    }

    fn copied(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
}
