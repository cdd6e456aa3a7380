//! The `zeroblk` binary: the command line of [`zeroblk::cli`], on jemalloc.
//!
//! jemalloc, not glibc's allocator: the engine's 1 MiB write and chunk
//! buffers are often freed on another thread than the one that made them,
//! and glibc keeps such memory in per-thread arenas, so the daemon's peak
//! RSS grew well past its caches (docs/benchmarks/notes.md). jemalloc
//! gives it back; its background thread does that while the daemon idles.

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once as it starts, before `main`:
///
/// - `narenas:1`: one arena, so a 1 MiB buffer freed by one thread is
///   reused by the next allocation on any other. With one per thread (the
///   default), each arena kept its own freed buffers, and the daemon's
///   peak RSS ran 50 MiB higher for the same live bytes; with two cores
///   and per-thread caches for small allocations, the one lock costs
///   nothing measurable.
/// - `background_thread:true`: freed pages go back to the kernel while the
///   daemon idles, not only as other allocations happen.
/// - `dirty_decay_ms:1000`: how long freed pages stay for reuse. The
///   default of 10 s let a burst of 1 MiB buffers (a commit, a sequential
///   read) hold 100 MiB past the caches' budget; at 0, every buffer freed
///   and made again costs page faults, which cut 1 MiB sequential
///   throughput to a third. A second keeps both.
/// - `muzzy_decay_ms:0`: lazily freed pages (still counted in RSS until the
///   kernel needs them) are skipped: pages go back at once.
/// - `thp:always`: jemalloc asks for transparent huge pages (the kernels
///   here give them on request, `madvise`). A cold read decompresses every
///   chunk into new memory, and faulting it in 4 KiB at a time took a
///   third of the daemon's CPU: with 2 MiB pages, a cold sequential read
///   used 0.5 CPU-seconds per 256 MiB, not 0.7, and ran a fifth faster.
///   Peak RSS grew by under 20 MiB (pages partly in use).
// SAFETY: jemalloc reads this symbol (its weak default overridden here) as
// a `const char *` to a NUL-terminated string; it is immutable, 'static,
// and NUL-terminated.
#[allow(unsafe_code)]
#[unsafe(export_name = "_rjem_malloc_conf")]
static MALLOC_CONF: &[u8; 81] =
    b"narenas:1,background_thread:true,dirty_decay_ms:1000,muzzy_decay_ms:0,thp:always\0";

fn main() -> std::process::ExitCode {
    zeroblk::cli::main()
}
