//! The daemon that serves one attached volume: it connects the device,
//! provisions it (when asked), records itself in the registry, and serves
//! until `zeroblk detach` (over its control socket) or SIGTERM/SIGINT.
//! Then it unexports and unmounts, disconnects the device, commits
//! everything to the store, and only then answers the detach. While the
//! device is still mounted (a busy mount, or one it did not make) it keeps
//! serving: nothing is ever pulled from under a filesystem.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use super::registry::{self, Access, AttachRecord};
use super::{AttachError, Transport, choose_transport, hook};
use crate::engine::Volume;
use crate::kernel_nbd::{self, DeviceConfig, NbdDevice};
use crate::nbd::handshake::Session;
use crate::nbd::server::Listener;
use crate::nbd::{Export, Exports, ListenAddr, NbdServer, ServerBudget, TlsConfig, transmission};
use crate::provision::Provision;
use crate::ublk::{UblkDevice, UblkOptions};

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
        let nbd_server = serve_nbd_too(&export, &options.nbd_listen, nbd_tls, stopped).await?;
        let _ = std::fs::remove_file(&control_path);
        let control = UnixListener::bind(&control_path)
            .map_err(io_error(format!("binding {}", control_path.display())))?;
        let private = std::os::unix::fs::PermissionsExt::from_mode(0o600);
        std::fs::set_permissions(&control_path, private).map_err(io_error(format!(
            "making {} private",
            control_path.display()
        )))?;
        if let Some(provision) = provision {
            hook::bring_up(&device_path, &name, provision).await?;
        }
        Ok::<_, AttachError>((nbd_server, control))
    };
    let (nbd_server, control) = match setup.await {
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

    let requester = wait_for_detach(&control, &device_path, provision, &volume).await;
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
) -> Result<Option<tokio::task::JoinHandle<()>>, AttachError> {
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
    Ok(Some(tokio::spawn(async move {
        server.run(listeners, stopped).await
    })))
}

