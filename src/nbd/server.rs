//! Listeners and connections: TCP and Unix sockets, and a shutdown that
//! stops accepting, lets every connection finish what it has read, and
//! returns once they are all closed.
//!
//! With TLS, the whole handshake (options before STARTTLS, the TLS
//! handshake, options after it) has one deadline, `--handshake-timeout`,
//! and a shutdown drops a client anywhere in it.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio::task::JoinSet;

use super::handshake::{self, HandshakeError, Outcome, Session, Tls};
use super::tls::TlsConfig;
use super::{Exports, ServerBudget, transmission};

/// Where the server listens: `HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(String),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("`unix:` needs a socket path, as in unix:/run/zeroblk.sock".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        let (host, port) = s.rsplit_once(':').ok_or_else(|| {
            format!(
                "`{s}` is not a listen address: write HOST:PORT (127.0.0.1:10809) or unix:/PATH"
            )
        })?;
        if host.is_empty() || port.parse::<u16>().is_err() {
            return Err(format!(
                "`{s}` is not a listen address: write HOST:PORT (127.0.0.1:10809) or unix:/PATH"
            ));
        }
        Ok(ListenAddr::Tcp(s.to_string()))
    }
}

impl ListenAddr {
    /// Whether only this machine can connect: a Unix socket, or a TCP
    /// address whose host is a loopback address, or a name that resolves
    /// only to loopback addresses (`localhost`).
    pub fn is_local(&self) -> bool {
        use std::net::ToSocketAddrs;
        match self {
            ListenAddr::Unix(_) => true,
            ListenAddr::Tcp(addr) => match addr.to_socket_addrs() {
                Ok(resolved) => {
                    let resolved: Vec<_> = resolved.collect();
                    !resolved.is_empty()
                        && resolved.iter().all(|a| a.ip().to_canonical().is_loopback())
                }
                Err(_) => false,
            },
        }
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(addr) => f.write_str(addr),
            ListenAddr::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// A bound listener.
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

impl Listener {
    pub async fn bind(addr: &ListenAddr) -> io::Result<Listener> {
        match addr {
            ListenAddr::Tcp(addr) => Ok(Listener::Tcp(TcpListener::bind(addr).await?)),
            ListenAddr::Unix(path) => {
                remove_stale_socket(path).await?;
                Ok(Listener::Unix(UnixListener::bind(path)?, path.clone()))
            }
        }
    }

    /// The address actually bound (with the port chosen for `:0`).
    pub fn local_addr(&self) -> io::Result<ListenAddr> {
        match self {
            Listener::Tcp(listener) => Ok(ListenAddr::Tcp(listener.local_addr()?.to_string())),
            Listener::Unix(_, path) => Ok(ListenAddr::Unix(path.clone())),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Removes a socket a dead server left at `path`; refuses to take over a
/// socket another server still answers on, or anything that is not a
/// socket (a file a typo in `--listen unix:` names is not deleted).
async fn remove_stale_socket(path: &std::path::Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{} exists and is not a socket: choose another path for --listen unix:",
                path.display()
            ),
        ));
    }
    if tokio::net::UnixStream::connect(path).await.is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!("another server is listening on {}", path.display()),
        ));
    }
    std::fs::remove_file(path)
}

/// How long a client may take over the handshake, by default: a client
/// that connects and says nothing holds a connection only this long.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// At most one warning per this long when accepting fails (out of file
/// descriptors, say), however often it fails.
const ACCEPT_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// Connections served at once, by default: more than the 5,000 idle ones
/// a busy host may keep open while others are still served. An idle one
/// holds about 350 KiB (its buffers), so this many hold about 3 GiB;
/// `--max-connections` lowers it on a small machine.
pub const MAX_CONNECTIONS: usize = 8192;

/// Serves a set of exports on any number of listeners.
#[derive(Clone)]
pub struct NbdServer {
    exports: Arc<Exports>,
    handshake_timeout: Duration,
    idle_timeout: Option<Duration>,
    budget: ServerBudget,
    /// One permit per connection served, across all listeners.
    slots: Arc<Semaphore>,
    max_connections: usize,
    tls: Option<TlsConfig>,
    refusals: Arc<Refusals>,
}

impl NbdServer {
    pub fn new(exports: Exports) -> NbdServer {
        NbdServer {
            exports: Arc::new(exports),
            handshake_timeout: HANDSHAKE_TIMEOUT,
            idle_timeout: None,
            budget: ServerBudget::default(),
            slots: Arc::new(Semaphore::new(MAX_CONNECTIONS)),
            max_connections: MAX_CONNECTIONS,
            tls: None,
            refusals: Arc::default(),
        }
    }

    /// Serves at most `max` connections at once; a client beyond them is
    /// disconnected as soon as it connects.
    pub fn with_max_connections(mut self, max: usize) -> NbdServer {
        self.slots = Arc::new(Semaphore::new(max));
        self.max_connections = max;
        self
    }

