"""Python per-event handlers on the orders workload: `order_summary` written as Python
handlers (the same statements as the declarative projection in examples/projectionist.toml),
rebuilt on Projectionist's engine, and checked row by row against a fold of the events.

    pip install ./python   # or scripts/test's target/python-venv
    python bench/python_handlers.py --events 200000 [--database postgresql://…] [--bin target/release/projectionist]

It also measures where the time goes at the boundary: the same rebuild with handlers that do
nothing (the crossing itself: GIL, event object, call), that only read `event.data` (plus the
JSON parse), and the full handlers (plus binding and running the statements).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import projectionist as pj

SETUP = """
CREATE TABLE IF NOT EXISTS order_summary (
    order_id TEXT PRIMARY KEY, customer_id TEXT, customer_name TEXT, status TEXT NOT NULL,
    item_count INTEGER NOT NULL DEFAULT 0, total_amount DOUBLE PRECISION NOT NULL DEFAULT 0,
    carrier TEXT, tracking_number TEXT, version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS order_items (
    order_id TEXT NOT NULL, line INTEGER NOT NULL, item_name TEXT NOT NULL, quantity INTEGER NOT NULL,
    unit_price DOUBLE PRECISION NOT NULL, PRIMARY KEY (order_id, line))
"""
TYPES = ["OrderCreated", "ItemAdded", "OrderConfirmed", "OrderShipped", "OrderDelivered", "OrderCancelled"]


def full(name):
    p = pj.Projection(name, batch_size=1000)
    p.setup(lambda tx: tx.execute_script(SETUP))
    p.reset(lambda tx: tx.execute_script("DELETE FROM order_summary; DELETE FROM order_items"))

    @p.on("OrderCreated")
    def created(tx, e):
        d = e.data
        tx.execute(
            "INSERT INTO order_summary (order_id, customer_id, customer_name, status, version) "
            "VALUES (:id, :cid, :cname, 'created', :v) ON CONFLICT (order_id) DO NOTHING",
            id=e.stream_id, cid=d["customer_id"], cname=d["customer_name"], v=e.stream_version,
        )

    @p.on("ItemAdded")
    def item(tx, e):
        d = e.data
        tx.execute(
            "INSERT INTO order_items (order_id, line, item_name, quantity, unit_price) VALUES (:id, :v, :name, :q, :p) "
            "ON CONFLICT (order_id, line) DO NOTHING",
            id=e.stream_id, v=e.stream_version, name=d["item_name"], q=d["quantity"], p=float(d["unit_price"]),
        )
        tx.execute(
            "UPDATE order_summary SET item_count = item_count + :q, total_amount = total_amount + :amount, version = :v "
            "WHERE order_id = :id AND version < :v",
            id=e.stream_id, v=e.stream_version, q=d["quantity"], amount=d["quantity"] * float(d["unit_price"]),
        )

    def status(value):
        def h(tx, e):
            tx.execute(
                "UPDATE order_summary SET status = :s, version = :v WHERE order_id = :id AND version < :v",
                id=e.stream_id, v=e.stream_version, s=value,
            )

        return h

    @p.on("OrderShipped")
    def shipped(tx, e):
        d = e.data
        tx.execute(
            "UPDATE order_summary SET status = 'shipped', carrier = :c, tracking_number = :t, version = :v "
            "WHERE order_id = :id AND version < :v",
            id=e.stream_id, v=e.stream_version, c=d["carrier"], t=d["tracking_number"],
        )

    p.on("OrderConfirmed")(status("confirmed"))
    p.on("OrderDelivered")(status("delivered"))
    p.on("OrderCancelled")(status("cancelled"))
    return p


def boundary(name, read_data):
    p = pj.Projection(name, batch_size=1000)
    p.reset(lambda tx: None)
    for t in TYPES:
        p.on(t)((lambda tx, e: e.data) if read_data else (lambda tx, e: None))
    return p


def fold(lines):
    rows = {}
    for line in lines:
        ev = json.loads(line)
        s, d, t = ev["stream_id"], ev["data"], ev["type"]
        r = rows.get(s)
        if t == "OrderCreated":
            rows.setdefault(s, {"status": "created", "items": 0, "total": 0.0, "carrier": None, "n": 0})
        elif r is None:
            continue
        elif t == "ItemAdded":
            r["items"] += d["quantity"]
            r["total"] += d["quantity"] * float(d["unit_price"])
        elif t == "OrderShipped":
            r["status"], r["carrier"] = "shipped", d["carrier"]
        else:
            r["status"] = {"OrderConfirmed": "confirmed", "OrderDelivered": "delivered", "OrderCancelled": "cancelled"}[t]
    return rows


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--database", default=None, help="postgresql://… (default: a temporary SQLite file)")
    ap.add_argument("--bin", default=os.environ.get("PROJECTIONIST_BIN", "target/release/projectionist"))
    args = ap.parse_args()

    lines = subprocess.run([args.bin, "generate", "--events", str(args.events)], check=True, capture_output=True, text=True).stdout.splitlines()
    url = args.database
    if url is None:
        url = f"sqlite:///{tempfile.mkdtemp()}/bench.db"
    elif "schema=" not in url:
        url += ("&" if "?" in url else "?") + "schema=projectionist_pybench"
        pj.Store.open(url).query("DROP SCHEMA IF EXISTS projectionist_pybench CASCADE")
    store = pj.Store.open(url)
    started = time.perf_counter()
    n = store.import_((e["stream_id"], [(e["type"], e["data"])], None) for e in map(json.loads, lines))
    print(f"import: {n} events in {time.perf_counter() - started:.2f} s", flush=True)

    projections = [boundary("crossing_only", False), boundary("crossing_and_data", True), full("order_summary")]
    engine = pj.Engine(store, projections)
    engine.catch_up()  # setup, and a first pass
    results = {}
    for p in projections:
        started = time.perf_counter()
        report = engine.rebuild(p.name)
        seconds = time.perf_counter() - started
        results[p.name] = report["events"] / seconds
        print(f"rebuild {p.name}: {report['events']} events in {seconds:.2f} s = {results[p.name]:,.0f} events/s", flush=True)

    expected = fold(lines)
    _, got = store.query("SELECT order_id, status, item_count, total_amount, carrier FROM order_summary ORDER BY order_id")
    mismatches = 0
    for order_id, status, items, total, carrier in got:
        r = expected.pop(order_id, None)
        if r is None or (r["status"], r["items"], r["carrier"] or "") != (status, int(items), carrier) or abs(r["total"] - float(total)) > 1e-6 * max(1.0, r["total"]):
            mismatches += 1
    mismatches += len(expected)
    print(f"check: {len(got)} orders, {mismatches} mismatches: {'exact' if mismatches == 0 else 'MISMATCH'}")
    per_event_us = {k: 1e6 / v for k, v in results.items()}
    print(
        "per event: crossing {:.1f} µs, + data {:.1f} µs, + statements {:.1f} µs".format(
            per_event_us["crossing_only"],
            per_event_us["crossing_and_data"] - per_event_us["crossing_only"],
            per_event_us["order_summary"] - per_event_us["crossing_and_data"],
        )
    )
    sys.exit(0 if mismatches == 0 else 1)


if __name__ == "__main__":
    main()
