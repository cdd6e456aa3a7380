//! The writer's lease: one object per volume (`volumes/NAME/lease`) that
//! says which process, on which host, writes to it.
//!
//! Every write of the lease is conditional, so two writers can never both
//! believe they hold it:
//!
//! - a free lease (no object) is taken with create-if-absent;
//! - a lease whose holder is gone (it released it, or is judged dead) is
//!   taken by replacing exactly the version that was read (If-Match): a
//!   renewal, a release or another taker landing first makes it fail, and
//!   the taker looks again;
//! - the holder renews it every third of its time to live, again by
//!   replacing the version it wrote last: once anyone else wrote it, the
//!   renewal fails and the holder stops (its writes fail, it commits
//!   nothing more). It also checks the lease before every commit.
//!
//! Whether a holder is gone is never judged by comparing two hosts'
//! clocks. Where its pid means the same process as here (same boot of the
//! same kernel, same pid namespace), by its process: does that pid still
//! run, and is it the process that started then, not a later one given
//! the same number? Anywhere else (another host, a VM, a container with
//! its own pids), by watching the lease for one time to live, measured on this
//! host's monotonic clock: a live holder renews it meanwhile, a dead one
//! does not. So attaching a volume whose writer on another host crashed
//! waits that long (30 s by default); `--force` takes the lease at once,
//! for when the operator knows the old writer is gone.
//!
//! A writer with local durability names its write-back log in the lease
//! (its id, and its folder's path and inode): once it died without
//! releasing the lease, its flushed writes may be only there. A taker that
//! may be on the same machine (the same boot in any pid namespace, or the
//! same machine id) and would open any other log, a copy of it included,
//! is refused unless forced (`record.rs`), so the log is replayed first.
//!
//! A local directory cannot replace conditionally; the store emulates it
//! under a lock (`store/local.rs`). Stores that silently ignore conditions
//! (Garage) are detected when a volume opens (`volume info` shows
//! `fencing: unsupported`): there the lease is advisory.

mod record;

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use uuid::Uuid;

use super::error::{EngineError, Result};
use crate::format::keys;
use crate::format::root::now_ms;
use crate::store::{Replaced, Store, Version};
use record::printable;
pub use record::{LeaseRecord, LogClaim, Refusal};

/// Holders alive in this process (a lease that names this process but a
/// holder not in here was left by a volume that crashed in-process).
static LIVE_HOLDERS: Mutex<Option<HashSet<Uuid>>> = Mutex::new(None);

/// The longest a taker watches a lease for renewals, whatever time to
/// live the lease claims (the bucket is not trusted to say).
const LONGEST_WATCH: Duration = Duration::from_secs(300);

/// More than any lease record zeroblk writes (a few hundred bytes, paths
/// included): a larger object in the bucket is refused unread.
const MAX_LEASE_BYTES: u64 = 64 << 10;

/// The lease this process holds on one volume; it stops counting as alive
/// here when dropped.
#[derive(Debug)]
pub struct Lease {
    key: String,
    record: LeaseRecord,
    /// The version of the lease object this holder wrote last.
    version: Version,
    /// Until then, commits wait: a takeover from a holder that may live.
    quiet_until_ms: u64,
    /// When the write that took or last renewed it was sent (what the
    /// writer's tenure counts from, see `tenure`).
    sent: Instant,
}

impl Lease {
    /// Takes the lease of volume `name` for a writer opening `log` (none:
    /// a holder that writes no log); `force` takes it from a holder that
    /// may be alive, or that died leaving its flushed writes in another
    /// log.
    pub async fn acquire(
        store: &Store,
        name: &str,
        ttl: Duration,
        force: bool,
        log: Option<LogClaim<'_>>,
    ) -> Result<Lease> {
        let key = keys::volume_file(name, "lease");
        let ours = LeaseRecord::new(ttl, "", log);
        Lease::take(store, key, ours, force, log)
            .await?
            .map_err(|refusal| match refusal {
                Refusal::Held(holder) => holder.refusal(name),
                Refusal::LogElsewhere(holder) => holder.log_elsewhere(name),
            })
    }

    /// Takes the lease at `key` for `purpose` (empty: the lease's usual
    /// holder), unless a holder that is alive has it: then the inner error
    /// is what the lease says of it.
    pub async fn acquire_at(
        store: &Store,
        key: String,
        ttl: Duration,
        force: bool,
        purpose: &str,
    ) -> Result<std::result::Result<Lease, LeaseRecord>> {
        let taken = Lease::take(
            store,
            key,
            LeaseRecord::new(ttl, purpose, None),
            force,
            None,
        );
        Ok(taken.await?.map_err(Refusal::holder))
    }

