//! The `zeroblk` binary: the command line of [`zeroblk::cli`], on jemalloc.
//!
//! jemalloc, not glibc's allocator: the engine's 1 MiB write and chunk
//! buffers are often freed on another thread than the one that made them,
//! and glibc keeps such memory in per-thread arenas, so the daemon's peak
//! RSS grew well past its caches (docs/benchmarks/notes.md). jemalloc
//! gives it back; its background thread does that while the daemon idles.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    // Without it, freed pages go back only as other allocations happen.
    let _ = tikv_jemalloc_ctl::background_thread::write(true);
    zeroblk::cli::main()
}
