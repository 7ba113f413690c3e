//! The SQL catalogue: every statement of one store, with its schema filled in once at connect.

use super::quote;

/// The SQL of one store, with its schema filled in.
pub(super) struct Sql {
    pub(super) read_all: String,
    pub(super) read_filtered: String,
    pub(super) blocked: String,
    pub(super) head: String,
    pub(super) lag: String,
    pub(super) versions: String,
    pub(super) insert_returning: String,
    pub(super) insert: String,
    pub(super) lock_events: String,
    /// The checkpoint's compare-and-set: moves one row, or none when the checkpoint moved
    /// under this runner (or the projection is not active). The caller checks the row count.
    pub(super) cas: String,
    pub(super) counters: String,
    pub(super) insert_dead_letter: String,
    pub(super) record: String,
    pub(super) records: String,
    pub(super) ensure_checkpoint: String,
    pub(super) set_state: String,
    pub(super) reset: String,
    pub(super) delete_dead_letters: String,
    pub(super) dead_letters: String,
    pub(super) dead_letter: String,
    pub(super) delete_dead_letter: String,
    pub(super) dead_letter_attempt: String,
    pub(super) retry_counters: String,
    pub(super) events_channel: String,
    pub(super) checkpoints_channel: String,
    /// Returns one row while the partition's lease still has this owner and token (none once
    /// it moved: the caller checks the row count, so a lost lease logs nothing on the server),
    /// and holds the lease row (`FOR SHARE`) until the commit, so a takeover waits for it.
    pub(super) fence: String,
    pub(super) mark_owner: String,
    pub(super) record_seen: String,
    pub(super) seen: String,
    pub(super) prune_seen: String,
    pub(super) delete_seen: String,
}

pub(super) const EVENT_COLUMNS: &str =
    "position, xid, stream_id, stream_version, event_type, event_id, data::text, metadata::text, recorded_at";
const READABLE: &str = "xid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
const RECORD_COLUMNS: &str = "c.projection, c.partition, c.txid, c.position, c.state, c.reason, c.applied, \
     c.ignored, c.errors, c.events_per_second, c.last_error, c.updated_at";
const DEAD_LETTER_COLUMNS: &str = "id, projection, partition, position, txid, stream_id, stream_version, \
     event_type, event_id, data, metadata, recorded_at, error, attempts, first_failed_at, last_failed_at";