    /// Takes the lease at `key` as `ours`, for a taker opening `mine`
    /// (none: no log).
    async fn take(
        store: &Store,
        key: String,
        ours: LeaseRecord,
        force: bool,
        mine: Option<LogClaim<'_>>,
    ) -> Result<std::result::Result<Lease, Refusal>> {
        let no_log = LogClaim {
            dir: Path::new(""),
            id: None,
            inode: None,
            holds_flushed_writes: false,
        };
        let mine = mine.unwrap_or(no_log);
        loop {
            let Some((current, version)) = read_versioned(store, &key).await? else {
                crate::async_fail_point!("lease::before_create");
                let sent = Instant::now();
                match store.create_versioned(&key, encode(&ours)).await? {
                    Some(version) => return Ok(Ok(Lease::held(key, ours, version, sent, false))),
                    None => continue, // someone took it first: look again
                }
            };
            let mut may_be_alive = false;
            if let Some(holder) = current.filter(|c| !c.released) {
                let alive_here = holder.runs_in_another_process_here();
                if alive_here || (!force && holder_is_alive(store, &key, &holder).await?) {
                    return Ok(Err(Refusal::Held(holder)));
                }
                if holder.left_a_log_elsewhere(&mine) {
                    if !force {
                        return Ok(Err(Refusal::LogElsewhere(holder)));
                    }
                    tracing::warn!(
                        lease = key,
                        log = %printable(&holder.log_dir),
                        "taking the lease over (--force) without the flushed writes in the dead writer's log"
                    );
                }
                may_be_alive = force && !holder.is_dead_here();
            }
            crate::async_fail_point!("lease::before_take");
            let sent = Instant::now();
            match store
                .replace_if_unchanged(&key, encode(&ours), &version)
                .await?
            {
                Replaced::Replaced(version) => {
                    if may_be_alive {
                        tracing::warn!(
                            lease = key,
                            "took the lease over (--force) from a writer that may be alive; waiting before the first commit"
                        );
                    }
                    return Ok(Ok(Lease::held(key, ours, version, sent, may_be_alive)));
                }
                // Renewed, released or taken since it was read.
                Replaced::Changed => continue,
            }
        }
    }

    /// A lease just taken; `from_the_living` when taken (forced) from a
    /// holder that may be alive, which must first see it is taken.
    fn held(
        key: String,
        record: LeaseRecord,
        version: Version,
        sent: Instant,
        from_the_living: bool,
    ) -> Lease {
        LIVE_HOLDERS
            .lock()
            .expect("holders lock")
            .get_or_insert_with(HashSet::new)
            .insert(record.holder);
        let quiet_until_ms = match from_the_living {
            true => now_ms() + record.ttl_ms / 2,
            false => 0,
        };
        Lease {
            key,
            record,
            version,
            quiet_until_ms,
            sent,
        }
    }

    /// Who holds it, as users read it: the process and the host.
    pub fn holder_name(&self) -> String {
        self.record.holder_name()
    }

    /// How often to renew.
    pub fn renew_every(&self) -> Duration {
        Duration::from_millis((self.record.ttl_ms / 3).max(1))
    }

    /// Renews the lease; an error that is not transient means another
    /// writer took it.
    pub async fn renew(&mut self, store: &Store, name: &str) -> Result<()> {
        self.renew_as(store, name, self.record.clone()).await
    }

    /// Names the write-back log this writer opened, `log_id`, unless the
    /// lease names it already (a new log, or one that replaced a log that
    /// no longer applied): from now on its flushed writes are only there.
    /// Said before the writer acknowledges anything.
    pub async fn name_log(
        &mut self,
        store: &Store,
        name: &str,
        log_id: Uuid,
        inode: u64,
    ) -> Result<()> {
        let named = LeaseRecord {
            log_id: Some(log_id),
            log_inode: inode,
            ..self.record.clone()
        };
        if self.record.log_dir.is_empty() || named == self.record {
            return Ok(());
        }
        self.renew_as(store, name, named).await
    }

    /// Renews the lease as `record` says.
    async fn renew_as(&mut self, store: &Store, name: &str, record: LeaseRecord) -> Result<()> {
        let mut renewed = record;
        renewed.renewals += 1;
        renewed.renewed_at_ms = now_ms();
        crate::async_fail_point!("lease::before_renew");
        let sent = Instant::now();
        let replaced = store
            .replace_if_unchanged(&self.key, encode(&renewed), &self.version)
            .await?;
        let version = match replaced {
            Replaced::Replaced(version) => version,
            // Taken over, or a retried renewal of ours landed and only its
            // reply was lost: the object tells which.
            Replaced::Changed => match read_versioned(store, &self.key).await? {
                Some((Some(found), version)) if found == renewed => version,
                found => return Err(self.lost(name, found.and_then(|(r, _)| r))),
            },
        };
        self.record = renewed;
        self.version = version;
        self.sent = sent;
        Ok(())
    }

    /// When the write that took or last renewed the lease was sent.
    pub fn last_sent(&self) -> Instant {
        self.sent
    }

    /// Checks the lease is still ours, and waits out a takeover's quiet
    /// time; called before every commit.
    pub async fn check(&self, store: &Store, name: &str) -> Result<()> {
        let wait = self.quiet_until_ms.saturating_sub(now_ms());
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        match read(store, &self.key).await? {
            Some(found) if found.holder == self.record.holder && !found.released => Ok(()),
            found => Err(self.lost(name, found)),
        }
    }

