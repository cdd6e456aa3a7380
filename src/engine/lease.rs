//! The writer's lease: one object per volume (`volumes/NAME/lease`) that
//! says which process, on which host, writes to it.
//!
//! - Opening a volume takes the lease, unless another writer holds it:
//!   a live process on this host, or another host that renewed it within
//!   its time to live. Then the open is refused, naming the holder;
//!   `--force` takes it over (after a crash on another host).
//! - The holder renews it every third of its time to live, and checks it
//!   before every commit. A writer that finds the lease taken stops at
//!   once: it commits nothing more, and its writes fail.
//! - A renewal reads the lease, then replaces it only if it is still the
//!   version this holder wrote (If-Match), so a takeover landing between
//!   the read and the write is never overwritten. Stores that cannot
//!   replace conditionally (a local directory; Garage ignores the
//!   condition) have only the read: there a takeover in that instant can
//!   be undone, and the taker finds the lease lost at its first commit.
//! - A writer that takes the lease over from a holder that may be alive
//!   waits half the time to live before its first commit, so the old
//!   holder's next check (or renewal) sees the takeover first. On stores
//!   that enforce create-if-absent, the commit itself fences whatever
//!   slips through; on stores that cannot (see `volume info`), the lease
//!   is the only guard.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::error::{EngineError, Result};
use crate::format::keys;
use crate::format::root::now_ms;
use crate::store::{Replaced, Store, Version};

/// Holders alive in this process (a lease that names this process but a
/// holder not in here was left by a volume that crashed in-process).
static LIVE_HOLDERS: Mutex<Option<HashSet<Uuid>>> = Mutex::new(None);

/// What the lease object says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRecord {
    pub holder: Uuid,
    pub host: String,
    pub pid: u32,
    pub renewed_at_ms: u64,
    pub ttl_ms: u64,
}

impl LeaseRecord {
    /// Whether its holder may still be writing.
    fn may_be_alive(&self) -> bool {
        if self.host == hostname() {
            if self.pid == std::process::id() {
                return LIVE_HOLDERS
                    .lock()
                    .expect("holders lock")
                    .as_ref()
                    .is_some_and(|live| live.contains(&self.holder));
            }
            return crate::process::is_running(self.pid);
        }
        now_ms() < self.renewed_at_ms.saturating_add(self.ttl_ms)
    }
}

/// The lease this process holds on one volume; it stops counting as alive
/// here when dropped.
#[derive(Debug)]
pub struct Lease {
    key: String,
    record: LeaseRecord,
    /// The version of the lease object this holder wrote last.
    version: Version,
    /// Whether renewals replace that version only (false once the store
    /// said it cannot).
    conditional: bool,
    /// Until then, commits wait: a takeover from a holder that may live.
    quiet_until_ms: u64,
}

fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown-host".into())
}

impl Lease {
    /// Takes the lease of volume `name`; `force` takes it from a holder
    /// that may be alive.
    pub async fn acquire(store: &Store, name: &str, ttl: Duration, force: bool) -> Result<Lease> {
        let key = keys::volume_file(name, "lease");
        let current = read(store, &key).await?;
        let contested = current.as_ref().is_some_and(LeaseRecord::may_be_alive);
        if let Some(holder) = current.filter(|_| contested && !force) {
            return Err(EngineError::Leased {
                name: name.to_string(),
                host: holder.host,
                pid: holder.pid,
            });
        }
        let record = LeaseRecord {
            holder: Uuid::new_v4(),
            host: hostname(),
            pid: std::process::id(),
            renewed_at_ms: now_ms(),
            ttl_ms: ttl.as_millis() as u64,
        };
        let version = write(store, &key, &record).await?;
        LIVE_HOLDERS
            .lock()
            .expect("holders lock")
            .get_or_insert_with(HashSet::new)
            .insert(record.holder);
        let quiet_until_ms = if contested {
            tracing::warn!(
                volume = name,
                "took the lease over from a writer that may be alive; waiting before the first commit"
            );
            now_ms() + record.ttl_ms / 2
        } else {
            0
        };
        Ok(Lease {
            key,
            record,
            version,
            conditional: true,
            quiet_until_ms,
        })
    }

    /// How often to renew.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis((self.record.ttl_ms / 3).max(1))
    }

    /// Checks the lease is still ours and renews it; an error that is not
    /// transient means another writer took it.
    pub async fn renew(&mut self, store: &Store, name: &str) -> Result<()> {
        self.check(store, name).await?;
        let mut renewed = self.record.clone();
        renewed.renewed_at_ms = now_ms();
        if self.conditional {
            match store
                .replace_if_unchanged(&self.key, encode(&renewed), &self.version)
                .await?
            {
                Replaced::Replaced(version) => {
                    self.record = renewed;
                    self.version = version;
                    return Ok(());
                }
                // Taken over since the check, or an attempt of ours landed
                // and only its reply was lost: the check tells which.
                Replaced::Changed => self.check(store, name).await?,
                Replaced::Unsupported => self.conditional = false,
            }
        }
        self.record = renewed;
        self.version = write(store, &self.key, &self.record).await?;
        Ok(())
    }

    /// Checks the lease is still ours, and waits out a takeover's quiet
    /// time; called before every commit.
    pub async fn check(&self, store: &Store, name: &str) -> Result<()> {
        let wait = self.quiet_until_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        match read(store, &self.key).await? {
            Some(found) if found.holder == self.record.holder => Ok(()),
            found => Err(EngineError::LeaseLost {
                name: name.to_string(),
                by: found.map_or_else(
                    || "nobody (it was deleted)".into(),
                    |f| format!("pid {} on {}", f.pid, f.host),
                ),
            }),
        }
    }

    /// Gives the lease up, if it is still ours.
    pub async fn release(&self, store: &Store) -> Result<()> {
        if read(store, &self.key)
            .await?
            .is_some_and(|f| f.holder == self.record.holder)
        {
            store.delete(&self.key).await?;
        }
        Ok(())
    }
}

impl Lease {
    /// Stops counting as alive in this process, as a killed process's
    /// lease would (for crash tests: tasks still holding the volume end
    /// later than a killed process's would).
    pub fn holder_died(&self) {
        if let Some(live) = LIVE_HOLDERS.lock().expect("holders lock").as_mut() {
            live.remove(&self.record.holder);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.holder_died();
    }
}

/// The lease on volume `name`, if its holder may still be writing.
pub async fn live_holder(store: &Store, name: &str) -> Result<Option<LeaseRecord>> {
    let record = read(store, &keys::volume_file(name, "lease")).await?;
    Ok(record.filter(LeaseRecord::may_be_alive))
}

async fn read(store: &Store, key: &str) -> Result<Option<LeaseRecord>> {
    let Some(bytes) = store.get(key).await? else {
        return Ok(None);
    };
    // An unreadable lease protects nothing: treat it as absent.
    Ok(serde_json::from_slice(&bytes).ok())
}

async fn write(store: &Store, key: &str, record: &LeaseRecord) -> Result<Version> {
    Ok(store.put_versioned(key, encode(record)).await?)
}

fn encode(record: &LeaseRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("a lease serializes"))
}
