//! `zeroblk serve`: export volumes over NBD until SIGINT or SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::nbd_tls::TlsArgs;
use super::read_only::{self, Mode, ReadOnlyArgs};
use super::settings::{EngineArgs, Settings};
use super::status::MetricsArgs;
use crate::attach::registry;
use crate::control;
use crate::engine::{self, Follow, VolumeRef};
use crate::nbd::server::Listener;
use crate::nbd::{Export, Exports, ListenAddr, NbdServer};
use crate::status::{self, Role, StatusSource};
use crate::store::Store;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:10809";

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Volumes to export, each under its own name; NAME@SNAP exports a
    /// snapshot, read-only [default: all of the store's volumes]
    pub volumes: Vec<VolumeRef>,
    /// Where to listen: HOST:PORT or unix:/PATH; repeat for several
    /// [default: 127.0.0.1:10809, or [servers.nbd] addresses]
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<ListenAddr>,
    /// Drop a client that has not finished the NBD handshake after this long
    #[arg(long, value_name = "DURATION", default_value = "30s")]
    pub handshake_timeout: humantime::Duration,
    /// Serve at most this many connections at once; a client beyond them
    /// is disconnected as it connects (an idle connection holds about 300 KiB)
    #[arg(long, value_name = "N", default_value_t = crate::nbd::server::MAX_CONNECTIONS)]
    pub max_connections: usize,
    /// Drop a client that sends no request for this long (none in flight)
    /// [default: never; kernel clients sit idle between bursts]
    #[arg(long, value_name = "DURATION")]
    pub idle_timeout: Option<humantime::Duration>,
    #[command(flatten)]
    pub read_only: ReadOnlyArgs,
    #[command(flatten)]
    pub tls: TlsArgs,
    #[command(flatten)]
    pub metrics: MetricsArgs,
    #[command(flatten)]
    pub engine: EngineArgs,
}

pub async fn run(args: ServeArgs, settings: &Settings) -> anyhow::Result<()> {
    anyhow::ensure!(
        !args.handshake_timeout.is_zero(),
        "--handshake-timeout must be longer than zero, e.g. 30s"
    );
    anyhow::ensure!(
        args.max_connections > 0,
        "--max-connections must be at least 1"
    );
    anyhow::ensure!(
        args.idle_timeout.is_none_or(|t| !t.is_zero()),
        "--idle-timeout must be longer than zero, e.g. 10m (leave it out to never drop idle clients)"
    );
    let addresses = listen_addresses(&args, settings)?;
    let tls = args.tls.load(&addresses)?;
    let store = settings.open_store()?;
    let names = match args.volumes.is_empty() {
        true => finished_volumes(&store).await?,
        false => args.volumes.clone(),
    };
    anyhow::ensure!(
        !names.is_empty(),
        "the store {} has no volumes to serve: create one with `zeroblk volume create NAME --size 100G`",
        store.url()
    );
    // Every mode and password first: a volume that cannot be opened must
    // stop the server before any other volume is opened (and written to).
    let modes = names
        .iter()
        .map(|name| args.read_only.mode(name))
        .collect::<anyhow::Result<Vec<Mode>>>()?;
    anyhow::ensure!(
        !args.engine.force || modes.contains(&Mode::Write),
        "--force takes a writer's lease over, and a read-only export takes none: leave it out"
    );
    let options = settings.engine_options(&args.engine)?;
    for name in &names {
        engine::check_password(&store, name.name(), options.password.clone()).await?;
    }
    // What can fail to bind, before any volume is opened (its lease
    // taken), and any address announced.
    let metrics = status::http::bind(&args.metrics.addresses(settings)).await?;
    let control_socket = bind_control_socket()?;
    let mut listeners = Vec::new();
    for address in &addresses {
        let listener = Listener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (pick another with --listen)"))?;
        listeners.push(listener);
    }
    let mut exports = Exports::default();
    for (name, mode) in names.iter().zip(&modes) {
        let volume = read_only::open(&store, name, *mode, options.clone()).await?;
        exports.add(Export::new(&name.to_string(), Arc::new(volume)));
    }
    for listener in &listeners {
        let bound = listener.local_addr()?;
        for (name, mode) in names.iter().zip(&modes) {
            let name = name.to_string();
            let uri = uri(&bound, &name, tls.is_some());
            match mode {
                Mode::Write => tracing::info!("serving volume {name} at {uri}"),
                Mode::Read(Follow::Pinned) => {
                    tracing::info!("serving volume {name} at {uri}, read-only")
                }
                Mode::Read(Follow::Every(_)) => {
                    tracing::info!("serving volume {name} at {uri}, read-only (following)")
                }
            }
        }
    }
    if let Some(tls) = &tls {
        tracing::info!("clients must use {}", tls.describe());
    }
    let server = NbdServer::new(exports)
        .with_handshake_timeout(args.handshake_timeout.into())
        .with_max_connections(args.max_connections)
        .with_idle_timeout(args.idle_timeout.map(Into::into))
        .with_tls(tls);
    let (stop, stopped) = watch::channel(false);
    let volumes = server.exports().volumes().cloned().collect();
    let source = StatusSource::new(Role::Serve, volumes).with_nbd(server.clone());
    tokio::spawn(control::serve_status(
        control_socket.listener,
        source.clone(),
        stopped.clone(),
    ));
    tokio::spawn(status::http::serve(metrics, source, stopped.clone()));
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("stopping: finishing requests in flight, then committing to the store");
        let _ = stop.send(true);
    });
    server.run(listeners, stopped).await;
    drop(control_socket.file);
    let mut failures = Vec::new();
    for volume in server.exports().volumes() {
        if let Err(error) = volume.close().await {
            failures.push(format!("volume {}: {error}", volume.name()));
        }
    }
    anyhow::ensure!(failures.is_empty(), "{}", failures.join("; "));
    tracing::info!("all volumes committed (those served read-only have nothing to commit); bye");
    Ok(())
}

