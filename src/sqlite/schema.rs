//! The SQLite schema: the events table (a public contract, see docs/events-table.md),
//! checkpoints, dead letters, and the event ids seen from sources that redeliver.

/// Creates the engine's tables. Idempotent.
pub const SCHEMA: &str = r#"
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream_id      TEXT    NOT NULL,
    stream_version INTEGER NOT NULL,
    event_type     TEXT    NOT NULL,
    event_id       TEXT    NOT NULL UNIQUE DEFAULT (lower(
                       hex(randomblob(4)) || '-' || hex(randomblob(2)) || '-4' ||
                       substr(hex(randomblob(2)), 2) || '-' ||
                       substr('89ab', 1 + (abs(random()) % 4), 1) ||
                       substr(hex(randomblob(2)), 2) || '-' || hex(randomblob(6)))),
    data           TEXT    NOT NULL,
    metadata       TEXT    NOT NULL DEFAULT '{}',
    recorded_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (stream_id, stream_version)
);

CREATE TABLE IF NOT EXISTS projection_checkpoints (
    projection        TEXT    NOT NULL,
    partition         INTEGER NOT NULL DEFAULT 0,
    txid              INTEGER NOT NULL DEFAULT 0,
    position          INTEGER NOT NULL DEFAULT 0,
    state             TEXT    NOT NULL DEFAULT 'running',
    reason            TEXT,
    applied           INTEGER NOT NULL DEFAULT 0,
    ignored           INTEGER NOT NULL DEFAULT 0,
    errors            INTEGER NOT NULL DEFAULT 0,
    events_per_second REAL    NOT NULL DEFAULT 0,
    last_error        TEXT,
    updated_at        TEXT,
    PRIMARY KEY (projection, partition)
);

CREATE TABLE IF NOT EXISTS projection_dead_letters (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    projection      TEXT    NOT NULL,
    partition       INTEGER NOT NULL DEFAULT 0,
    position        INTEGER NOT NULL,
    txid            INTEGER NOT NULL DEFAULT 0,
    stream_id       TEXT    NOT NULL,
    stream_version  INTEGER NOT NULL,
    event_type      TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    data            TEXT    NOT NULL,
    metadata        TEXT    NOT NULL,
    recorded_at     TEXT    NOT NULL,
    error           TEXT    NOT NULL,
    attempts        INTEGER NOT NULL,
    first_failed_at TEXT    NOT NULL,
    last_failed_at  TEXT    NOT NULL
);

CREATE INDEX IF NOT EXISTS projection_dead_letters_by_projection
    ON projection_dead_letters (projection, partition);

-- Event ids applied from a source that may redeliver (a broker), per projection, recorded in
-- the commit's transaction; a redelivered event is dropped while its id is here. `event_id` is
-- the UUID's 16 bytes, `seen_at` Unix seconds. Rows older than the store's dedup retention
-- are pruned in the background.
CREATE TABLE IF NOT EXISTS projection_seen_events (
    projection TEXT    NOT NULL,
    event_id   BLOB    NOT NULL,
    seen_at    INTEGER NOT NULL,
    PRIMARY KEY (projection, event_id)
) WITHOUT ROWID;

CREATE INDEX IF NOT EXISTS projection_seen_events_by_age
    ON projection_seen_events (seen_at);

-- Which `run` process runs each projection: one row per projection (partition 0), with a
-- fencing token that goes up at every change of owner. A second process on the same file
-- waits as a standby until the lease is released or expires. Times are Unix milliseconds.
CREATE TABLE IF NOT EXISTS projection_leases (
    projection  TEXT    NOT NULL,
    partition   INTEGER NOT NULL,
    owner       TEXT,
    token       INTEGER NOT NULL DEFAULT 0,
    acquired_at INTEGER,
    expires_at  INTEGER,
    PRIMARY KEY (projection, partition)
);

-- The `run` processes of each projection, with their heartbeats (Unix milliseconds).
CREATE TABLE IF NOT EXISTS projection_nodes (
    projection   TEXT    NOT NULL,
    node         TEXT    NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    PRIMARY KEY (projection, node)
);
"#;
