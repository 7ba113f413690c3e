"""The strict projection of the process tests: it reads each stream's counter before it writes
it, and fails (stopping the projection) on any duplicate or out-of-order event."""

import time

import projectionist as pj


def counters(batch_size=250, delay=0.0):
    """`delay`: seconds each event sleeps (outside `tx`), so that a crash test's kills land
    mid-run however fast the machine is."""
    p = pj.Projection("counters", error_policy="stop", batch_size=batch_size)

    @p.setup
    def setup(tx):
        tx.execute_script(
            "CREATE TABLE IF NOT EXISTS counters (stream TEXT PRIMARY KEY, version BIGINT NOT NULL, total BIGINT NOT NULL);"
            "CREATE TABLE IF NOT EXISTS applied (position BIGINT PRIMARY KEY)"
        )

    @p.reset
    def reset(tx):
        tx.execute_script("DELETE FROM counters; DELETE FROM applied")

    @p.on("Tick")
    def tick(tx, event):
        if delay:
            time.sleep(delay)
        row = tx.query_one("SELECT version, total FROM counters WHERE stream = :s", s=event.stream_id)
        version = row["version"] if row else 0
        if event.stream_version != version + 1:
            raise RuntimeError(
                f"{'duplicate' if event.stream_version <= version else 'out-of-order'} event: stream {event.stream_id} "
                f"is at version {version}, got version {event.stream_version} (position {event.position})"
            )
        total = (row["total"] if row else 0) + event.data["i"]
        tx.execute(
            "INSERT INTO counters (stream, version, total) VALUES (:s, :v, :t) "
            "ON CONFLICT (stream) DO UPDATE SET version = excluded.version, total = excluded.total",
            s=event.stream_id,
            v=event.stream_version,
            t=total,
        )
        tx.execute("INSERT INTO applied (position) VALUES (:p)", p=event.position)

    return p