    /// Drops clients that send no request for `timeout` (none in flight).
    pub fn with_idle_timeout(mut self, timeout: Option<Duration>) -> NbdServer {
        self.idle_timeout = timeout;
        self
    }

    /// Requires every client to start TLS with `tls` before anything else.
    pub fn with_tls(mut self, tls: Option<TlsConfig>) -> NbdServer {
        self.tls = tls;
        self
    }

    /// Drops clients that have not finished the handshake after `timeout`.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> NbdServer {
        self.handshake_timeout = timeout;
        self
    }

    /// Connections open now, those still in their handshake included.
    pub fn connections(&self) -> usize {
        self.max_connections
            .saturating_sub(self.slots.available_permits())
    }

    pub fn exports(&self) -> &Exports {
        &self.exports
    }

    /// Accepts connections until `shutdown` turns true, then waits for
    /// every connection to finish.
    pub async fn run(&self, listeners: Vec<Listener>, shutdown: watch::Receiver<bool>) {
        let mut acceptors = JoinSet::new();
        for listener in listeners {
            let server = self.clone();
            let shutdown = shutdown.clone();
            acceptors.spawn(async move { server.accept(listener, shutdown).await });
        }
        while let Some(accepted) = acceptors.join_next().await {
            if let Ok(mut connections) = accepted {
                while connections.join_next().await.is_some() {}
            }
        }
    }

    async fn accept(&self, listener: Listener, mut shutdown: watch::Receiver<bool>) -> JoinSet<()> {
        let mut connections = JoinSet::new();
        let mut failures = AcceptFailures::default();
        let mut turned_away = TurnedAway::default();
        loop {
            let accepted = tokio::select! {
                biased;
                _ = shutdown.wait_for(|stop| *stop) => break,
                accepted = accept_one(&listener) => accepted,
            };
            let slot = match (&accepted, Arc::clone(&self.slots).try_acquire_owned()) {
                (Err(_), _) => None,
                (Ok(_), Ok(slot)) => Some(slot),
                (Ok(_), Err(_)) => {
                    // Dropped: the client sees the connection closed.
                    turned_away.one(self.max_connections);
                    continue;
                }
            };
            match accepted {
                Ok(Connection::Tcp(stream)) => {
                    let _ = stream.set_nodelay(true);
                    let served = self.clone().connection(stream, shutdown.clone());
                    connections.spawn(holding(slot, served));
                }
                Ok(Connection::Unix(stream)) => {
                    let served = self.clone().connection(stream, shutdown.clone());
                    connections.spawn(holding(slot, served));
                }
                Err(error) => {
                    failures.failed(&error);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
            while connections.try_join_next().is_some() {}
        }
        drop(listener);
        connections
    }

    /// Negotiates with one client and serves it. A client still in the
    /// handshake when the server stops, or past the handshake timeout, is
    /// dropped.
    pub async fn connection<S>(self, mut stream: S, mut shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let deadline = tokio::time::Instant::now() + self.handshake_timeout;
        match self.tls.clone() {
            None => {
                let negotiation = handshake::negotiate(&mut stream, &self.exports);
                let negotiated = self.in_handshake(deadline, &mut shutdown, negotiation);
                if let Some(session) = negotiated.await {
                    self.serve(stream, session, shutdown).await;
                }
            }
            Some(tls) => {
                let negotiation = secure(stream, &tls, &self.exports);
                let negotiated = self.in_handshake(deadline, &mut shutdown, negotiation);
                if let Some((stream, session)) = negotiated.await {
                    self.serve(stream, session, shutdown).await;
                }
            }
        }
    }

    /// Runs one part of the handshake until `deadline` or a shutdown.
    async fn in_handshake<T>(
        &self,
        deadline: tokio::time::Instant,
        shutdown: &mut watch::Receiver<bool>,
        negotiation: impl std::future::Future<Output = Result<Option<T>, HandshakeError>>,
    ) -> Option<T> {
        let negotiated = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => return None,
            negotiated = tokio::time::timeout_at(deadline, negotiation) => negotiated,
        };
        match negotiated {
            Ok(Ok(negotiated)) => negotiated,
            Ok(Err(HandshakeError::Tls(error))) => {
                self.refusals.one(&error);
                None
            }
            Ok(Err(error)) => {
                tracing::debug!(%error, "NBD negotiation ended");
                None
            }
            Err(_) => {
                tracing::debug!(timeout = ?self.handshake_timeout, "NBD client did not finish the handshake in time");
                None
            }
        }
    }

    async fn serve<S>(&self, stream: S, session: Session, shutdown: watch::Receiver<bool>)
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        tracing::debug!(export = %session.export.name(), structured = session.structured, "NBD client connected");
        let served =
            transmission::serve(stream, session, &self.budget, self.idle_timeout, shutdown);
        if let Err(error) = served.await {
            tracing::debug!(%error, "NBD connection ended");
        }
    }
}

