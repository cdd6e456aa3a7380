//! The volume engine: a block device's bytes in a chunk store.
//!
//! Every transport (ublk, NBD) serves a [`Volume`]: async `read`, `write`
//! (with FUA), `flush`, `discard` and `write_zeroes` on 4 KiB-aligned
//! ranges, any number at once. A volume is opened to write
//! ([`Volume::open`]: the lease, the write-back log) or read-only
//! ([`Volume::open_read_only`]: a snapshot `NAME@SNAP`, or a volume read
//! beside its writer, pinned or following its commits, see `reader`),
//! which refuses writes, discards and zeroes with EROFS. Misaligned or out-of-range requests fail
//! with [`EngineError::Unaligned`] or [`EngineError::OutOfRange`], whose
//! [`EngineError::errno`] is `EINVAL` (`ENOSPC` for a write past the end,
//! as NBD asks). [`EngineError::kind`] sorts every error into a few
//! [`ErrorKind`]s for callers; `errno` is the one mapping both transports
//! use.
//!
//! # Durability and consistency contract
//!
//! 1. **Acknowledged writes are visible, and in the log without a gap.**
//!    Once `write` returns, every later `read` returns the new bytes (or
//!    newer ones), and every record before its own in the write-back log
//!    is written: replay, which stops at a gap, never stops before it.
//! 2. **A flush makes everything acknowledged before it durable.** `flush`,
//!    and a write with FUA, return only when every write, discard and
//!    zeroing acknowledged before the call survives a crash:
//!    - `Durability::Local` (the default): the write-back log in the cache
//!      directory is fsynced, and so is every directory that leads to it
//!      (made durable as it is created); the upload follows in the
//!      background;
//!    - `Durability::Remote`: the data is committed to the object store.
//!
//!    A sync that ends after the volume stopped (a crash, a lost lease)
//!    acknowledges nothing. A failed fsync stops the volume, and is never
//!    tried again: the kernel may have dropped the pages it could not
//!    write, and a second fsync would report them safe.
//! 3. **The store only ever holds states the device was in.** Writes are
//!    grouped in epochs, cut at each flush (and when the uploader decides).
//!    The uploader commits generations in epoch order, each containing
//!    whole epochs: the store holds the device's state at some epoch
//!    boundary, never a mix of older and newer writes.
//! 4. **Recovery.** After a crash the log is replayed on top of the newest
//!    committed generation, and what it kept is fsynced before anything is
//!    served; the result holds every flushed write. After a
//!    process crash (`kill -9`) it holds every acknowledged write too;
//!    after a power cut, each block past the last flush holds what it held
//!    at that flush or a later write, as a disk's volatile write cache
//!    would leave it. If the cache directory is lost, the volume opens at
//!    its newest committed generation: consistent, as of some epoch
//!    boundary (every write completed before it, none issued after),
//!    possibly older than the last local flush (with `Durability::Local`).
//! 5. **Nothing wrong is ever returned.** Every chunk and page read from
//!    the store is checked against its BLAKE3 name, a mismatch is an
//!    error, never data; a log record that fails its crc32c is never
//!    replayed.
//! 6. **One writer.** A writer holds the volume's lease, taken and renewed
//!    only by conditional writes, never judged by another host's clock
//!    (`lease`); a holder is judged dead by its process only where its pid
//!    means that process (same boot, same pid namespace, same start time),
//!    elsewhere by its renewals stopping. A writer acknowledges nothing
//!    later than three quarters of a time to live after the last renewal
//!    it sent that went through (`tenure`), so it has stopped before any
//!    taker can judge it gone. Before it serves anything it claims the next generation
//!    (a root that changes nothing), so a commit of a writer it took over
//!    from can no longer land. A commit writes its root with
//!    create-if-absent; a writer that finds its generation taken by another
//!    writer stops ([`EngineError::Fenced`]), one that finds gc's barrier
//!    there builds the commit again on top of it. Stores that ignore
//!    conditional writes are detected when a volume opens
//!    ([`crate::store::Fencing`]). A writer with local durability names
//!    its log in the lease before it acknowledges anything: once it is
//!    dead, a taker that may be on the same machine and would open
//!    another log is refused ([`EngineError::LogElsewhere`], unless
//!    forced), so its flushed writes are replayed from that log, never
//!    left behind unasked.
//! 7. **gc takes nothing in use.** No object referenced by a root
//!    published after `zeroblk gc` started is deleted, whatever the timing:
//!    every object a commit uploads is a new one, and gc's barrier makes a
//!    commit in flight upload again after gc's listing (see `gc`). A
//!    snapshot keeps what it pinned until it is deleted; a clone keeps
//!    what it shares with its source whatever becomes of the source; a
//!    snapshot, clone or rollback never pins a root while gc runs (both
//!    hold gc's lease); and a root replaced by a newer one stays for the
//!    grace period after, for readers that found it newest.
//! 8. **Readers see whole commits.** A volume opened read-only takes no
//!    lease, no lock and no log; each of its requests reads one committed
//!    root, loaded once at its start, so it never sees a mix of two
//!    commits. A follower moves to newer roots only, between requests.
//!
//! # Flow control
//!
//! Writes never wait for the store until `max_dirty_bytes` are waiting to
//! be uploaded; then they wait for uploads (backpressure). A flush never
//! blocks writers for longer than an epoch switch (one atomic operation and
//! a pointer swap); reads and writes take no volume-wide lock.
//!
//! # Layout
//!
//! Bottom up (a module uses only those above it in this list;
//! `scripts/module_cycles.py` checks that no two import each other):
//!
//! - `error`, `options`, `stats` (request counters), `meter` (how far a
//!   long operation got, for a progress bar), `background` (a
//!   low-priority pool for commit CPU work), `tenure` (until when the lease
//!   lets this writer acknowledge);
//! - `log/`: the write-back log. Its files (`file`, `segment`, `record`,
//!   the folder in `mod.rs`, and in tests their simulated power cuts),
//!   `overlay` (what an epoch changed, and where in the log), `rewrite`
//!   (the table of copies an open epoch may overwrite), `epoch` (an
//!   epoch's reservations, how far it is written, its rewrite claims),
//!   `sealed` (the sealed epochs a view shares with the views before it),
//!   `replay`, and `journal` (the log of an open volume: its files, its
//!   epochs and the view readers and writers share; sealing epochs and
//!   retiring segments);
//! - `resolve`: where each byte of a chunk is (log, zero, committed), for
//!   reads and commits alike;
//! - `chunks` (committed chunks and pages: caches, single-flight fetches,
//!   read-ahead), `backlog` (dirty and log bytes, and the admission of
//!   writes), `progress` (the durable and committed epochs, and the
//!   volume's failure), `local` (the volume's folder and its lock), `lease`
//!   (one writer), `catalog` (the volumes of a store, their superblocks
//!   and roots);
//! - `read`: the read path writers and readers share: a request's
//!   stretches resolved through the log's epochs (if any) over one
//!   committed root, and read from the log and `chunks`;
//! - `shared`: what a writer's request paths and background tasks share
//!   (the volume's identity, settings and components, all private behind
//!   accessors), and stopping the volume;
//! - `write`, `flush` (sealing, and syncing the log under the `log`
//!   syncer's lead), `commit`, `uploader`, `gc` (and the hold that keeps
//!   it out while a root is pinned);
//! - `snapshot/`: `NAME@SNAP`, snapshots (pinned roots), their usage and
//!   pruning, and clones; `verify` (of a volume or a snapshot); `copy/`
//!   (a snapshot to and from another store);
//! - `writer`: opens a volume to write, wires the above together and runs
//!   its background tasks (its snapshot commits, then pins); `reader`:
//!   opens one read-only (a snapshot, or a volume pinned or following its
//!   writer's roots);
//! - `volume`: the public [`Volume`], a writer or a reader;
//! - `rollback`: a snapshot becomes the newest state, through a closed
//!   volume and the writer's lease.
//!
//! # Paths
//!
//! - **A write** (`write`): the backlog admits it; the open epoch reserves
//!   its record's place in the log (or an older copy of the same extent is
//!   claimed, `rewrite`); the record is written (`log`) and entered in the
//!   epoch's overlay; it is acknowledged once every record before it in the
//!   log is written (`epoch`) and the lease's tenure holds.
//! - **A flush** (`volume`, `flush`): the `journal` seals the open epoch
//!   and publishes a new one in the view; then the flush takes the log's
//!   sync lead (`log::Syncer`), unless a sync that covers its epoch has
//!   ended meanwhile, waits for every sealed epoch's writes to drain,
//!   fsyncs their segments once for all of them (on its own thread when
//!   the sync is small and the disk fast), and publishes them durable
//!   (`progress`), unless the volume has stopped.
//! - **A commit** (`uploader`, `commit`): sealed epochs are made durable
//!   as a flush makes them, then built into chunks (`resolve` assembles each from the committed chunk,
//!   via `chunks`, and the log), packed and uploaded, then the map pages,
//!   then the root with create-if-absent after a lease check (`catalog`,
//!   `lease`); the `journal` installs a view without the committed epochs
//!   and retires segments nothing needs, and the `backlog` frees their
//!   bytes.
//! - **A read** (`read`): one snapshot of the view; `resolve` finds each
//!   stretch in the open and sealed epochs' overlays, else the committed
//!   map; log stretches are read from the log, committed ones from
//!   `chunks` (memory, then disk, then the store), and read-ahead starts
//!   first when the read continues the previous one.
//! - **A read of a read-only volume** (`reader`): the same path over one
//!   root alone. A follower's task polls for the next generation
//!   (`catalog`) and swaps the root between requests; a request that meets
//!   an object gc took runs once more, whole, on the newest root.

