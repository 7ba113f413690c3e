#!/usr/bin/env python3
"""The orders workload of DESIGN.md, projected with the Python `eventsourcing` library.

This is the peer of Projectionist's benchmark. It reads the orders workload as JSON lines
(as printed by `projectionist generate`), writes the events into eventsourcing's PostgreSQL
event store (one aggregate `Order` per stream ORDER-nnnnnnn, versions 1..n, one event class
per event type), then projects them into the `order_summary` read model with the library's
documented `ProjectionRunner` and a materialised view built on `PostgresTrackingRecorder`:
each view method updates the read model and records the tracking position in one
transaction. Only the projection is timed, from the construction of the runner until the
view has committed the last notification.

Run it through run-eventsourcing.sh, which makes the virtualenv and pipes the workload in.
"""

import argparse
import json
import math
import os
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from eventsourcing.application import Application
from eventsourcing.dispatch import singledispatchmethod
from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
    event,
)
from eventsourcing.persistence import Tracking
from eventsourcing.postgres import PostgresDatastore, PostgresTrackingRecorder
from eventsourcing.projection import Projection, ProjectionRunner
from psycopg import sql

NAME = "peer: python eventsourcing 9.5.6 ProjectionRunner"
EVENT_TYPES = (
    "OrderCreated",
    "ItemAdded",
    "OrderConfirmed",
    "OrderShipped",
    "OrderDelivered",
    "OrderCancelled",
)


def log(*args: Any) -> None:
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# Write model: one event-sourced aggregate per order, with string IDs (the stream id).
# The library's documented way for non-UUID IDs: a DomainEvent with a str originator_id
# and base Event/Created classes on a BaseAggregate[str].
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainEvent(metaclass=MetaDomainEvent):
    originator_id: str
    originator_version: int
    timestamp: datetime


class StrAggregate(BaseAggregate[str]):
    @dataclass(frozen=True)
    class Event(DomainEvent, CanMutateAggregate[str]):
        pass

    @dataclass(frozen=True)
    class Created(Event, CanInitAggregate[str]):
        originator_topic: str


class Order(StrAggregate):
    """An order. Its event classes are named after the workload's event types, and their
    fields are the events' data."""

    @staticmethod
    def create_id(order_id: str) -> str:
        return order_id

    @event("OrderCreated")
    def __init__(self, order_id: str, customer_id: str, customer_name: str) -> None:
        self.customer_name = customer_name
        self.status = "created"

    @event("ItemAdded")
    def add_item(self, order_id: str, item_name: str, quantity: int, unit_price: float) -> None:
        pass

    @event("OrderConfirmed")
    def confirm(self, order_id: str) -> None:
        self.status = "confirmed"

    @event("OrderShipped")
    def ship(self, order_id: str, carrier: str, tracking_number: str) -> None:
        self.status = "shipped"

    @event("OrderDelivered")
    def deliver(self, order_id: str) -> None:
        self.status = "delivered"

    @event("OrderCancelled")
    def cancel(self, order_id: str, reason: str) -> None:
        self.status = "cancelled"


# The command method of each subsequent event type.
COMMANDS = {
    "ItemAdded": "add_item",
    "OrderConfirmed": "confirm",
    "OrderShipped": "ship",
    "OrderDelivered": "deliver",
    "OrderCancelled": "cancel",
}


class Orders(Application[str]):
    """The event-sourced application whose events are projected (table orders_events)."""


# ---------------------------------------------------------------------------------------
# Read model: the materialised view (a PostgresTrackingRecorder) and the projection.
# ---------------------------------------------------------------------------------------


