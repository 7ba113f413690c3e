//! The page caches' sizes: what a store holds in memory, whatever the length of the log.
//!
//! Each connection keeps a page cache bounded by its `cache_size`; beyond it, pages are read
//! again from the file (the operating system's cache). The caches are the store's only memory
//! that grows with the database, and they stop at these bounds. An application that opens one
//! store can give SQLite one region for all its pages, [`PAGE_CACHE_PAGES`] slots
//! (`SQLITE_CONFIG_PAGECACHE`, before SQLite initializes): pages then never enter the general
//! heap, where they would pin freed memory between them. The `projectionist` binary does so
//! (see BENCHMARKS.md, "Memory").

/// The page size the caches are counted in: SQLite's default.
pub const PAGE_SIZE: usize = 4096;

/// The writer connection's page cache, in pages (32 MiB): the B-tree interiors of the events
/// table, its indexes and the read models, and the pages a batch touches.
pub(super) const WRITER_CACHE_PAGES: usize = 8192;

/// The reader connection's page cache, in pages (16 MiB): runners read the events table in
/// position order, so a read touches each leaf page once and needs few of them cached.
pub(super) const READER_CACHE_PAGES: usize = 4096;

/// The pages one file store caches at most: its writer's and reader's caches, and the
/// background checkpointer's (SQLite's default, 2,000 KiB).
pub const PAGE_CACHE_PAGES: usize = WRITER_CACHE_PAGES + READER_CACHE_PAGES + 500;