/// The handshake on a server that requires TLS: options up to STARTTLS,
/// the TLS handshake, then options again over TLS.
async fn secure<S>(
    mut stream: S,
    tls: &TlsConfig,
    exports: &Exports,
) -> Result<Option<(super::tls::TlsStream<S>, Session)>, HandshakeError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let flags = handshake::greet(&mut stream).await?;
    match handshake::options(&mut stream, exports, flags, Tls::Required).await? {
        Outcome::StartTls => {}
        Outcome::Transmit(_) | Outcome::Ended => return Ok(None),
    }
    let mut stream = tls.accept(stream).await?;
    match handshake::options(&mut stream, exports, flags, Tls::On).await? {
        Outcome::Transmit(session) => Ok(Some((stream, session))),
        Outcome::StartTls | Outcome::Ended => Ok(None),
    }
}

/// Clients refused in the TLS handshake, logged at most once per
/// [`ACCEPT_WARNING_INTERVAL`] (a client that connects in a loop must not
/// fill the log's disk), with how many were not logged.
#[derive(Default)]
struct Refusals {
    state: std::sync::Mutex<(Option<tokio::time::Instant>, u64)>,
}

impl Refusals {
    fn one(&self, error: &dyn std::fmt::Display) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (last, unlogged) = &mut *state;
        *unlogged += 1;
        let now = tokio::time::Instant::now();
        if last.is_some_and(|at| now.duration_since(at) < ACCEPT_WARNING_INTERVAL) {
            return;
        }
        tracing::info!(%error, refused = *unlogged, "NBD clients refused in the TLS handshake (logged at most every 10 s)");
        *last = Some(now);
        *unlogged = 0;
    }
}

/// Runs `served` while holding `slot`, the connection's place among those
/// served at once.
async fn holding(
    slot: Option<OwnedSemaphorePermit>,
    served: impl std::future::Future<Output = ()>,
) {
    served.await;
    drop(slot);
}

/// Clients turned away at the connection cap, warned about at most once
/// per [`ACCEPT_WARNING_INTERVAL`].
#[derive(Default)]
struct TurnedAway {
    last_warning: Option<tokio::time::Instant>,
    unreported: u64,
}

impl TurnedAway {
    fn one(&mut self, max: usize) {
        self.unreported += 1;
        let now = tokio::time::Instant::now();
        if self
            .last_warning
            .is_some_and(|at| now.duration_since(at) < ACCEPT_WARNING_INTERVAL)
        {
            return;
        }
        tracing::warn!(
            turned_away = self.unreported,
            "{max} NBD connections are open, the most --max-connections allows: new clients are disconnected until one closes"
        );
        self.last_warning = Some(now);
        self.unreported = 0;
    }
}

/// Failed accepts, warned about at most once per
/// [`ACCEPT_WARNING_INTERVAL`], with how many were not warned about.
#[derive(Default)]
struct AcceptFailures {
    last_warning: Option<tokio::time::Instant>,
    unreported: u64,
}

impl AcceptFailures {
    fn failed(&mut self, error: &io::Error) {
        let now = tokio::time::Instant::now();
        let due = self
            .last_warning
            .is_none_or(|last| now.duration_since(last) >= ACCEPT_WARNING_INTERVAL);
        if !due {
            self.unreported += 1;
            return;
        }
        tracing::warn!(%error, also_failed = self.unreported, "accepting an NBD connection failed (out of file descriptors? raise `ulimit -n`)");
        self.last_warning = Some(now);
        self.unreported = 0;
    }
}

enum Connection {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

async fn accept_one(listener: &Listener) -> io::Result<Connection> {
    match listener {
        Listener::Tcp(l) => l.accept().await.map(|(s, _)| Connection::Tcp(s)),
        Listener::Unix(l, _) => l.accept().await.map(|(s, _)| Connection::Unix(s)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_unix_listener_replaces_only_a_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("precious");
        std::fs::write(&file, "data").unwrap();
        let refused = Listener::bind(&ListenAddr::Unix(file.clone())).await;
        assert!(refused.is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "data");
        let stale = dir.path().join("stale.sock");
        drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
        let listener = Listener::bind(&ListenAddr::Unix(stale.clone())).await;
        assert!(listener.is_ok(), "{:?}", listener.err());
    }

    #[test]
    fn listen_addresses_parse() {
        assert_eq!(
            "127.0.0.1:10809".parse(),
            Ok(ListenAddr::Tcp("127.0.0.1:10809".into()))
        );
        assert_eq!(
            "[::1]:10809".parse(),
            Ok(ListenAddr::Tcp("[::1]:10809".into()))
        );
        assert_eq!(
            "unix:/run/x.sock".parse(),
            Ok(ListenAddr::Unix("/run/x.sock".into()))
        );
        assert!("10809".parse::<ListenAddr>().is_err());
        assert!("host:port".parse::<ListenAddr>().is_err());
        assert!("unix:".parse::<ListenAddr>().is_err());
    }
}
