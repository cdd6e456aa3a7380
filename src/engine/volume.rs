//! The volume every transport serves: one type for a volume opened to
//! write (`writer`: the lease, the write-back log, the uploader) and one
//! opened read-only (`reader`: a snapshot, or a volume read beside its
//! writer), so transports hold an `Arc<Volume>` either way.

use super::error::Result;
use super::options::{EngineOptions, Follow};
use super::read::{Extent, ReadData};
use super::reader::Reader;
use super::snapshot::{SnapshotInfo, VolumeRef};
use super::stats::VolumeCounters;
use super::status::VolumeStatus;
use super::write::WriteBuffer;
use super::writer::Writer;
use crate::format::{BLOCK_SIZE, Superblock};
use crate::store::{Fencing, Store};

/// An open volume. Reads, writes, flushes and discards may run
/// concurrently from any number of tasks; see the module documentation of
/// [`crate::engine`] for what each guarantees. One opened read-only
/// refuses writes, discards and zeroes with EROFS.
pub struct Volume {
    access: Access,
}

enum Access {
    Write(Writer),
    /// Boxed: larger than a writer, whose state is behind an `Arc`.
    Read(Box<Reader>),
}

impl Volume {
    /// Opens the volume `name` of `store` for reading and writing,
    /// replaying what its write-back log holds beyond the store. It takes
    /// the volume's lease: one writer at a time.
    pub async fn open(store: &Store, name: &str, options: EngineOptions) -> Result<Volume> {
        let writer = Writer::open(store, name, options).await?;
        Ok(Volume {
            access: Access::Write(writer),
        })
    }

    /// Opens `what` (`NAME` or `NAME@SNAP`) for reading only: no lease, no
    /// lock, no log, so it opens beside the volume's writer, on any host.
    /// A volume's newest root is followed as `follow` says; a snapshot
    /// cannot be followed.
    pub async fn open_read_only(
        store: &Store,
        what: &VolumeRef,
        follow: Follow,
        options: EngineOptions,
    ) -> Result<Volume> {
        let reader = Reader::open(store, what, follow, &options).await?;
        Ok(Volume {
            access: Access::Read(Box::new(reader)),
        })
    }

    /// The volume's name (without the snapshot of a `NAME@SNAP`).
    pub fn name(&self) -> &str {
        match &self.access {
            Access::Write(writer) => writer.name(),
            Access::Read(reader) => reader.what().name(),
        }
    }

    /// Whether writes, discards and zeroes are refused.
    pub fn is_read_only(&self) -> bool {
        matches!(self.access, Access::Read(_))
    }

    /// The volume's size in bytes (for a reader, the size it opened with).
    pub fn size(&self) -> u64 {
        match &self.access {
            Access::Write(writer) => writer.size(),
            Access::Read(reader) => reader.size(),
        }
    }

    /// The store it is kept in (for its request figures).
    pub fn store(&self) -> &Store {
        match &self.access {
            Access::Write(writer) => writer.store(),
            Access::Read(reader) => reader.store(),
        }
    }

    /// Reads and writes must be aligned to this many bytes.
    pub fn block_size(&self) -> u64 {
        BLOCK_SIZE
    }

    pub fn chunk_size(&self) -> u64 {
        self.superblock().chunk_size
    }

    pub fn superblock(&self) -> &Superblock {
        match &self.access {
            Access::Write(writer) => writer.superblock(),
            Access::Read(reader) => reader.superblock(),
        }
    }

    /// Whether the store can refuse a second writer (see [`Fencing`]);
    /// `None` for a volume opened read-only, which takes no lease.
    pub fn fencing(&self) -> Option<Fencing> {
        match &self.access {
            Access::Write(writer) => Some(writer.fencing()),
            Access::Read(_) => None,
        }
    }

    pub fn counters(&self) -> VolumeCounters {
        match &self.access {
            Access::Write(writer) => writer.counters(),
            Access::Read(reader) => reader.counters(),
        }
    }

    /// Reads `buf.len()` bytes at byte `offset`.
    pub async fn read(&self, offset: u64, buf: &mut [u8]) -> Result<()> {
        self.read_parts(offset, buf.len()).await?.copy_to(buf);
        Ok(())
    }

    /// The volume's figures for `zeroblk status` and the metrics.
    pub fn status(&self) -> VolumeStatus {
        match &self.access {
            Access::Write(writer) => writer.status(),
            Access::Read(reader) => reader.status(),
        }
    }

    /// Reads `len` bytes at byte `offset`, as the parts the engine holds.
    pub async fn read_parts(&self, offset: u64, len: usize) -> Result<ReadData> {
        match &self.access {
            Access::Write(writer) => writer.read_parts(offset, len).await,
            Access::Read(reader) => reader.read_parts(offset, len).await,
        }
    }