/// Waits for `zeroblk detach` (returning its connection, to answer it when
/// done) or a signal (returning `None`), and releases the device: unexport,
/// unmount. A release that fails (a busy mount) is answered, or logged,
/// and the daemon goes on serving.
async fn wait_for_detach(
    control: &UnixListener,
    device: &str,
    provision: Option<&Provision>,
    volume: &Volume,
) -> Option<UnixStream> {
    let mut terminate = signal(SignalKind::terminate()).ok();
    loop {
        let accepted = tokio::select! {
            accepted = control.accept() => accepted,
            _ = tokio::signal::ctrl_c() => Err(std::io::ErrorKind::Interrupted.into()),
            _ = async { match terminate.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => Err(std::io::ErrorKind::Interrupted.into()),
        };
        let mut requester = match accepted {
            Ok((mut stream, _)) => match control_request(&mut stream).await {
                Ok(Request::Detach) => Some(stream),
                Ok(Request::Commit) => {
                    let answer = match volume.commit().await {
                        Ok(()) => "ok\n".to_string(),
                        Err(error) => format!("error: {error}\n"),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    continue;
                }
                Ok(Request::Snapshot(label)) => {
                    let answer = match volume.snapshot(label.as_deref()).await {
                        Ok(snapshot) => format!("ok {}\n", snapshot.name()),
                        Err(error) => format!("error: {error}\n"),
                    };
                    let _ = stream.write_all(answer.as_bytes()).await;
                    continue;
                }
                Err(refusal) => {
                    let _ = stream
                        .write_all(format!("error: {refusal}\n").as_bytes())
                        .await;
                    continue;
                }
            },
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => None,
            Err(_) => continue,
        };
        match hook::bring_down(device, provision).await {
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

/// How long a control client has to send its request.
const CONTROL_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// What a control client asks the daemon.
#[derive(Debug, PartialEq, Eq)]
enum Request {
    /// `detach`: stop serving, commit everything, exit.
    Detach,
    /// `commit`: commit every write acknowledged so far to the store.
    Commit,
    /// `snapshot [LABEL]`: commit, then pin a volume snapshot; answered
    /// with `ok NAME`.
    Snapshot(Option<String>),
}

/// Reads a control request from a client of this user (or root): at most
/// a line of 128 bytes, within [`CONTROL_REQUEST_TIMEOUT`], so no client
/// can hold the daemon up.
async fn control_request(stream: &mut UnixStream) -> Result<Request, String> {
    let me = nix::unistd::geteuid().as_raw();
    let peer = stream.peer_cred().map_err(|e| e.to_string())?.uid();
    if peer != me && peer != 0 {
        return Err(format!("user {peer} may not control this daemon"));
    }
    let mut line = String::new();
    let mut reader = BufReader::new((&mut *stream).take(128));
    match tokio::time::timeout(CONTROL_REQUEST_TIMEOUT, reader.read_line(&mut line)).await {
        Ok(Ok(_)) if line.ends_with('\n') => parse_request(line.trim()),
        Ok(_) => Err("unknown request".into()),
        Err(_) => Err("no request within 5 s".into()),
    }
}

fn parse_request(line: &str) -> Result<Request, String> {
    let mut words = line.split_whitespace();
    let request = match (words.next(), words.next()) {
        (Some("detach"), None) => Request::Detach,
        (Some("commit"), None) => Request::Commit,
        (Some("snapshot"), label) => Request::Snapshot(label.map(str::to_string)),
        _ => return Err("unknown request".into()),
    };
    match words.next() {
        None => Ok(request),
        Some(_) => Err("unknown request".into()),
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

/// Asks the daemon serving `record` to detach, and waits for its answer.
pub async fn request_detach(control_socket: &PathBuf) -> Result<(), String> {
    ask(control_socket, "detach").await.map(drop)
}

/// Asks the daemon to commit every write it acknowledged to the store.
pub async fn request_commit(control_socket: &PathBuf) -> Result<(), String> {
    ask(control_socket, "commit").await.map(drop)
}

/// Asks the daemon to commit its volume and pin a snapshot of it (named
/// `label`, or after the time); returns the snapshot's name.
pub async fn request_snapshot(
    control_socket: &PathBuf,
    label: Option<&str>,
) -> Result<String, String> {
    let request = match label {
        Some(label) => format!("snapshot {label}"),
        None => "snapshot".to_string(),
    };
    ask(control_socket, &request).await
}

/// Sends `request` to the daemon; returns what follows its `ok`.
async fn ask(control_socket: &PathBuf, request: &str) -> Result<String, String> {
    let mut stream = UnixStream::connect(control_socket).await.map_err(|e| {
        format!(
            "cannot reach the daemon at {}: {e}",
            control_socket.display()
        )
    })?;
    stream
        .write_all(format!("{request}\n").as_bytes())
        .await
        .map_err(|e| format!("cannot talk to the daemon: {e}"))?;
    let mut answer = String::new();
    BufReader::new(stream)
        .read_line(&mut answer)
        .await
        .map_err(|e| format!("the daemon did not answer: {e}"))?;
    match answer.trim() {
        "" => Err("the daemon exited without answering; see its log".into()),
        "ok" => Ok(String::new()),
        ok if ok.starts_with("ok ") => Ok(ok[3..].to_string()),
        other => Err(other.trim_start_matches("error: ").to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the daemon makes of a control client that sends `sent`, then
    /// keeps its end open.
    async fn request_of(sent: &[u8]) -> Result<Request, String> {
        let (mut daemon_end, mut client) = UnixStream::pair().unwrap();
        let sent = sent.to_vec();
        let sending = tokio::spawn(async move {
            let _ = client.write_all(&sent).await;
            client
        });
        let answer = control_request(&mut daemon_end).await;
        drop(daemon_end);
        drop(sending.await);
        answer
    }

    #[tokio::test(start_paused = true)]
    async fn control_requests_are_bounded_in_size_and_time() {
        assert_eq!(request_of(b"detach\n").await, Ok(Request::Detach));
        assert_eq!(request_of(b"commit\n").await, Ok(Request::Commit));
        assert_eq!(request_of(b"snapshot\n").await, Ok(Request::Snapshot(None)));
        assert_eq!(
            request_of(b"snapshot nightly\n").await,
            Ok(Request::Snapshot(Some("nightly".into())))
        );
        for bad in [&b"snapshot a b\n"[..], b"detach now\n"] {
            assert_eq!(request_of(bad).await, Err("unknown request".into()));
        }
        assert_eq!(request_of(b"attach\n").await, Err("unknown request".into()));
        let endless = vec![b'x'; 1 << 20];
        assert_eq!(request_of(&endless).await, Err("unknown request".into()));
        // Nothing sent: given up after the timeout (paused time runs on).
        assert_eq!(request_of(b"").await, Err("no request within 5 s".into()));
    }
}
