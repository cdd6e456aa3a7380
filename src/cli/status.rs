//! `zeroblk status [NAME] [--json] [--watch]`: what every daemon on this
//! host that attaches or serves a volume reports over its control socket;
//! and `--metrics-listen`, the same figures for Prometheus.

use std::path::PathBuf;
use std::time::{Duration, UNIX_EPOCH};

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};

use super::settings::Settings;
use crate::attach::registry;
use crate::control;
use crate::engine::VolumeStatus;
use crate::size::human;
use crate::status::DaemonStatus;

/// `--metrics-listen`, on `attach` and `serve`.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics at http://ADDR/metrics (HOST:PORT, e.g.
    /// 127.0.0.1:9100; repeat for several) [default: none, or
    /// [servers.metrics] addresses]
    #[arg(long = "metrics-listen", value_name = "ADDR")]
    pub metrics_listen: Vec<String>,
}

impl MetricsArgs {
    /// Where to serve metrics: the flags, else the configuration file's.
    pub fn addresses(&self, settings: &Settings) -> Vec<String> {
        match self.metrics_listen.is_empty() {
            false => self.metrics_listen.clone(),
            true => settings
                .config
                .servers
                .metrics
                .addresses
                .clone()
                .unwrap_or_default(),
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Only the daemon serving this volume (NAME, or NAME@SNAP)
    pub name: Option<String>,
    /// One JSON array of every daemon's figures
    #[arg(long)]
    pub json: bool,
    /// Refresh in place, like top, until interrupted
    #[arg(long)]
    pub watch: bool,
    /// How often --watch refreshes
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "2s",
        requires = "watch"
    )]
    pub interval: humantime::Duration,
}

pub async fn run(args: StatusArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.interval.is_zero(),
        "--interval must be longer than zero, e.g. 2s"
    );
    if !args.watch {
        return print_once(&args).await;
    }
    // Listening from the start: a Ctrl-C that comes while a screen is
    // being drawn is kept for the wait after it.
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        // Home, then clear: the next screen replaces this one in place.
        print!("\x1b[H\x1b[2J");
        print_once(&args).await?;
        tokio::select! {
            _ = tokio::time::sleep(args.interval.into()) => {}
            _ = interrupt.recv() => return Ok(()),
        }
    }
}

async fn print_once(args: &StatusArgs) -> anyhow::Result<()> {
    let mut daemons = ask_every_daemon().await?;
    if let Some(name) = &args.name {
        daemons.retain(|d| d.volumes.iter().any(|v| &v.name == name));
        anyhow::ensure!(
            !daemons.is_empty(),
            "no daemon on this host serves `{name}`: `zeroblk list` shows what is attached; start one with `zeroblk attach {name}` or `zeroblk serve {name}`"
        );
    }
    if args.json {
        outln!("{}", serde_json::to_string_pretty(&daemons)?);
        return Ok(());
    }
    if daemons.is_empty() {
        outln!(
            "no zeroblk daemon runs on this host (`zeroblk attach NAME` or `zeroblk serve` starts one)"
        );
    }
    for daemon in &daemons {
        print_daemon(daemon, args.name.as_deref());
    }
    Ok(())
}

/// Every live daemon's status: attaches (from the registry) and serves.
/// A daemon that exits meanwhile is left out.
async fn ask_every_daemon() -> anyhow::Result<Vec<DaemonStatus>> {
    let dir = registry::runtime_dir();
    let attached = registry::list(&dir)
        .with_context(|| format!("cannot read the registry in {}", dir.display()))?;
    let mut sockets: Vec<PathBuf> = attached
        .into_iter()
        .filter(|r| r.state != "dead")
        .map(|r| r.control_socket)
        .collect();
    let served = registry::serve_sockets(&dir)
        .with_context(|| format!("cannot read the registry in {}", dir.display()))?;
    sockets.extend(served.into_iter().map(|(_, path)| path));
    let mut daemons = Vec::new();
    for socket in sockets {
        let Ok(answer) = control::request_status(&socket).await else {
            continue;
        };
        let status: DaemonStatus = serde_json::from_str(&answer)
            .with_context(|| format!("the daemon at {} sent a status this zeroblk cannot read: is it another version? Restart it", socket.display()))?;
        daemons.push(status);
    }
    Ok(daemons)
}