    fn lost(&self, name: &str, found: Option<LeaseRecord>) -> EngineError {
        EngineError::LeaseLost {
            name: name.to_string(),
            by: found.map_or_else(
                || "nobody (it was deleted)".into(),
                |found| found.holder_name(),
            ),
        }
    }

    /// Gives the lease up, if it is still ours: marks it released, by the
    /// same conditional replace as a renewal.
    pub async fn release(&self, store: &Store) -> Result<()> {
        let released = LeaseRecord {
            released: true,
            renewed_at_ms: now_ms(),
            ..self.record.clone()
        };
        // Changed: someone else holds it now, and it is theirs to keep.
        store
            .replace_if_unchanged(&self.key, encode(&released), &self.version)
            .await?;
        Ok(())
    }

    /// Stops counting as alive in this process, as a killed process's
    /// lease would (for crash tests: tasks still holding the volume end
    /// later than a killed process's would).
    pub fn holder_died(&self) {
        self.holder().died();
    }

    /// Who holds this lease, to say later that it died.
    pub fn holder(&self) -> Holder {
        Holder(self.record.holder)
    }
}

/// The holder of a lease this process took.
#[derive(Debug, Clone, Copy)]
pub struct Holder(Uuid);

impl Holder {
    /// The holder stops counting as alive in this process: a volume opened
    /// here again may take the lease at once. Said when the volume is
    /// dropped, with its tasks aborted: tasks still ending must not make
    /// a reopen find the lease held (a late PUT of theirs fails, since the
    /// reopen claims the next generation first).
    pub fn died(self) {
        if let Some(live) = LIVE_HOLDERS.lock().expect("holders lock").as_mut() {
            live.remove(&self.0);
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.holder_died();
    }
}

/// Whether the holder of `current` (the lease at `key`) is alive: on this
/// host, its process; elsewhere, whether it renews the lease within one
/// time to live, watched on this host's clock.
async fn holder_is_alive(store: &Store, key: &str, current: &LeaseRecord) -> Result<bool> {
    if current.shares_pid_space() {
        return Ok(current.holder_runs_here());
    }
    let ttl = current.ttl();
    tracing::info!(
        lease = key,
        holder = %current.holder_name(),
        "the lease is held on another host (or another pid namespace); watching it for {} to see whether its holder renews it (--force takes it over now)",
        humantime::format_duration(ttl)
    );
    let watch_until = Instant::now() + ttl;
    loop {
        let left = watch_until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        tokio::time::sleep(left.min(ttl / 4).max(Duration::from_millis(10))).await;
        match read(store, key).await? {
            Some(found) if found == *current => {}
            // Renewed (alive), or taken by someone else (who is).
            Some(found) if !found.released => return Ok(true),
            // Released or gone: free.
            _ => return Ok(false),
        }
    }
}

/// The lease on volume `name`, unless it was released or its holder, on
/// this host (its pid space), is gone. A holder elsewhere counts as alive: telling
/// would take a time to live of watching.
pub async fn live_holder(store: &Store, name: &str) -> Result<Option<LeaseRecord>> {
    let record = read(store, &keys::volume_file(name, "lease")).await?;
    Ok(record.filter(|r| !r.released && (!r.shares_pid_space() || r.holder_runs_here())))
}

/// Who writes volume `name` (`pid P on HOST`), if a writer that may be
/// alive holds its lease.
pub async fn writer_of(store: &Store, name: &str) -> Result<Option<String>> {
    Ok(live_holder(store, name).await?.map(|r| r.holder_name()))
}

/// The folder of the write-back log volume `name`'s last writer left, if
/// it died on this host without detaching while it acknowledged flushes:
/// writes in it may be missing from the store's last commit.
pub async fn dead_writers_log(store: &Store, name: &str) -> Result<Option<String>> {
    let record = read(store, &keys::volume_file(name, "lease")).await?;
    Ok(record
        .filter(|r| !r.released && r.log_id.is_some() && r.is_dead_here())
        .map(|r| printable(&r.log_dir)))
}

/// Whether volume `name`'s lease is held (taken and not released), by a
/// holder alive or not; a lease that cannot be read may be.
pub async fn is_held(store: &Store, name: &str) -> Result<bool> {
    let found = read_versioned(store, &keys::volume_file(name, "lease")).await?;
    Ok(found.is_some_and(|(record, _)| record.is_none_or(|r| !r.released)))
}

async fn read(store: &Store, key: &str) -> Result<Option<LeaseRecord>> {
    Ok(read_versioned(store, key).await?.and_then(|(r, _)| r))
}

/// The lease object at `key` and its version; the record is `None` when
/// the object is unreadable (which protects nothing).
async fn read_versioned(
    store: &Store,
    key: &str,
) -> Result<Option<(Option<LeaseRecord>, Version)>> {
    let Some((bytes, version)) = store.get_versioned_at_most(key, MAX_LEASE_BYTES).await? else {
        return Ok(None);
    };
    Ok(Some((serde_json::from_slice(&bytes).ok(), version)))
}

fn encode(record: &LeaseRecord) -> Bytes {
    Bytes::from(serde_json::to_vec(record).expect("a lease serializes"))
}