    /// Which parts of `len` bytes at `offset` hold data and which read as
    /// zeroes without being stored (holes), at chunk granularity: a chunk
    /// with any data in it counts as data.
    pub async fn allocation(&self, offset: u64, len: u64) -> Result<Vec<Extent>> {
        match &self.access {
            Access::Write(writer) => writer.allocation(offset, len).await,
            Access::Read(reader) => reader.allocation(offset, len).await,
        }
    }

    /// Starts fetching the committed chunks covering `len` bytes at
    /// `offset` into the cache, without waiting (NBD's CACHE command).
    pub fn prefetch(&self, offset: u64, len: u64) -> Result<()> {
        match &self.access {
            Access::Write(writer) => writer.prefetch(offset, len),
            Access::Read(reader) => reader.prefetch(offset, len),
        }
    }

    /// Writes `data` at byte `offset`; with `fua`, also flushes.
    pub async fn write(&self, offset: u64, data: &[u8], fua: bool) -> Result<()> {
        self.write_buffer(offset, WriteBuffer::copy_of(data), fua)
            .await
    }

    /// Writes the data of `buffer` at byte `offset`, without copying it;
    /// with `fua`, also flushes.
    pub async fn write_buffer(&self, offset: u64, buffer: WriteBuffer, fua: bool) -> Result<()> {
        self.writer()?.write_buffer(offset, buffer, fua).await
    }

    /// Discards `len` bytes at `offset`: they read as zeroes afterwards.
    /// Whole chunks only change the map; nothing is uploaded for them.
    pub async fn discard(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.writer()?.discard(offset, len, fua).await
    }

    /// Writes zeroes over `len` bytes at `offset`, as cheaply as a discard.
    pub async fn write_zeroes(&self, offset: u64, len: u64, fua: bool) -> Result<()> {
        self.writer()?.write_zeroes(offset, len, fua).await
    }

    /// Grows the volume to `new_size` bytes and commits that.
    pub async fn resize(&self, new_size: u64) -> Result<()> {
        self.writer()?.resize(new_size).await
    }

    /// Makes every write acknowledged before this call durable, as the
    /// volume's durability mode defines it (a reader has none to make).
    pub async fn flush(&self) -> Result<()> {
        match &self.access {
            Access::Write(writer) => writer.flush().await,
            Access::Read(_) => Ok(()),
        }
    }

    /// Commits every acknowledged write to the store now, whatever the
    /// durability mode, and returns when the store holds them.
    pub async fn commit(&self) -> Result<()> {
        match &self.access {
            Access::Write(writer) => writer.commit().await,
            Access::Read(_) => Ok(()),
        }
    }

    /// Commits every write acknowledged before this call, then pins the
    /// committed root as snapshot `label` (or one named after the time):
    /// a snapshot holds at least every write acknowledged before it was
    /// asked for. A reader refuses: it has nothing to commit, and `volume
    /// snapshot create` pins the newest commit without it.
    pub async fn snapshot(&self, label: Option<&str>) -> Result<SnapshotInfo> {
        self.writer()?.snapshot(label).await
    }

    /// Flushes, commits everything to the store and stops the volume's
    /// background work (a reader stops following). Writes fail with a
    /// "closed" error afterwards.
    pub async fn close(&self) -> Result<()> {
        match &self.access {
            Access::Write(writer) => writer.close().await,
            Access::Read(reader) => {
                reader.close().await;
                Ok(())
            }
        }
    }

    /// The writer behind a request that writes; a reader refuses it.
    fn writer(&self) -> Result<&Writer> {
        match &self.access {
            Access::Write(writer) => Ok(writer),
            Access::Read(reader) => Err(reader.refusal()),
        }
    }

    /// For crash tests: stops the volume as `kill -9` would. With
    /// `power_loss`, the machine loses power too: whatever the log had not
    /// made durable may be lost (see [`super::simulate_power_cuts`]).
    #[cfg(feature = "failpoints")]
    #[doc(hidden)]
    pub async fn crash(self, power_loss: bool, seed: u64) {
        self.crash_in_use(power_loss, seed).await;
    }

    /// [`Volume::crash`], for a volume that other tasks still hold (in an
    /// `Arc`): its lock goes when the last of them lets it go.
    #[cfg(feature = "failpoints")]
    #[doc(hidden)]
    pub async fn crash_in_use(&self, power_loss: bool, seed: u64) {
        match &self.access {
            Access::Write(writer) => writer.crash_in_use(power_loss, seed).await,
            Access::Read(reader) => reader.close().await,
        }
    }
}
