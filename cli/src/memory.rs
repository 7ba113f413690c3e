//! The process's allocator settings (glibc): memory that the engine frees is reused instead
//! of being kept in per-thread heaps.
//!
//! glibc's `malloc` gives each thread that contends for its heap an arena of its own, up to 8
//! per core, and an arena keeps the memory freed into it. SQLite's page caches and the batches
//! of the document and handler paths are allocated on tokio's blocking threads, which come and
//! go: one page is freed into another thread's arena than the one that will need it next, and
//! each arena grows to its own peak. Measured with heaptrack on the SQLite bench at 1,000,000
//! events, the live heap peaked at 105 MiB (SQLite's page caches, bounded by their
//! `cache_size`) while the resident set reached 220 MiB and grew with the log; with two arenas
//! the same run peaked at 141 MiB (one arena per core on that 2-core machine). See
//! BENCHMARKS.md.

/// Sets the arena count to the number of cores (tokio's worker threads, which each keep an
/// arena of their own; blocking threads share them), unless `MALLOC_ARENA_MAX` is set in the
/// environment (an operator's choice wins). Call it first in `main`, before any thread starts.
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; it is called before any other
        // thread exists, and a refusal (return 0) leaves glibc's default in place.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}
