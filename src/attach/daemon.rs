//! The daemon that serves one attached volume: it connects the device,
//! provisions it (when asked), records itself in the registry, and serves
//! until `zeroblk detach` (over its control socket) or SIGTERM/SIGINT.
//! Then it unexports and unmounts, disconnects the device, commits
//! everything to the store, and only then answers the detach. While the
//! device is still mounted (a busy mount, or one it did not make) it keeps
//! serving: nothing is ever pulled from under a filesystem.
//!
//! `zeroblk volume resize` of an attached volume reaches the daemon too
//! (`resize BYTES`): it grows the volume and commits that, then grows the
//! device where the kernel can (ublk's `UPDATE_SIZE`, NBD's
//! `NBD_SET_SIZE_BLOCKS`), then the btrfs mounted on it. Where the kernel
//! cannot, the device keeps its size until the next attach, and the answer
//! says so.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::registry::{self, Access, AttachRecord};
use super::{AttachError, Transport, choose_transport, hook};
use crate::control::{self, Request};
use crate::engine::Volume;
use crate::kernel_nbd::{self, DeviceConfig, NbdDevice};
use crate::nbd::handshake::Session;
use crate::nbd::server::Listener;
use crate::nbd::{Export, Exports, ListenAddr, NbdServer, ServerBudget, TlsConfig, transmission};
use crate::provision::Provision;
use crate::size::ByteSize;
use crate::status::{self, Role, StatusSource};
use crate::ublk::{Growth, ONLINE_GROWTH_KERNEL, UblkDevice, UblkOptions};

/// How to attach.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// What is attached: the volume, or `NAME@SNAP`.
    pub name: String,
    /// How: by its writer, or read-only (`volume` was opened so).
    pub access: Access,
    pub transport: Transport,
    /// Also serve the volume over NBD here, from the same engine.
    pub nbd_listen: Vec<ListenAddr>,
    /// TLS for the NBD server of `nbd_listen`.
    pub nbd_tls: Option<TlsConfig>,
    /// Serve Prometheus metrics here (HOST:PORT).
    pub metrics_listen: Vec<String>,
    pub store_url: String,
    pub ublk: UblkOptions,
    /// The filesystem, mount and NFS export to bring up on the device.
    pub provision: Option<Provision>,
}

/// The device a daemon serves.
enum Device {
    Nbd(NbdDevice, tokio::task::JoinHandle<std::io::Result<()>>),
    Ublk(UblkDevice),
}

impl Device {
    fn path(&self) -> String {
        match self {
            Device::Nbd(device, _) => device.path().display().to_string(),
            Device::Ublk(device) => device.path(),
        }
    }