fn print_daemon(daemon: &DaemonStatus, only: Option<&str>) {
    let up = humantime::format_duration(Duration::from_secs(daemon.uptime_ms / 1000));
    let serving = match (&daemon.device, &daemon.transport) {
        (Some(device), Some(transport)) => format!(
            "attached at {device} ({transport}{})",
            ublk_geometry(daemon)
        ),
        _ => "served over NBD".to_string(),
    };
    for volume in daemon
        .volumes
        .iter()
        .filter(|v| only.is_none_or(|n| n == v.name))
    {
        outln!("{}  {serving}, pid {}, up {up}", volume.name, daemon.pid);
        print_volume(volume);
    }
    if let Some(clients) = daemon.nbd_clients {
        outln!("  nbd clients  {clients}");
    }
    outln!("  store        {}", daemon.store);
    for kind in daemon.store_requests.iter().filter(|k| k.requests > 0) {
        let quantile = |q| {
            kind.latency
                .quantile(q)
                .map_or("-".into(), |d| format!("{d:.1?}"))
        };
        outln!(
            "    {:<7}{:>10} requests {:>6} errors   p50 {:>9}  p99 {:>9}",
            kind.kind.name().to_uppercase(),
            kind.requests,
            kind.errors,
            quantile(0.5),
            quantile(0.99)
        );
    }
    outln!(
        "    {} retries, {} down, {} up",
        daemon.store_retries,
        human(daemon.store_bytes_read),
        human(daemon.store_bytes_written)
    );
    outln!();
}

fn ublk_geometry(daemon: &DaemonStatus) -> String {
    match (daemon.ublk_queues, daemon.ublk_depth) {
        (Some(queues), Some(depth)) => format!(", {queues} queues of depth {depth}"),
        _ => String::new(),
    }
}

fn print_volume(v: &VolumeStatus) {
    let waited = v.oldest_uncommitted_ms.map_or("none".into(), |ms| {
        format!("{:.1?}", Duration::from_millis(ms))
    });
    outln!(
        "  dirty        {}   log {}   oldest uncommitted write: {waited}",
        human(v.dirty_bytes),
        human(v.log_bytes)
    );
    outln!("  commits      {}", commits(v));
    let ratio = |hits: u64, misses: u64| match hits + misses {
        0 => "-".to_string(),
        all => format!("{:.1}%", 100.0 * hits as f64 / all as f64),
    };
    let c = &v.cache;
    outln!(
        "  cache hits   memory {} ({} held)   disk {} ({} held)",
        ratio(c.memory_hits, c.memory_misses),
        human(c.memory_bytes),
        ratio(c.disk_hits, c.disk_misses),
        human(c.disk_bytes)
    );
    let stored = v.stored_ratio().map_or("-".into(), |r| format!("{r:.2}"));
    outln!(
        "  stored       {} for {} of data (ratio {stored})",
        human(v.stored_bytes),
        human(v.allocated_bytes)
    );
    let r = &v.requests;
    outln!(
        "  requests     {} reads ({}), {} writes ({}), {} flushes, {} zeroings",
        r.reads,
        human(r.bytes_read),
        r.writes,
        human(r.bytes_written),
        r.flushes,
        r.zeroes
    );
    match &v.lease {
        Some(lease) => outln!(
            "  lease        {}, held {}, renewed {:.1?} ago",
            lease.holder,
            humantime::format_duration(Duration::from_secs(lease.held_ms / 1000)),
            Duration::from_millis(lease.renewed_ms_ago)
        ),
        None => outln!("  lease        none (read-only)"),
    }
}

/// The last commit and the rate of commits, in words.
fn commits(v: &VolumeStatus) -> String {
    let (Some(at_ms), Some(took_ms)) = (v.last_commit_at_ms, v.last_commit_took_ms) else {
        return format!("none yet ({} this minute)", v.commits_last_minute);
    };
    let ended = UNIX_EPOCH + Duration::from_millis(at_ms);
    let ago = ended.elapsed().unwrap_or_default();
    format!(
        "last {:.1?} ago, took {:.1?}; {} in the last minute; {} in all",
        Duration::from_millis(u64::try_from(ago.as_millis()).unwrap_or(u64::MAX)),
        Duration::from_millis(took_ms),
        v.commits_last_minute,
        v.requests.commits
    )
}