class OrderSummaryView(PostgresTrackingRecorder):
    """`order_summary`, one row per order. Each command runs its SQL and inserts the
    tracking record in the same transaction, as the library's docs show."""

    def __init__(self, datastore: PostgresDatastore, **kwargs: Any) -> None:
        super().__init__(datastore, **kwargs)
        t = (sql.Identifier(self.datastore.schema), sql.Identifier("order_summary"))
        self.sql_create_statements.append(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {0}.{1} ("
                "order_id text PRIMARY KEY, "
                "customer_id text, "
                "customer_name text, "
                "status text NOT NULL, "
                "item_count integer NOT NULL DEFAULT 0, "
                "total_amount double precision NOT NULL DEFAULT 0, "
                "carrier text, "
                "tracking_number text, "
                "version integer NOT NULL)"
            ).format(*t)
        )
        # The same statements and version guards as the example declarative projection.
        self.sql_created = sql.SQL(
            "INSERT INTO {0}.{1} (order_id, customer_id, customer_name, status, version) "
            "VALUES (%s, %s, %s, 'created', %s) ON CONFLICT (order_id) DO NOTHING"
        ).format(*t)
        self.sql_item_added = sql.SQL(
            "UPDATE {0}.{1} SET item_count = item_count + %s, "
            "total_amount = total_amount + %s * %s, version = %s "
            "WHERE order_id = %s AND version < %s"
        ).format(*t)
        self.sql_status = sql.SQL(
            "UPDATE {0}.{1} SET status = %s, version = %s WHERE order_id = %s AND version < %s"
        ).format(*t)
        self.sql_shipped = sql.SQL(
            "UPDATE {0}.{1} SET status = 'shipped', carrier = %s, tracking_number = %s, "
            "version = %s WHERE order_id = %s AND version < %s"
        ).format(*t)
        self.sql_select = sql.SQL(
            "SELECT order_id, customer_name, status, item_count, total_amount, carrier, "
            "tracking_number, version FROM {0}.{1}"
        ).format(*t)
        # Instrumentation only: how many events were committed, and when the last was.
        self.committed = 0
        self.last_commit = 0.0

    def _apply(self, statement: sql.Composed, params: tuple[Any, ...], tracking: Tracking) -> None:
        with self.datastore.transaction(commit=True) as curs:
            self._insert_tracking(curs, tracking)
            curs.execute(statement, params, prepare=True)
        self.committed += 1
        self.last_commit = time.perf_counter()

    def order_created(self, e: Any, tracking: Tracking) -> None:
        v = e.originator_version
        self._apply(self.sql_created, (e.originator_id, e.customer_id, e.customer_name, v), tracking)

    def item_added(self, e: Any, tracking: Tracking) -> None:
        v = e.originator_version
        params = (e.quantity, e.quantity, e.unit_price, v, e.originator_id, v)
        self._apply(self.sql_item_added, params, tracking)

    def status_changed(self, e: Any, status: str, tracking: Tracking) -> None:
        v = e.originator_version
        self._apply(self.sql_status, (status, v, e.originator_id, v), tracking)

    def order_shipped(self, e: Any, tracking: Tracking) -> None:
        v = e.originator_version
        params = (e.carrier, e.tracking_number, v, e.originator_id, v)
        self._apply(self.sql_shipped, params, tracking)

    def track_only(self, tracking: Tracking) -> None:
        self.insert_tracking(tracking)
        self.committed += 1
        self.last_commit = time.perf_counter()

    def rows(self) -> list[dict[str, Any]]:
        with self.datastore.transaction(commit=False) as curs:
            curs.execute(self.sql_select)
            return list(curs.fetchall())