mod background;
mod backlog;
mod catalog;
mod chunks;
mod commit;
mod copy;
mod error;
mod flush;
mod gc;
mod lease;
mod local;
mod log;
mod meter;
mod options;
mod progress;
mod read;
mod reader;
mod resolve;
mod rollback;
mod shared;
mod snapshot;
mod stats;
mod status;
mod tenure;
mod uploader;
mod verify;
mod volume;
mod write;
mod writer;

pub use catalog::{
    MAX_VOLUME_SIZE, NewVolume, VolumeInfo, check_finished, check_password, create, delete,
    delete_unused, list, read_volume_file, rekey, validate_size, write_volume_file,
};
pub use copy::{
    CopyError, CopyProgress, CopyReport, CopyRequest, Moved, Quiet, Tally, copy as copy_volume,
};
pub use error::{EngineError, ErrorKind, Result};
pub use gc::{
    GcOptions, GcReport, MIN_GRACE_WHILE_ATTACHED, collect as collect_garbage,
    collect_metered as collect_garbage_metered,
};
pub use lease::{dead_writers_log, writer_of};
pub use local::volume_dir as local_dir;
pub use meter::{Meter, Unit, Unmetered};
pub use options::{Durability, EngineOptions, Follow};
pub use read::{Extent, ReadData, ReadPart};
pub use rollback::{RolledBack, rollback};
pub use snapshot::{
    SnapshotInfo, VolumeRef, clone as clone_volume, create as create_snapshot,
    delete as delete_snapshot, info, list as list_snapshots,
    list_with_usage as list_snapshots_with_usage, open_root, prune as prune_snapshots,
};
pub use stats::{RequestCounts, VolumeCounters};
pub use status::{LeaseStatus, VolumeStatus};
pub use verify::{BadObject, VerifyReport, verify, verify_metered};
pub use volume::Volume;
pub use write::WriteBuffer;
#[cfg(feature = "failpoints")]
pub use writer::simulate_power_cuts;
