//! zeroblk: a Linux block device on object storage.
//!
//! The crate is layered, one module per concern, each owning its
//! dependency:
//!
//! - [`store`]: the object store (the only user of `object_store`);
//! - [`format`]: what every object in the store means, versioned;
//! - [`crypto`]: encryption at rest, an encrypted volume's keys (the only
//!   user of the cryptography crates);
//! - [`cache`]: memory and disk caches of chunks (the only user of moka);
//! - [`engine`]: volumes, their write-back log, flushes and commits, and
//!   the durability contract every transport relies on;
//! - [`nbd`]: the NBD server; [`kernel_nbd`]: the kernel's NBD client;
//! - [`attach`]: block devices on this host, their daemon and registry;
//! - [`provision`]: btrfs on an attached device, its snapshots, quotas and
//!   NFS share (the only module that runs system tools);
//! - [`backup`]: btrfs snapshots pushed to object storage as incremental
//!   send chains, and restored from there;
//! - [`image`]: raw image files into volumes and out of them, moving only
//!   data;
//! - [`cli`] and [`config`]: the command line and its configuration file;
//! - [`inline`]: running a request where it arrived when it need not wait;
//!   [`blocking`]: blocking work run from async code;
//! - [`status`]: what a running daemon reports (`zeroblk status` over its
//!   [`control`] socket, and the Prometheus metrics endpoint);
//!   [`histogram`]: the latency histograms they show;
//! - [`size`] and [`process`]: byte sizes, and whether a process runs;
//!   [`retention`]: which snapshots a prune keeps (btrfs's and volumes');
//! - [`failpoint`]: named points where tests pause or fail an actor
//!   (compiled in only for tests).
#![deny(unsafe_code)]

pub mod attach;
pub mod backup;
pub mod blocking;
pub mod cache;
pub mod cli;
pub mod config;
pub mod control;
pub mod crypto;
pub mod engine;
pub mod failpoint;
pub mod format;
pub mod histogram;
pub mod image;
pub mod inline;
pub mod kernel_nbd;
pub mod nbd;
pub mod process;
pub mod provision;
pub mod retention;
pub mod size;
pub mod status;
pub mod store;
pub mod ublk;