    /// Grows the live device to `new_size`, which its volume has already.
    async fn grow(&self, new_size: u64) -> Result<Growth, String> {
        let grown = match self {
            Device::Nbd(device, _) => device
                .grow(new_size)
                .map(|()| Growth::Online)
                .map_err(|e| e.to_string()),
            Device::Ublk(device) => {
                let id = device.id();
                crate::blocking::run(move || crate::ublk::grow(id, new_size))
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        grown.map_err(|why| format!("{} could not grow: {why}", self.path()))
    }
}

/// What a running daemon serves, for the control requests that read or
/// change it.
struct Served<'a> {
    name: &'a str,
    device: &'a Device,
    provision: Option<&'a Provision>,
    volume: &'a Volume,
    status: &'a StatusSource,
    /// The registry and this daemon's record there, whose size follows
    /// the device's.
    registry: (&'a Path, &'a AttachRecord),
}

fn io_error(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> AttachError {
    let what = what.into();
    move |source| AttachError::Io { what, source }
}

/// Refuses an attach (registry `key`) that a live daemon serves; clears a
/// dead one's record.
pub fn ensure_not_attached(dir: &Path, key: &str) -> Result<(), AttachError> {
    if let Some(record) = registry::find(dir, key).map_err(io_error("reading the registry"))? {
        if record.daemon_alive() && record.pid != std::process::id() {
            return Err(AttachError::AlreadyAttached {
                detach: detach_command(&record),
                name: record.name,
                access: record.access,
                device: record.device,
                pid: record.pid,
            });
        }
        registry::remove(dir, key);
    }
    Ok(())
}

/// The command that detaches what `record` attached.
pub fn detach_command(record: &AttachRecord) -> String {
    match record.access.is_read_only() && !record.name.contains('@') {
        true => format!("zeroblk detach --read-only {}", record.name),
        false => format!("zeroblk detach {}", record.name),
    }
}

/// Serves `volume` as a block device until detached. `ready` gets the
/// device path as soon as the device can be used.
pub async fn run(
    volume: Volume,
    options: AttachOptions,
    ready: impl FnOnce(&str),
) -> Result<(), AttachError> {
    let dir = registry::runtime_dir();
    registry::ensure_private_dir(&dir).map_err(io_error(format!("preparing {}", dir.display())))?;
    let name = options.name.clone();
    let key = registry::key(&name, options.access);
    ensure_not_attached(&dir, &key)?;
    let transport = match options.ublk.recover {
        Some(_) => Transport::Ublk,
        None => choose_transport(options.transport)?,
    };
    let volume = Arc::new(volume);
    let export = Arc::new(Export::new(&name, Arc::clone(&volume)));

    let device = match transport {
        Transport::Ublk => {
            let (volume, options) = (Arc::clone(&volume), options.ublk);
            let runtime = tokio::runtime::Handle::current();
            let started =
                crate::blocking::run(move || UblkDevice::start(volume, runtime, options)).await;
            Device::Ublk(started.map_err(AttachError::Ublk)?)
        }
        Transport::Nbd | Transport::Auto => {
            let (device, connection) = connect_kernel_nbd(&export).await?;
            Device::Nbd(device, connection)
        }
    };
    let device_path = device.path();
    let (stop, stopped) = watch::channel(false);
    let control_path = registry::control_socket(&dir, &key);
    let provision = options.provision.as_ref();
    let setup = async {
        let nbd_tls = options.nbd_tls.clone();
        let metrics = status::http::bind(&options.metrics_listen)
            .await
            .map_err(|e| AttachError::Metrics(e.to_string()))?;
        let nbd_server =
            serve_nbd_too(&export, &options.nbd_listen, nbd_tls, stopped.clone()).await?;
        let control = control::bind(&control_path)
            .map_err(io_error(format!("binding {}", control_path.display())))?;
        if let Some(provision) = provision {
            hook::bring_up(&device_path, &name, provision).await?;
        }
        Ok::<_, AttachError>((nbd_server, control, metrics))
    };
    let (nbd_server, control, metrics) = match setup.await {
        Ok(set_up) => set_up,
        Err(error) => {
            let _ = stop.send(true);
            let _ = std::fs::remove_file(&control_path);
            if let Err(cleanup) = shut_down(device, None, &volume).await {
                tracing::error!(%cleanup, "could not detach after the failed attach");
            }
            return Err(error);
        }
    };
    let status = status_source(&device, &volume, nbd_server.as_ref());
    tokio::spawn(status::http::serve(metrics, status.clone(), stopped));
    let nbd_server = nbd_server.map(|(_, serving)| serving);
    let record = AttachRecord {
        name: name.clone(),
        access: options.access,
        device: device_path.clone(),
        size: volume.size(),
        store: options.store_url.clone(),
        pid: std::process::id(),
        pid_started: crate::process::ProcessId::current().started(),
        transport: match device {
            Device::Ublk(_) => "ublk".into(),
            Device::Nbd(..) => "nbd".into(),
        },
        state: "attached".into(),
        control_socket: control_path.clone(),
        nbd_listen: options.nbd_listen.iter().map(ToString::to_string).collect(),
        mount_point: provision.map(|p| p.mount_point.clone()),
        nfs: provision
            .and_then(|p| p.nfs.as_ref())
            .map(ToString::to_string),
    };
    registry::write(&dir, &record).map_err(io_error("writing the registry"))?;
    tracing::info!(volume = %name, device = %device_path, "attached");
    ready(&device_path);

    let served = Served {
        name: &name,
        device: &device,
        provision,
        volume: &volume,
        status: &status,
        registry: (&dir, &record),
    };
    let requester = wait_for_detach(&control, &served).await;
    tracing::info!(volume = %name, "detaching: disconnecting the device, then committing to the store");
    let _ = stop.send(true);
    let outcome = shut_down(device, nbd_server, &volume).await;
    registry::remove(&dir, &key);
    let _ = std::fs::remove_file(&control_path);
    if let Some(mut requester) = requester {
        let answer = match &outcome {
            Ok(()) => "ok\n".to_string(),
            Err(error) => format!("error: {error}\n"),
        };
        let _ = requester.write_all(answer.as_bytes()).await;
    }
    outcome
}

async fn connect_kernel_nbd(
    export: &Arc<Export>,
) -> Result<(NbdDevice, tokio::task::JoinHandle<std::io::Result<()>>), AttachError> {
    let path = kernel_nbd::find_free_device().ok_or(AttachError::NoFreeNbd)?;
    let (ours, theirs) =
        std::os::unix::net::UnixStream::pair().map_err(io_error("creating a socket pair"))?;
    ours.set_nonblocking(true)
        .map_err(io_error("configuring a socket"))?;
    let ours = UnixStream::from_std(ours).map_err(io_error("configuring a socket"))?;
    let session = Session {
        export: Arc::clone(export),
        structured: false,
        base_allocation: false,
    };
    // The kernel's connection ends when the kernel disconnects, not on a
    // shutdown signal: requests it sent are always answered.
    let (_never, never_stop) = watch::channel(false);
    let serving = tokio::spawn(async move {
        let result =
            transmission::serve(ours, session, &ServerBudget::default(), None, never_stop).await;
        drop(_never);
        result
    });
    let (minimum, _, _) = export.block_sizes();
    let config = DeviceConfig {
        size: export.volume().size(),
        block_size: u64::from(minimum),
        flags: export.transmission_flags(false),
        timeout_secs: 0,
    };
    let theirs: OwnedFd = theirs.into();
    let device_path = path.clone();
    let device = crate::blocking::run(move || NbdDevice::connect(&device_path, theirs, config))
        .await
        .map_err(|source| AttachError::Device {
            device: path.display().to_string(),
            source,
        })?;
    Ok((device, serving))
}

async fn serve_nbd_too(
    export: &Arc<Export>,
    addresses: &[ListenAddr],
    tls: Option<TlsConfig>,
    stopped: watch::Receiver<bool>,
) -> Result<Option<(NbdServer, tokio::task::JoinHandle<()>)>, AttachError> {
    if addresses.is_empty() {
        return Ok(None);
    }
    let mut listeners = Vec::new();
    for address in addresses {
        let listener = Listener::bind(address)
            .await
            .map_err(io_error(format!("listening on {address}")))?;
        listeners.push(listener);
    }
    let mut exports = Exports::default();
    exports.add_shared(Arc::clone(export));
    let server = NbdServer::new(exports).with_tls(tls);
    let serving = server.clone();
    Ok(Some((
        server,
        tokio::spawn(async move { serving.run(listeners, stopped).await }),
    )))
}

/// What `zeroblk status` and the metrics read: the volume, its device,
/// and the NBD server beside it if there is one.
fn status_source(
    device: &Device,
    volume: &Arc<Volume>,
    nbd_server: Option<&(NbdServer, tokio::task::JoinHandle<()>)>,
) -> StatusSource {
    let transport = match device {
        Device::Ublk(_) => "ublk",
        Device::Nbd(..) => "nbd",
    };
    let role = Role::Attach {
        device: device.path(),
        transport: transport.into(),
    };
    let mut source = StatusSource::new(role, vec![Arc::clone(volume)]);
    if let Device::Ublk(ublk) = device {
        source = source.with_ublk(ublk.options());
    }
    match nbd_server {
        Some((server, _)) => source.with_nbd(server.clone()),
        None => source,
    }
}

/// Waits for `zeroblk detach` (returning its connection, to answer it when
/// done) or a signal (returning `None`), and releases the device: unexport,
/// unmount. A release that fails (a busy mount) is answered, or logged,
/// and the daemon goes on serving.
async fn wait_for_detach(control: &UnixListener, served: &Served<'_>) -> Option<UnixStream> {
    let mut terminate = signal(SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            accepted = control.accept() => accepted,
            _ = tokio::signal::ctrl_c() => Err(std::io::ErrorKind::Interrupted.into()),
            _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => Err(std::io::ErrorKind::Interrupted.into()),
        };
        let mut requester = match accepted {
            Ok((mut stream, _)) => match control::read_request(&mut stream).await {
                Ok(Request::Detach) => Some(stream),
                Ok(other) => {
                    let outcome = answer_request(other, served).await;
                    control::answer(&mut stream, outcome).await;
                    continue;
                }
                Err(refusal) => {
                    control::answer(&mut stream, Err(refusal)).await;
                    continue;
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => None,
            Err(_) => continue,
        };
        let device = served.device.path();
        match hook::bring_down(&device, served.provision).await {
            Ok(()) => return requester,
            Err(refusal) => {
                tracing::error!(%refusal, "not detaching; still serving {device}");
                if let Some(stream) = requester.as_mut() {
                    let _ = stream
                        .write_all(format!("error: {refusal}\n").as_bytes())
                        .await;
                }
            }
        }
    }
}

/// Answers a control request other than `detach`.
async fn answer_request(request: Request, served: &Served<'_>) -> Result<String, String> {
    let (volume, status) = (served.volume, served.status);
    let failed = |error: crate::engine::EngineError| error.to_string();
    match request {
        Request::Commit => volume
            .commit()
            .await
            .map(|()| String::new())
            .map_err(failed),
        Request::Snapshot(label) => volume
            .snapshot(label.as_deref())
            .await
            .map(|snapshot| snapshot.name().to_string())
            .map_err(failed),
        Request::Status => Ok(status.collect().to_json()),
        Request::Resize(new_size) => resize(served, new_size).await,
        Request::Detach => Err("a detach is answered once the device is released".into()),
    }
}

/// Grows the volume to `new_size` and commits that, then its device and
/// the btrfs on it where the kernel can; answers with one line saying
/// what grew (and, where the device could not, when it will).
async fn resize(served: &Served<'_>, new_size: u64) -> Result<String, String> {
    let (name, volume) = (served.name, served.volume);
    let before = volume.size();
    volume.resize(new_size).await.map_err(|e| e.to_string())?;
    if new_size == before {
        return Ok(format!("volume {name} is {} already", ByteSize(before)));
    }
    let (from, to) = (ByteSize(before), ByteSize(new_size));
    let device = served.device.path();
    let committed = format!("volume {name} grew from {from} to {to} (committed)");
    match served.device.grow(new_size).await {
        Err(why) => Err(format!(
            "{committed}, but {why}; detach and attach it again to see the new size"
        )),
        Ok(Growth::NotInThisKernel) => Ok(format!(
            "{committed}; {device} keeps {from} until the volume is detached and attached again: this kernel's ublk driver cannot resize a live device (Linux {ONLINE_GROWTH_KERNEL} and later can, with UBLK_CMD_UPDATE_SIZE)"
        )),
        Ok(Growth::Online) => {
            record_device_size(served, new_size);
            grow_filesystem(served).await.map(|filesystem| {
                format!("volume {name} and {device} grew from {from} to {to}{filesystem}")
            })
        }
    }
}

/// Grows the btrfs mounted on the device, if the daemon mounted one;
/// returns what to add to the answer.
async fn grow_filesystem(served: &Served<'_>) -> Result<String, String> {
    let Some(mount_point) = served.provision.map(|p| &p.mount_point) else {
        return Ok(String::new());
    };
    let shown = mount_point.display();
    match hook::grow_filesystem(mount_point).await {
        Ok(()) => Ok(format!(", and so did the filesystem at {shown}")),
        Err(why) => Err(format!(
            "volume {} and its device grew, but the filesystem at {shown} did not: {why}; grow it with `btrfs filesystem resize max {shown}`",
            served.name
        )),
    }
}

/// Writes the device's new size into this daemon's registry record, for
/// `zeroblk list`.
fn record_device_size(served: &Served<'_>, size: u64) {
    let (dir, record) = served.registry;
    let resized = AttachRecord {
        size,
        ..record.clone()
    };
    if let Err(error) = registry::write(dir, &resized) {
        tracing::warn!(%error, "could not record the device's new size in the registry");
    }
}

async fn shut_down(
    device: Device,
    nbd_server: Option<tokio::task::JoinHandle<()>>,
    volume: &Volume,
) -> Result<(), AttachError> {
    let device_name = device.path();
    match device {
        Device::Nbd(device, kernel_connection) => {
            crate::blocking::run(move || device.disconnect())
                .await
                .map_err(|source| AttachError::Device {
                    device: device_name,
                    source,
                })?;
            let _ = kernel_connection.await;
        }
        Device::Ublk(device) => {
            crate::blocking::run(move || device.stop())
                .await
                .map_err(AttachError::Ublk)?;
        }
    }
    if let Some(server) = nbd_server {
        let _ = server.await;
    }
    volume.close().await?;
    Ok(())
}
