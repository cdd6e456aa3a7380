//! Raw image files into volumes and out of them (`zeroblk volume import`
//! and `volume export`), moving only data.
//!
//! # Import: `volume import FILE NAME`
//!
//! - **What is read.** Of a file, only its data extents (`SEEK_DATA` and
//!   `SEEK_HOLE`; a file system that cannot say has data everywhere), a
//!   window at a time; its holes are known to read as zeroes. Of standard
//!   input (`-`) or a pipe, everything. Either way, each 4 KiB block that
//!   is all zeroes is written as nothing: a 100 GiB sparse image holding
//!   1 GiB of data moves about 1 GiB. A last partial block is padded with
//!   zeroes.
//! - **The volume.** If `NAME` does not exist, it is made for the image:
//!   the image's size rounded up to 4 KiB (or `--size`), with the chunk
//!   size, compression and encryption `volume create` would give it. If
//!   it exists, the image must fit (a larger one is refused before
//!   anything is written) and is written over its first bytes: where the
//!   image holds zeroes and the volume held data, that data is zeroed
//!   (only the map changes for whole chunks); past the image's end the
//!   volume is left as it was, as `dd` leaves a disk.
//! - **One writer.** The volume is opened to write, so its lease refuses
//!   it while it is attached or served anywhere (as `volume resize`
//!   does), and `--force` takes over from a writer that crashed.
//! - **Durable when it returns.** The import ends with a commit: when it
//!   returns `Ok`, the store holds the image (the engine's durability
//!   contract, point 2, `Durability::Remote`). An import that fails part
//!   way commits what it wrote and lets the volume go; running it again
//!   writes the image over that.
//!
//! # Export: `volume export NAME[@SNAP] FILE`
//!
//! - **What is read.** The volume's newest commit, or a snapshot, opened
//!   read-only (no lease: it runs beside a writer). Stretches its map
//!   says are unallocated are not read at all; the rest is read and each
//!   block of zeroes in it is left out too.
//! - **What is written.** A new file, mode 0600, the volume's size, with
//!   holes wherever the volume reads as zeroes; written beside its name
//!   and moved there once whole and synced (see `target`). It must not
//!   exist, unless `--force` (a regular file only), which replaces it.
//!   Standard output (`-`) gets every byte.
//!
//! Both tell a [`crate::engine::Meter`] of the image's bytes done (holes
//! included, as they are passed).

mod blocks;
mod error;
mod export;
mod import;
mod source;
mod target;

pub use error::ImageError;
pub use export::{ExportReport, ExportRequest, export};
pub use import::{ImportReport, ImportRequest, NewShape, import};
pub use source::ImageSource;
pub use target::ImageTarget;
