//! What a running daemon reports: [`DaemonStatus`], one snapshot of its
//! volumes' figures, its store's requests and its transports, taken when
//! asked. `zeroblk status` reads it over the daemon's control socket (as
//! JSON); the metrics endpoint ([`http`]) serves the same snapshot in
//! Prometheus's text format ([`prometheus`]). Nothing here is stored or
//! changes a volume.

pub mod http;
pub mod prometheus;

use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::engine::{Volume, VolumeStatus};
use crate::nbd::NbdServer;
use crate::store::{KindCounters, redact_credentials};
use crate::ublk::UblkOptions;

/// One daemon's figures at one moment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub pid: u32,
    /// `attach` (a block device on this host) or `serve` (NBD).
    pub role: String,
    /// The block device an attach serves, and through which transport.
    pub device: Option<String>,
    pub transport: Option<String>,
    /// How long the daemon has run, in ms.
    pub uptime_ms: u64,
    /// The store's URL, without credentials.
    pub store: String,
    pub store_requests: Vec<KindCounters>,
    pub store_retries: u64,
    pub store_bytes_read: u64,
    pub store_bytes_written: u64,
    /// NBD connections open now, where the daemon serves NBD.
    pub nbd_clients: Option<u64>,
    /// The ublk device's queues and the depth of each.
    pub ublk_queues: Option<u16>,
    pub ublk_depth: Option<u16>,
    pub volumes: Vec<VolumeStatus>,
}

/// What a daemon serves, as its status names it.
#[derive(Debug, Clone)]
pub enum Role {
    Attach { device: String, transport: String },
    Serve,
}

/// Everything a daemon reads its status from; cheap to clone.
#[derive(Clone)]
pub struct StatusSource {
    role: Role,
    started: Instant,
    volumes: Vec<Arc<Volume>>,
    nbd: Option<NbdServer>,
    ublk: Option<UblkOptions>,
}

impl StatusSource {
    /// A daemon's source: it serves `volumes` (at least one), all from one
    /// store.
    pub fn new(role: Role, volumes: Vec<Arc<Volume>>) -> StatusSource {
        StatusSource {
            role,
            started: Instant::now(),
            volumes,
            nbd: None,
            ublk: None,
        }
    }

    /// It also serves NBD clients through `server`.
    pub fn with_nbd(mut self, server: NbdServer) -> StatusSource {
        self.nbd = Some(server);
        self
    }

    /// It serves a ublk device of this geometry.
    pub fn with_ublk(mut self, options: UblkOptions) -> StatusSource {
        self.ublk = Some(options);
        self
    }

    pub fn collect(&self) -> DaemonStatus {
        let (device, transport) = match &self.role {
            Role::Attach { device, transport } => (Some(device.clone()), Some(transport.clone())),
            Role::Serve => (None, None),
        };
        let store = self.volumes.first().map(|v| v.store());
        let counters = store.map(|s| s.counters()).unwrap_or_default();
        DaemonStatus {
            pid: std::process::id(),
            role: match self.role {
                Role::Attach { .. } => "attach".into(),
                Role::Serve => "serve".into(),
            },
            device,
            transport,
            uptime_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            store: store.map_or(String::new(), |s| redact_credentials(s.url())),
            store_requests: store.map(|s| s.request_kinds()).unwrap_or_default(),
            store_retries: counters.retries,
            store_bytes_read: counters.bytes_read,
            store_bytes_written: counters.bytes_written,
            nbd_clients: self.nbd.as_ref().map(|n| n.connections() as u64),
            ublk_queues: self.ublk.map(|u| u.queues),
            ublk_depth: self.ublk.map(|u| u.depth),
            volumes: self.volumes.iter().map(|v| v.status()).collect(),
        }
    }
}

impl DaemonStatus {
    /// Its status as the control socket sends it: one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a status is always JSON")
    }
}