impl Sql {
    pub(super) fn new(schema: &str) -> Self {
        let s = quote(schema);
        let record_from = format!(
            "SELECT {RECORD_COLUMNS}, (SELECT count(*) FROM {s}.projection_dead_letters d \
             WHERE d.projection = c.projection AND d.partition = c.partition) \
             FROM {s}.projection_checkpoints c"
        );
        Sql {
            read_all: format!(
                "SELECT {EVENT_COLUMNS}, true FROM {s}.events \
                 WHERE xid >= $1 AND (xid, position) > ($1, $2) AND {READABLE} \
                 ORDER BY xid, position LIMIT $3"
            ),
            // Looks at up to $3 rows, returns the payload of admitted ones only, and stops
            // after the $5th admitted one, so that `scanned_to` covers the ignored rows too.
            // Scans exactly `limit` rows and sends payloads only for the admitted ones: a batch
            // of a filtering projection may hold fewer events, but it always moves past every
            // row it scanned. (Scanning further to fill the batch made every read of a
            // projection that handles most types pay for rows it then threw away.)
            read_filtered: format!(
                "SELECT s.position, s.xid, \
                   CASE WHEN s.admitted THEN s.stream_id END, \
                   CASE WHEN s.admitted THEN s.stream_version END, \
                   s.event_type, \
                   CASE WHEN s.admitted THEN s.event_id END, \
                   CASE WHEN s.admitted THEN s.data::text END, \
                   CASE WHEN s.admitted THEN s.metadata::text END, \
                   CASE WHEN s.admitted THEN s.recorded_at END, \
                   s.admitted \
                 FROM ( \
                   SELECT e.position, e.xid, e.stream_id, e.stream_version, e.event_type, e.event_id, \
                     e.data, e.metadata, e.recorded_at, e.event_type = ANY($4::text[]) AS admitted \
                   FROM {s}.events e \
                   WHERE e.xid >= $1 AND (e.xid, e.position) > ($1, $2) AND e.{READABLE} \
                   ORDER BY e.xid, e.position LIMIT $3 \
                 ) s ORDER BY s.xid, s.position"
            ),
            // A plain ordered probe, not `EXISTS (…)`: PostgreSQL drops the ORDER BY inside
            // EXISTS, and a generic plan then seq-scanned the whole table whenever nothing was
            // there (measured: 120 ms per probe on a million events, the whole live latency).
            blocked: format!(
                "SELECT 1 FROM {s}.events WHERE xid >= $1 AND (xid, position) > ($1, $2) \
                 ORDER BY xid, position LIMIT 1"
            ),
            // The committed head, readable or not yet: a catch-up waits for events that sit
            // behind a transaction still open, instead of stopping short of them.
            head: format!("SELECT xid, position FROM {s}.events ORDER BY xid DESC, position DESC LIMIT 1"),
            lag: format!(
                "SELECT (SELECT count(*) FROM (SELECT 1 FROM {s}.events \
                         WHERE xid >= $1 AND (xid, position) > ($1, $2) ORDER BY xid, position LIMIT $3) c), \
                        (SELECT recorded_at FROM {s}.events WHERE xid >= $1 AND (xid, position) > ($1, $2) \
                         ORDER BY xid, position LIMIT 1), \
                        (SELECT coalesce(max(position), 0) FROM {s}.events)"
            ),
            // One backward probe of the (stream_id, stream_version) index per stream, whatever
            // the table's statistics say: an import fills the table inside one transaction, so
            // ANALYZE never sees what it wrote, and a `stream_id = ANY(…) GROUP BY` plan chosen
            // for a small table became a parallel scan of a 10M-row one (one call ran > 14 min).
            versions: format!(
                "SELECT s.id, (SELECT e.stream_version FROM {s}.events e WHERE e.stream_id = s.id \
                 ORDER BY e.stream_version DESC LIMIT 1) FROM unnest($1::text[]) AS s(id)"
            ),
            insert_returning: format!(
                "INSERT INTO {s}.events (stream_id, stream_version, event_type, event_id, data, metadata) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[]::jsonb[], $6::text[]::jsonb[]) \
                 RETURNING stream_id, stream_version, position, xid"
            ),
            insert: format!(
                "INSERT INTO {s}.events (stream_id, stream_version, event_type, event_id, data, metadata) \
                 SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::uuid[], $5::text[]::jsonb[], $6::text[]::jsonb[])"
            ),
            lock_events: format!("LOCK TABLE {s}.events IN EXCLUSIVE MODE"),
            cas: format!(
                "UPDATE {s}.projection_checkpoints SET txid = $3, position = $4, updated_at = now() \
                 WHERE projection = $1 AND partition = $2 AND txid = $5 AND position = $6 \
                 AND state IN ('running', 'rebuilding')"
            ),
            counters: format!(
                "UPDATE {s}.projection_checkpoints SET applied = applied + $3, ignored = ignored + $4, \
                 errors = errors + $5, events_per_second = $6, last_error = coalesce($7, last_error) \
                 WHERE projection = $1 AND partition = $2"
            ),
            insert_dead_letter: format!(
                "INSERT INTO {s}.projection_dead_letters (projection, partition, position, txid, stream_id, \
                 stream_version, event_type, event_id, data, metadata, recorded_at, error, attempts, \
                 first_failed_at, last_failed_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, now())"
            ),
            record: format!("{record_from} WHERE c.projection = $1 AND c.partition = $2"),
            records: format!("{record_from} ORDER BY c.projection, c.partition"),
            ensure_checkpoint: format!(
                "INSERT INTO {s}.projection_checkpoints (projection, partition) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING"
            ),
            set_state: format!(
                "UPDATE {s}.projection_checkpoints SET state = $2, reason = $3, updated_at = now() \
                 WHERE projection = $1 AND ($4::integer IS NULL OR partition = $4)"
            ),
            reset: format!(
                "UPDATE {s}.projection_checkpoints SET txid = 0, position = 0, applied = 0, ignored = 0, \
                 errors = 0, events_per_second = 0, last_error = NULL, state = 'rebuilding', \
                 reason = 'rebuild in progress', updated_at = now() WHERE projection = $1"
            ),
            delete_dead_letters: format!("DELETE FROM {s}.projection_dead_letters WHERE projection = $1"),
            dead_letters: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.projection_dead_letters \
                 WHERE ($1::text IS NULL OR projection = $1) ORDER BY id"
            ),
            dead_letter: format!(
                "SELECT {DEAD_LETTER_COLUMNS} FROM {s}.projection_dead_letters WHERE id = $1 FOR UPDATE"
            ),
            delete_dead_letter: format!("DELETE FROM {s}.projection_dead_letters WHERE id = $1"),
            dead_letter_attempt: format!(
                "UPDATE {s}.projection_dead_letters SET attempts = attempts + 1, error = $2, \
                 last_failed_at = now() WHERE id = $1"
            ),
            // A retried dead letter's failure is resolved: it leaves the error count, and once
            // none of the partition's dead letters remain, so do the count and the last error.
            retry_counters: format!(
                "UPDATE {s}.projection_checkpoints SET applied = applied + $3, ignored = ignored + $4, \
                 errors = CASE WHEN {open} THEN greatest(errors - 1, 0) ELSE 0 END, \
                 last_error = CASE WHEN {open} THEN last_error END, \
                 updated_at = now() WHERE projection = $1 AND partition = $2",
                open = format_args!(
                    "EXISTS (SELECT 1 FROM {s}.projection_dead_letters d WHERE d.projection = $1 AND d.partition = $2)"
                ),
            ),
            events_channel: format!("{schema}.events"),
            checkpoints_channel: format!("{schema}.checkpoints"),
            fence: format!(
                "SELECT 1 FROM {s}.projection_leases WHERE projection = $1 AND partition = $2 \
                 AND owner = $3 AND token = $4 FOR SHARE"
            ),
            mark_owner: format!(
                "UPDATE {s}.projection_checkpoints SET owner = $3, lease_token = $4 \
                 WHERE projection = $1 AND partition = $2"
            ),
            record_seen: format!(
                "INSERT INTO {s}.projection_seen_events (projection, event_id) SELECT $1, unnest($2::uuid[])"
            ),
            seen: format!(
                "SELECT event_id FROM {s}.projection_seen_events WHERE projection = $1 AND event_id = ANY($2)"
            ),
            prune_seen: format!(
                "DELETE FROM {s}.projection_seen_events WHERE seen_at < now() - $1::float8 * interval '1 second'"
            ),
            delete_seen: format!("DELETE FROM {s}.projection_seen_events WHERE projection = $1"),
        }
    }
}