class OrderSummaryProjection(Projection[OrderSummaryView]):
    name = "order_summary"
    # All event types are handled, so no topic filter (it would only add a WHERE clause).
    topics = ()

    @singledispatchmethod
    def process_event(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.track_only(tracking)

    @process_event.register(Order.OrderCreated)
    def _created(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.order_created(domain_event, tracking)

    @process_event.register(Order.ItemAdded)
    def _item_added(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.item_added(domain_event, tracking)

    @process_event.register(Order.OrderConfirmed)
    def _confirmed(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.status_changed(domain_event, "confirmed", tracking)

    @process_event.register(Order.OrderShipped)
    def _shipped(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.order_shipped(domain_event, tracking)

    @process_event.register(Order.OrderDelivered)
    def _delivered(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.status_changed(domain_event, "delivered", tracking)

    @process_event.register(Order.OrderCancelled)
    def _cancelled(self, domain_event: Any, tracking: Tracking) -> None:
        self.view.status_changed(domain_event, "cancelled", tracking)


# ---------------------------------------------------------------------------------------
# Input, expected result, database setup.
# ---------------------------------------------------------------------------------------


def read_workload(path: str) -> list[tuple[str, str, dict[str, Any]]]:
    stream = sys.stdin if path == "-" else open(path, encoding="utf-8")  # noqa: SIM115
    events = []
    with stream:
        for lineno, line in enumerate(stream, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                stream_id, event_type, data = obj["stream_id"], obj["type"], obj["data"]
            except (ValueError, KeyError, TypeError) as e:
                raise SystemExit(f"{path}:{lineno}: not a workload event: {e}") from None
            if event_type not in EVENT_TYPES:
                raise SystemExit(f"{path}:{lineno}: unknown event type {event_type!r}")
            events.append((stream_id, event_type, data))
    return events


def expected_summary(events: list[tuple[str, str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The read model folded in memory, independently of the database."""
    rows: dict[str, dict[str, Any]] = {}
    for stream_id, event_type, data in events:
        if event_type == "OrderCreated":
            rows[stream_id] = {
                "order_id": stream_id,
                "customer_name": data["customer_name"],
                "status": "created",
                "item_count": 0,
                "total_amount": 0.0,
                "carrier": None,
                "tracking_number": None,
                "version": 1,
            }
            continue
        row = rows[stream_id]
        row["version"] += 1
        if event_type == "ItemAdded":
            row["item_count"] += data["quantity"]
            row["total_amount"] += data["quantity"] * data["unit_price"]
        elif event_type == "OrderConfirmed":
            row["status"] = "confirmed"
        elif event_type == "OrderShipped":
            row["status"] = "shipped"
            row["carrier"] = data["carrier"]
            row["tracking_number"] = data["tracking_number"]
        elif event_type == "OrderDelivered":
            row["status"] = "delivered"
        elif event_type == "OrderCancelled":
            row["status"] = "cancelled"
    return rows


def aggregates(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "orders": len(rows),
        "by_status": dict(sorted(Counter(r["status"] for r in rows).items())),
        "sum_item_count": sum(r["item_count"] for r in rows),
        "sum_total_amount": round(math.fsum(r["total_amount"] for r in rows), 2),
        "sum_version": sum(r["version"] for r in rows),
    }


@dataclass
class Conn:
    host: str
    port: str
    user: str
    password: str
    admin_db: str
    peer_db: str


def conn_from_env() -> Conn:
    return Conn(
        host=os.environ.get("PGHOST") or "127.0.0.1",
        port=os.environ.get("PGPORT") or "5432",
        user=os.environ.get("PGUSER") or "postgres",
        password=os.environ.get("PGPASSWORD", ""),
        admin_db=os.environ.get("PGDATABASE") or "test",
        peer_db=os.environ.get("PEER_PGDATABASE") or "peer_bench",
    )


def prepare_database(c: Conn) -> tuple[str, str]:
    """A clean place for the peer: a dedicated database, or, where the user may not create
    databases, a dedicated schema in the admin database. Returns (dbname, schema)."""
    kw = {"host": c.host, "port": c.port, "user": c.user, "password": c.password}
    with psycopg.connect(dbname=c.admin_db, autocommit=True, **kw) as conn:
        try:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(c.peer_db)))
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(c.peer_db)))
            return c.peer_db, ""
        except psycopg.errors.InsufficientPrivilege:
            schema = c.peer_db
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
            conn.execute(sql.SQL("CREATE SCHEMA {}").format(sql.Identifier(schema)))
            return c.admin_db, schema


def load_events(env: dict[str, str], events: list[tuple[str, str, dict[str, Any]]], batch: int) -> int:
    """Records the workload in the application's event store, in workload order, so that
    notification IDs 1..N follow the workload's positions. Each event is made by calling
    the aggregate's command method (the library checks the versions), and batches of
    stored events go in through the application recorder. Not timed."""
    app = Orders(env=env)
    try:
        orders: dict[str, Order] = {}
        pending = []
        for stream_id, event_type, data in events:
            if event_type == "OrderCreated":
                order = Order(**data)
                if order.id != stream_id:
                    raise SystemExit(f"OrderCreated of {stream_id} names order {order.id}")
                orders[stream_id] = order
            else:
                order = orders[stream_id]
                getattr(order, COMMANDS[event_type])(**data)
            pending.extend(order.collect_events())
            if len(pending) >= batch:
                app.recorder.insert_events([app.mapper.to_stored_event(e) for e in pending])
                pending.clear()
        if pending:
            app.recorder.insert_events([app.mapper.to_stored_event(e) for e in pending])
        return app.recorder.max_notification_id() or 0
    finally:
        app.close()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="?", default="-", help="workload JSON lines (default: stdin)")
    p.add_argument("--events", type=int, help="expected number of events (checked)")
    p.add_argument("--seed", type=int, default=1, help="the workload's seed (reported only)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.add_argument("--verbose", action="store_true", help="print the checks on stderr")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the projection")
    p.add_argument("--load-batch", type=int, default=5000, help="events per insert when loading")
    a = p.parse_args()

    events = read_workload(a.input)
    n = len(events)
    if a.events is not None and n != a.events:
        log(f"error: expected {a.events} events on input, got {n}")
        return 1
    if n == 0:
        log("error: no events on input")
        return 1

    c = conn_from_env()
    dbname, schema = prepare_database(c)
    env = {
        "PERSISTENCE_MODULE": "eventsourcing.postgres",
        "POSTGRES_DBNAME": dbname,
        "POSTGRES_HOST": c.host,
        "POSTGRES_PORT": c.port,
        "POSTGRES_USER": c.user,
        "POSTGRES_PASSWORD": c.password,
        "POSTGRES_SCHEMA": schema,
        "ORIGINATOR_ID_TYPE": "text",
    }
    where = f"database {dbname}" + (f", schema {schema}" if schema else "")
    if a.verbose:
        log(f"peer: {n} events (seed {a.seed}) into {where} on {c.host}:{c.port}")

    t0 = time.perf_counter()
    last_id = load_events(env, events, a.load_batch)
    if a.verbose:
        log(f"loaded {n} events in {time.perf_counter() - t0:.2f} s (not counted); last notification id {last_id}")
    if last_id != n:
        log(f"error: the event store holds notification ids up to {last_id}, expected {n}")
        return 1

    # Timed: from the runner's construction (it builds the view, subscribes, and starts its
    # processing thread) until the view has committed the last notification.
    start = time.perf_counter()
    with ProjectionRunner(
        application_class=Orders,
        projection_class=OrderSummaryProjection,
        view_class=OrderSummaryView,
        env=env,
    ) as runner:
        if a.verbose:
            stop_progress = threading.Event()

            def progress() -> None:
                while not stop_progress.wait(5.0):
                    done = runner.view.committed
                    log(f"  {done}/{n} events, {done / (time.perf_counter() - start):.0f} events/s")

            threading.Thread(target=progress, daemon=True).start()
        try:
            runner.wait(last_id, timeout=a.timeout)
        except TimeoutError as e:
            log(f"error: {e}")
            return 1
        finally:
            if a.verbose:
                stop_progress.set()
        end = runner.view.last_commit
        processed = runner.view.committed
        tracked = runner.view.max_tracking_id(runner.app_name)
        rows = runner.view.rows()

    seconds = end - start
    rate = processed / seconds if seconds > 0 else float("inf")

    # Verify.
    expected = expected_summary(events)
    got_agg, want_agg = aggregates(rows), aggregates(list(expected.values()))
    mismatched = []
    for row in rows:
        want = expected.get(row["order_id"])
        if want is None:
            mismatched.append(row["order_id"])
            continue
        for k, v in want.items():
            same = abs(row[k] - v) < 1e-6 if k == "total_amount" else row[k] == v
            if not same:
                mismatched.append(row["order_id"])
                break
    problems = []
    if processed != n or tracked != last_id:
        problems.append(f"processed {processed} events, tracking at {tracked}; expected {n} and {last_id}")
    if len(rows) != len(expected):
        problems.append(f"{len(rows)} orders in order_summary, expected {len(expected)}")
    if got_agg != want_agg:
        problems.append(f"aggregates differ: got {got_agg}, expected {want_agg}")
    if mismatched:
        problems.append(f"{len(mismatched)} rows differ from the in-memory fold, e.g. {mismatched[:3]}")
    ok = not problems

    if a.verbose:
        log(f"processed {processed} events; tracking position {tracked} of {last_id}")
        log(f"order_summary: {json.dumps(got_agg)}")
        log(f"expected:      {json.dumps(want_agg)}")
        log(f"rows checked one by one against the in-memory fold: {len(rows) - len(mismatched)} equal")
    for problem in problems:
        log(f"error: {problem}")
    if not ok:
        return 1

    if a.json:
        print(json.dumps({"name": NAME, "events": n, "seconds": round(seconds, 6), "events_per_second": round(rate, 1)}))
    else:
        print(f"{NAME}: {n} events in {seconds:.2f} s = {rate:,.0f} events/s (verified: {len(rows)} orders)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
