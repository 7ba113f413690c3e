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
//!
//! SQLite's pages are kept out of `malloc` altogether: a page is about 4 KiB and lives as long
//! as its cache keeps it, so tens of thousands of them, interleaved with the engine's
//! short-lived batches, pinned freed memory between them, and the resident set still grew with
//! the length of the log at a flat live heap. [`configure`] gives SQLite one region for its
//! pages (`SQLITE_CONFIG_PAGECACHE`), sized for a store's caches
//! ([`projectionist::sqlite::PAGE_CACHE_PAGES`]): the pages come from and go back to it.
//! SQLite links every slot of the region into its free list when it sets it up, so the region
//! is resident from the first connection on; that is the store's page-cache budget, paid once
//! and the same at a billion events as at a thousand. Pages beyond it (a second store in the
//! process, a database with larger pages) come from `malloc`.

/// Sets the allocator up: SQLite's page region ([`reserve_sqlite_pages`]), then the arenas.
/// Call it first in `main`, before any thread starts and before SQLite is used.
pub fn configure() {
    #[cfg(feature = "sqlite")]
    if let Err(why) = reserve_sqlite_pages() {
        tracing::debug!(why, "SQLite keeps its page caches in the general heap");
    }
    limit_arenas();
}

/// Sets the arena count to the number of cores (tokio's worker threads, which each keep an
/// arena of their own; blocking threads share them), unless `MALLOC_ARENA_MAX` is set in the
/// environment (an operator's choice wins).
fn limit_arenas() {
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

/// Gives SQLite one region for the pages of its caches: `PAGE_CACHE_PAGES` slots of a page
/// and SQLite's per-page header each. Fails, and SQLite keeps taking pages from `malloc`,
/// if SQLite was initialized already.
#[cfg(feature = "sqlite")]
fn reserve_sqlite_pages() -> Result<(), &'static str> {
    use projectionist::sqlite::rusqlite::ffi;
    use projectionist::sqlite::{PAGE_CACHE_PAGES, PAGE_SIZE};
    use std::os::raw::c_int;

    let mut header: c_int = 0;
    // SAFETY: SQLITE_CONFIG_PCACHE_HDRSZ writes one int through the pointer it is given.
    let rc = unsafe { ffi::sqlite3_config(ffi::SQLITE_CONFIG_PCACHE_HDRSZ, &mut header as *mut c_int) };
    if rc != ffi::SQLITE_OK {
        return Err("SQLite did not give its page header size");
    }
    let header = usize::try_from(header).map_err(|_| "SQLite gave a negative page header size")?;
    // Slots are 8-byte aligned, as SQLite asks.
    let slot = (PAGE_SIZE + header).next_multiple_of(8);
    let layout = std::alloc::Layout::from_size_align(slot * PAGE_CACHE_PAGES, 8)
        .map_err(|_| "the page region is too large")?;
    let (slot_size, slots) = (
        c_int::try_from(slot).map_err(|_| "the page slot is too large")?,
        c_int::try_from(PAGE_CACHE_PAGES).map_err(|_| "too many page slots")?,
    );
    // SAFETY: the layout's size is not zero.
    let region = unsafe { std::alloc::alloc(layout) };
    if region.is_null() {
        return Err("cannot allocate the page region");
    }
    // SAFETY: `region` holds `slots` slots of `slot_size` bytes, 8-byte aligned, and is never
    // freed while SQLite may use it (below, only if SQLite refused it).
    let rc = unsafe {
        ffi::sqlite3_config(
            ffi::SQLITE_CONFIG_PAGECACHE,
            region.cast::<std::ffi::c_void>(),
            slot_size,
            slots,
        )
    };
    if rc != ffi::SQLITE_OK {
        // SAFETY: SQLite refused the region, so nothing refers to it; same layout.
        unsafe { std::alloc::dealloc(region, layout) };
        return Err("SQLite refused the page region: it was initialized before");
    }
    Ok(())
}

#[cfg(all(test, feature = "sqlite"))]
mod tests {
    use projectionist::sqlite::rusqlite::{ffi, Connection};

    /// SQLite's counter `op`: (current, highest).
    fn status(op: i32) -> (i64, i64) {
        let (mut current, mut highest) = (0i64, 0i64);
        // SAFETY: sqlite3_status64 writes two integers through the pointers it is given.
        let rc = unsafe { ffi::sqlite3_status64(op, &mut current, &mut highest, 0) };
        assert_eq!(rc, ffi::SQLITE_OK);
        (current, highest)
    }

    // nextest runs each test in a process of its own, so SQLite is not initialized yet here.
    #[test]
    fn sqlite_pages_come_from_the_region_and_a_second_reservation_is_refused() {
        super::reserve_sqlite_pages().expect("SQLite takes the region before it initializes");
        let dir = tempfile::tempdir().expect("a temporary folder");
        let db = Connection::open(dir.path().join("pages.db")).expect("open");
        db.execute_batch(
            "CREATE TABLE t (k INTEGER PRIMARY KEY, v TEXT);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO t SELECT i, printf('%0200d', i) FROM n;",
        )
        .expect("write some pages");
        let (used, _) = status(ffi::SQLITE_STATUS_PAGECACHE_USED);
        let (_, overflow) = status(ffi::SQLITE_STATUS_PAGECACHE_OVERFLOW);
        assert!(
            used > 100,
            "the cache's pages sit in the region: {used} slots used"
        );
        assert_eq!(overflow, 0, "no page came from malloc");
        assert!(
            super::reserve_sqlite_pages().is_err(),
            "SQLite is initialized: it refuses a region now"
        );
    }
}
