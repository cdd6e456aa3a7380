//! The NBD server: zeroblk's fallback for kernels without ublk, and its way
//! to serve remote hosts.
//!
//! - [`proto`]: the wire format, pure encode and decode, fuzzed;
//! - [`handshake`]: fixed newstyle negotiation, up to the export a client
//!   picks (and, with TLS required, nothing but STARTTLS before it);
//! - [`tls`]: the server's TLS credentials (certificates or pre-shared
//!   keys) and the TLS handshake; the only module that uses OpenSSL;
//! - [`transmission`]: one connection's requests, pipelined: many in
//!   flight, replies in any order;
//! - [`server`]: listeners (TCP and Unix sockets) and shutdown.
//!
//! What a client is promised: a FLUSH covers every write that completed on
//! any connection to the same export (hence `CAN_MULTI_CONN`), because all
//! connections share one engine volume, whose flush covers every
//! acknowledged write. Malformed input gets an error reply or a clean
//! disconnect; it never panics and never touches a byte of the volume.

mod budget;
pub mod handshake;
pub mod proto;
mod reply;
pub mod server;
pub mod tls;
pub mod transmission;

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::engine::Volume;

pub use budget::ServerBudget;
pub use server::{ListenAddr, NbdServer};
pub use tls::{TlsConfig, TlsError};

/// The largest request payload (and read) the server takes: 32 MiB.
pub const MAX_REQUEST_LEN: u32 = 32 << 20;

/// One volume offered to clients under a name: read-only (and advertised
/// so) when the volume was opened read-only.
pub struct Export {
    name: String,
    volume: Arc<Volume>,
}

impl Export {
    pub fn new(name: &str, volume: Arc<Volume>) -> Export {
        Export {
            name: name.to_string(),
            volume,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn volume(&self) -> &Arc<Volume> {
        &self.volume
    }

    /// The transmission flags this export advertises.
    pub fn transmission_flags(&self, structured: bool) -> u16 {
        use proto::tflags::*;
        let mut flags = HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_CACHE | CAN_MULTI_CONN;
        if self.volume.is_read_only() {
            flags |= READ_ONLY;
        } else {
            flags |= SEND_TRIM | SEND_WRITE_ZEROES | SEND_FAST_ZERO;
        }
        if structured {
            flags |= SEND_DF;
        }
        flags
    }

    /// Minimum, preferred and maximum block sizes.
    pub fn block_sizes(&self) -> (u32, u32, u32) {
        let minimum = self.volume.block_size() as u32;
        let preferred = (self.volume.chunk_size() as u32).min(MAX_REQUEST_LEN);
        (minimum, preferred, MAX_REQUEST_LEN)
    }
}

/// The exports of a server, by name.
#[derive(Default)]
pub struct Exports {
    by_name: BTreeMap<String, Arc<Export>>,
}

impl Exports {
    pub fn add(&mut self, export: Export) {
        self.add_shared(Arc::new(export));
    }

    /// Adds an export another server (the kernel's connection) also uses.
    pub fn add_shared(&mut self, export: Arc<Export>) {
        self.by_name.insert(export.name.clone(), export);
    }

    /// The export a client names; the empty name means the only export,
    /// or the one called `default`.
    pub fn find(&self, name: &str) -> Option<Arc<Export>> {
        if name.is_empty() {
            if self.by_name.len() == 1 {
                return self.by_name.values().next().cloned();
            }
            return self.by_name.get("default").cloned();
        }
        self.by_name.get(name).cloned()
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.by_name.keys().map(String::as_str)
    }

    pub fn volumes(&self) -> impl Iterator<Item = &Arc<Volume>> {
        self.by_name.values().map(|e| &e.volume)
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}