/// This process's control socket, for `zeroblk status`.
struct ControlSocket {
    listener: tokio::net::UnixListener,
    file: SocketFile,
}

/// A socket's name in the runtime dir, removed when the server stops,
/// whether it served or failed first.
struct SocketFile(std::path::PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn bind_control_socket() -> anyhow::Result<ControlSocket> {
    let dir = registry::runtime_dir();
    registry::ensure_private_dir(&dir)
        .with_context(|| format!("cannot prepare the runtime directory {}", dir.display()))?;
    let path = registry::serve_socket(&dir, std::process::id());
    let listener = control::bind(&path)
        .with_context(|| format!("cannot make the control socket {}", path.display()))?;
    Ok(ControlSocket {
        listener,
        file: SocketFile(path),
    })
}

fn listen_addresses(args: &ServeArgs, settings: &Settings) -> anyhow::Result<Vec<ListenAddr>> {
    if !args.listen.is_empty() {
        return Ok(args.listen.clone());
    }
    let configured = settings.config.servers.nbd.addresses.clone();
    let addresses = configured.unwrap_or_else(|| vec![DEFAULT_LISTEN.to_string()]);
    addresses
        .iter()
        .map(|a| {
            a.parse()
                .map_err(|e: String| anyhow::anyhow!("[servers.nbd] addresses: {e}"))
        })
        .collect()
}

/// The NBD URI a client uses for an export.
fn uri(address: &ListenAddr, name: &str, tls: bool) -> String {
    let scheme = if tls { "nbds" } else { "nbd" };
    match address {
        ListenAddr::Tcp(host_port) => format!("{scheme}://{host_port}/{name}"),
        ListenAddr::Unix(path) => format!("{scheme}+unix:///{name}?socket={}", path.display()),
    }
}

async fn wait_for_signal() {
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
    }
}

/// Every volume of the store but those a create, clone or copy left
/// unfinished (each is named in a warning): serving "all" must not fail
/// for one that holds nothing.
async fn finished_volumes(store: &Store) -> anyhow::Result<Vec<VolumeRef>> {
    let mut names = Vec::new();
    for name in engine::list(store).await? {
        match engine::check_finished(store, &name).await {
            Err(error @ engine::EngineError::Unfinished(_)) => tracing::warn!("skipped: {error}"),
            _ => names.push(VolumeRef::volume(&name)),
        }
    }
    Ok(names)
}
