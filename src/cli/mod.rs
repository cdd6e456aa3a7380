//! The command line: the only user of clap, and the only place errors
//! become `anyhow` (one line on stderr, a non-zero exit).

/// `println!` for command output: a reader that went away (`zeroblk
/// snapshot list | grep -q one`) costs the rest of the output, never a
/// panic, and never stops a daemon that happens to print.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        $crate::cli::stdout_result(writeln!(std::io::stdout().lock(), $($arg)*));
    }};
}

mod attach;
mod backup;
mod copy;
mod image;
mod nbd_tls;
mod progress;
mod provision;
mod read_only;
mod retention;
mod serve;
mod settings;
mod status;
mod volume;
mod volume_snapshot;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use settings::{EngineArgs, Settings};

/// A Linux block device on object storage.
#[derive(Debug, Parser)]
#[command(name = "zeroblk", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes, before or after its name.
#[derive(Debug, clap::Args, Clone, Default)]
pub struct GlobalArgs {
    /// The object store: file:///PATH, s3://BUCKET/PREFIX, gs://BUCKET/PREFIX,
    /// az://CONTAINER/PREFIX or memory://
    /// [default: the embedded store, file:///var/lib/zeroblk/store for root]
    #[arg(long, global = true, value_name = "URL", env = "ZEROBLK_STORE")]
    pub store: Option<String>,
    /// Where write-back logs and cached chunks live
    /// [default: /var/cache/zeroblk for root, else ~/.cache/zeroblk]
    #[arg(long, global = true, value_name = "DIR", env = "ZEROBLK_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// A configuration file (zerofs.toml shape: [storage], [cache], [servers.nbd])
    #[arg(
        short,
        long,
        global = true,
        value_name = "FILE",
        env = "ZEROBLK_CONFIG"
    )]
    pub config: Option<PathBuf>,
    /// The S3 endpoint, for S3-compatible servers (overrides AWS_ENDPOINT_URL)
    #[arg(long, global = true, value_name = "URL")]
    pub s3_endpoint: Option<String>,
    /// The longest one object-store request may take before it is abandoned
    /// and tried again
    #[arg(long, global = true, value_name = "DURATION", default_value = "30s")]
    pub store_timeout: humantime::Duration,
    /// A file whose first line is the password of encrypted volumes (mode
    /// 600) [default: ZEROBLK_PASSWORD, or [storage] encryption_password]
    #[arg(long, global = true, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Log more (-v: debug, -vv: trace); RUST_LOG works too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, inspect, grow and delete volumes
    #[command(subcommand)]
    Volume(volume::VolumeCommand),
    /// Export volumes over NBD (nbd://127.0.0.1:10809/NAME) until stopped
    Serve(serve::ServeArgs),
    /// Attach a volume as a block device on this host (created if missing)
    Attach(Box<attach::AttachArgs>),
    /// Detach a volume: commit everything, remove the device, stop its daemon
    Detach {
        /// The volume's name (NAME@SNAP for a snapshot), or its device path
        target: String,
        /// Detach the read-only attach of the volume (`attach --read-only
        /// NAME`), not its writer
        #[arg(long)]
        read_only: bool,
    },
    /// What the daemons attaching or serving volumes on this host report:
    /// dirty data, commits, caches, store requests, the lease, clients
    Status(status::StatusArgs),
    /// List the volumes attached on this host
    List {
        #[arg(long)]
        json: bool,
    },
    /// Delete chunks, map pages and old roots no volume references any more
    Gc {
        /// Report what would be freed, delete nothing
        #[arg(long)]
        dry_run: bool,
        /// Keep whatever is younger than this, for writers in mid-commit
        /// (at least 10m while any volume is attached)
        #[arg(long, value_name = "DURATION", default_value = "1h")]
        grace: humantime::Duration,
        /// Draw no progress bar
        #[arg(long, short)]
        quiet: bool,
        #[arg(long)]
        json: bool,
    },
    /// Snapshots of a provisioned volume's subvolumes
    #[command(subcommand)]
    Snapshot(provision::SnapshotCommand),
    /// Back up btrfs snapshots to a store as incremental send chains;
    /// list, verify, restore and prune them
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Quotas on a provisioned volume's subvolumes (btrfs qgroups)
    #[command(subcommand)]
    Quota(provision::QuotaCommand),
    /// Run by the attach daemon, in the host's mount namespace
    #[command(subcommand, hide = true)]
    ProvisionHook(provision::HookCommand),
}

/// What [`outln!`] does with a failed write to stdout: nothing when the
/// reader left (a closed pipe); one warning on stderr otherwise.
pub(crate) fn stdout_result(result: std::io::Result<()>) {
    static WARNED: std::sync::Once = std::sync::Once::new();
    if let Err(error) = result
        && error.kind() != std::io::ErrorKind::BrokenPipe
    {
        WARNED.call_once(|| eprintln!("zeroblk: cannot write the output: {error}"));
    }
}

/// Runs the command line and turns the outcome into an exit status.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.global.verbose);
    crate::process::raise_open_file_limit();
    match cli.command {
        Command::ProvisionHook(_) => crate::process::share_new_files(),
        _ => crate::process::keep_new_files_private(),
    }
    if let Command::Attach(args) = &cli.command
        && args.foreground
    {
        leave_host_mount_namespace();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("zeroblk: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("zeroblk: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The attach daemon's own mount namespace, or a warning of what may hang
/// without it.
fn leave_host_mount_namespace() {
    use crate::attach::namespace::{self, NamespaceError};
    match namespace::leave_host_mount_namespace() {
        Ok(()) => {}
        // Only root can; without it, a mount of the device made in this
        // namespace could deadlock the daemon's exit.
        Err(error @ NamespaceError::Leave(_)) => {
            tracing::warn!(%error, "serving from the host's mount namespace");
        }
        Err(error) => tracing::warn!(
            %error,
            "the daemon's mount namespace still mounts a ublk or NBD device: detaching that device may hang"
        ),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::resolve(&cli.global)?;
    match cli.command {
        Command::Volume(command) => volume::run(command, &settings).await,
        Command::Serve(args) => serve::run(args, &settings).await,
        Command::Attach(args) => attach::attach(*args, &settings).await,
        Command::Detach { target, read_only } => attach::detach(&target, read_only).await,
        Command::Status(args) => status::run(args).await,
        Command::List { json } => attach::list(json),
        Command::Gc {
            dry_run,
            grace,
            quiet,
            json,
        } => {
            let args = volume::GcArgs {
                dry_run,
                grace: grace.into(),
                quiet,
                json,
            };
            volume::gc(&settings, args).await
        }
        Command::Snapshot(command) => provision::snapshot(command).await,
        Command::Backup(command) => backup::run(command, &settings).await,
        Command::Quota(command) => provision::quota(command),
        Command::ProvisionHook(command) => provision::hook(command),
    }
}

fn init_logging(verbose: u8) {
    use tracing_subscriber::EnvFilter;
    let default = match verbose {
        0 => "zeroblk=info,warn",
        1 => "zeroblk=debug,info",
        _ => "trace",
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}
