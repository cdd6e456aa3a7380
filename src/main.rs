//! The `zeroblk` binary: the command line of [`zeroblk::cli`], on jemalloc.
//!
//! jemalloc, not glibc's allocator: the engine's 1 MiB write and chunk
//! buffers are often freed on another thread than the one that made them,
//! and glibc keeps such memory in per-thread arenas, so the daemon's peak
//! RSS grew well past its caches (docs/benchmarks/notes.md). jemalloc
//! gives it back; its background thread does that while the daemon idles.

use tikv_jemalloc_ctl::{Access, AsName};

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long freed pages stay with the allocator before they go back to
/// the kernel. jemalloc's default of 10 s let a burst of 1 MiB buffers
/// (a commit, a sequential read) hold 100 MiB past the caches' budget; at
/// 0, every buffer freed and made again costs page faults, which cut 1 MiB
/// sequential throughput to a third. A second keeps both.
const FREED_PAGES_KEPT_MS: isize = 1000;

fn main() -> std::process::ExitCode {
    tune_allocator();
    zeroblk::cli::main()
}

/// Best effort: a failure leaves jemalloc's defaults, which only cost RSS.
fn tune_allocator() {
    // Without it, freed pages go back only as other allocations happen.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    // Arenas made from now on, then the ones that exist (4096 is jemalloc's
    // MALLCTL_ARENAS_ALL). Muzzy pages (freed lazily, still counted in RSS
    // until the kernel needs them) are skipped: they go back at once.
    for (dirty, muzzy) in [
        (
            &b"arenas.dirty_decay_ms\0"[..],
            &b"arenas.muzzy_decay_ms\0"[..],
        ),
        (
            b"arena.4096.dirty_decay_ms\0",
            b"arena.4096.muzzy_decay_ms\0",
        ),
    ] {
        let _ = dirty.name().write(FREED_PAGES_KEPT_MS);
        let _ = muzzy.name().write(0isize);
    }
}
