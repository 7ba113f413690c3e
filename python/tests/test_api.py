"""The store, the handlers' (tx, event), and the engine's operations, on both backends."""

import dataclasses
from typing import ClassVar

import pydantic
import pytest

import projectionist as pj
from conftest import rows


def orders_projection(name="orders", **options):
    p = pj.Projection(name, **options)

    @p.setup
    def setup(tx):
        tx.execute_script("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, items BIGINT NOT NULL, total BIGINT NOT NULL)")

    @p.reset
    def reset(tx):
        tx.execute_script("DELETE FROM orders")

    @p.on("OrderCreated")
    def created(tx, event):
        tx.execute("INSERT INTO orders (id, items, total) VALUES (:id, 0, 0)", id=event.stream_id)

    @p.on("ItemAdded")
    def added(tx, event):
        # Reads before it writes: the row an earlier event of the same batch inserted.
        row = tx.query_one("SELECT items, total FROM orders WHERE id = :id", id=event.stream_id)
        assert row is not None, f"no order {event.stream_id}"
        tx.execute(
            "UPDATE orders SET items = :items, total = :total WHERE id = :id",
            {"id": event.stream_id, "items": row["items"] + 1, "total": row["total"] + event.data["price"]},
        )

    return p


def test_append_returns_tokens_and_conflicts_name_stream_expected_and_actual(store):
    t1 = store.append("A", [("OrderCreated", {"n": 1})], expected_version=0)
    t2 = store.append("A", [("ItemAdded", {"price": 5}), ("ItemAdded", {"price": 7})], expected_version=1)
    assert (t1.position, t1.stream_version) == (1, 1)
    assert (t2.first_position, t2.position, t2.stream_version) == (2, 3, 3)
    with pytest.raises(pj.ConflictError) as e:
        store.append("A", [("ItemAdded", {"price": 1})], expected_version=1)
    assert (e.value.stream, e.value.expected, e.value.actual) == ("A", 1, 3)
    assert isinstance(e.value, pj.ProjectionistError)
    tokens = store.append_many([("B", [("OrderCreated", {})], 0), ("C", [("OrderCreated", {})], None)])
    assert [t.stream_version for t in tokens] == [1, 1]
    assert store.import_(("S%d" % i, [("OrderCreated", {})], 0) for i in range(10)) == 10
    assert store.head() == 15
    # An import is all or nothing.
    with pytest.raises(pj.ConflictError):
        store.import_(iter([("X", [("OrderCreated", {})], 0), ("A", [("OrderCreated", {})], 0)]))
    assert store.head() == 15


def test_events_from_dataclasses_pydantic_models_and_a_registry(store):
    registry = pj.EventTypeRegistry()

    @registry.register(name="OrderPlaced")
    @dataclasses.dataclass
    class Placed:
        order_id: str
        total: int

    class Shipped(pydantic.BaseModel):
        event_type: ClassVar[str] = "OrderShipped"
        order_id: str
        carrier: str

    store = pj.Store(store._inner, registry)
    store.append("O-1", [Placed("O-1", 30), Shipped(order_id="O-1", carrier="DHL"), pj.NewEvent("Note", {"x": 1}, metadata={"by": "me"})])
    seen = []
    p = pj.Projection("seen", registry=registry)

    @p.on(Placed)
    def placed(tx, event):
        seen.append(("placed", event.data))

    @p.on(Shipped)
    def shipped(tx, event):
        seen.append(("shipped", event.data))

    @p.on("Note")
    def note(tx, event):
        seen.append(("note", event.data, event.metadata))

    pj.Engine(store, [p]).catch_up()
    assert seen == [("placed", Placed("O-1", 30)), ("shipped", Shipped(order_id="O-1", carrier="DHL")), ("note", {"x": 1}, {"by": "me"})]


def test_handlers_read_their_batch_and_see_every_event_field(store):
    for i in range(3):
        store.append(f"O-{i}", [("OrderCreated", {}), ("ItemAdded", {"price": 10}), ("ItemAdded", {"price": 5 + i}), ("Unrelated", {})])
    fields = []
    watcher = pj.Projection("watcher")

    @watcher.on("OrderCreated")
    def first(tx, event):
        fields.append((event.position, event.stream_id, event.stream_version, event.event_type, len(event.event_id), event.recorded_at.tzinfo is not None))

    @watcher.on("OrderCreated")
    def second(tx, event):
        fields.append(("second", event.position))

    engine = pj.Engine(store, [orders_projection(batch_size=100), watcher])
    reports = engine.catch_up()
    assert sorted(r["projection"] for r in reports) == ["orders", "watcher"]
    assert rows(store, "SELECT id, items, total FROM orders ORDER BY id") == [("O-0", "2", "15"), ("O-1", "2", "16"), ("O-2", "2", "17")]
    assert fields[:2] == [(1, "O-0", 1, "OrderCreated", 36, True), ("second", 1)]
    assert len(fields) == 6
    status = {s["name"]: s for s in engine.status()}
    # Unknown types are ignored and counted; nothing is an error.
    assert (status["orders"]["applied"], status["orders"]["ignored"], status["orders"]["errors"]) == (9, 3, 0)
    assert status["orders"]["lag_events"] == 0 and status["orders"]["checkpoint"] == 12


def test_a_tx_is_unusable_after_its_call(store):
    kept = []
    p = pj.Projection("keep")

    @p.on("OrderCreated")
    def keep(tx, event):
        assert tx.dialect == store.dialect
        kept.append(tx)

    store.append("A", [("OrderCreated", {})])
    pj.Engine(store, [p]).catch_up()
    with pytest.raises(pj.TxClosedError):
        kept[0].execute("SELECT 1")
    with pytest.raises(pj.TxClosedError):
        kept[0].query("SELECT 1")


def test_rebuild_replays_with_progress_and_pause_resume_show_in_status(store):
    for i in range(50):
        store.append(f"O-{i}", [("OrderCreated", {}), ("ItemAdded", {"price": i})])
    engine = pj.Engine(store, [orders_projection(batch_size=10)])
    engine.catch_up()
    before = rows(store, "SELECT id, items, total FROM orders ORDER BY id")
    seen = []
    report = engine.rebuild("orders", progress=lambda p: seen.append(p["position"]))
    assert report["events"] == 100
    assert seen == sorted(seen) and seen[-1] == 100 and len(seen) == 10
    assert rows(store, "SELECT id, items, total FROM orders ORDER BY id") == before
    engine.pause("orders")
    assert engine.status()[0]["state"] == "paused"
    engine.resume("orders")
    assert engine.status()[0]["state"] == "running"
    with pytest.raises(pj.UnknownProjectionError):
        engine.pause("nope")


def test_wait_for_times_out_with_a_distinct_exception_then_returns(store):
    engine = pj.Engine(store, [orders_projection()])
    token = store.append("A", [("OrderCreated", {})])
    with pytest.raises(pj.WaitTimeoutError) as e:
        engine.wait_for("orders", token, timeout=0.2)
    assert e.value.lag_events == 1
    engine.catch_up()
    assert engine.wait_for("orders", token, timeout=1) >= 0
    assert engine.wait_for("orders", str(token), timeout=1) >= 0


def test_run_follows_the_log_until_stop(store):
    import threading
    import time

    engine = pj.Engine(store, [orders_projection()])
    t = threading.Thread(target=engine.run)
    t.start()
    try:
        token = store.append("A", [("OrderCreated", {}), ("ItemAdded", {"price": 3})])
        engine.wait_for("orders", token, timeout=10)
        assert rows(store, "SELECT id, items, total FROM orders") == [("A", "1", "3")]
    finally:
        engine.stop()
        t.join(10)
    assert not t.is_alive()
    time.sleep(0)


def test_run_async_stops_when_cancelled(store):
    import asyncio

    engine = pj.Engine(store, [orders_projection()])

    async def main():
        task = asyncio.ensure_future(engine.run_async())
        token = store.append("A", [("OrderCreated", {})])
        await asyncio.get_running_loop().run_in_executor(None, engine.wait_for, "orders", token, 10.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert rows(store, "SELECT id FROM orders") == [("A",)]


def test_exceptions_mirror_the_engine_errors():
    for cls in [pj.ConflictError, pj.WaitTimeoutError, pj.ConfigError, pj.DatabaseError, pj.InlineProjectionError,
                pj.RetryFailedError, pj.UnknownDeadLetterError, pj.InvalidInputError, pj.StatementError, pj.DecodeError]:
        assert issubclass(cls, pj.ProjectionistError)
    with pytest.raises(pj.ConfigError):
        pj.Store.open("mysql://x/y")
    with pytest.raises(pj.ConfigError):
        pj.Projection("x", error_policy="sometimes")


def test_a_failing_statement_is_a_statement_error_inside_the_handler(store):
    caught = []
    p = pj.Projection("bad_sql", error_policy="skip")

    @p.on("OrderCreated")
    def h(tx, event):
        try:
            tx.query("SELECT * FROM no_such_table")
        except pj.StatementError as e:
            caught.append(str(e))

    store.append("A", [("OrderCreated", {})])
    pj.Engine(store, [p]).catch_up()
    assert len(caught) == 1 and "no_such_table" in caught[0]


def test_a_blue_green_rebuild_builds_beside_and_swaps_in_the_same_rows(store):
    for i in range(30):
        store.append(f"O-{i}", [("OrderCreated", {}), ("ItemAdded", {"price": i})])
    engine = pj.Engine(store, [orders_projection(batch_size=7)])
    engine.catch_up()
    before = rows(store, "SELECT id, items, total FROM orders ORDER BY id")
    report = engine.rebuild("orders", blue_green=True)
    assert report["events"] == 60 and report["position"] > 0
    assert rows(store, "SELECT id, items, total FROM orders ORDER BY id") == before
    # The live projection goes on from the swapped checkpoint.
    token = store.append("O-new", [("OrderCreated", {}), ("ItemAdded", {"price": 5})])
    engine.catch_up()
    engine.wait_for("orders", token, timeout=5)
    assert rows(store, "SELECT items, total FROM orders WHERE id = 'O-new'") == [("1", "5")]


def test_catch_up_async_returns_the_reports(store):
    import asyncio

    store.append("A", [("OrderCreated", {}), ("ItemAdded", {"price": 4})])
    engine = pj.Engine(store, [orders_projection()])
    reports = asyncio.run(engine.catch_up_async())
    assert [(r["projection"], r["events"]) for r in reports] == [("orders", 2)]
    assert rows(store, "SELECT id, items, total FROM orders") == [("A", "1", "4")]


@pytest.mark.postgres
def test_a_partitioned_projection_splits_the_streams_and_ends_exact(tmp_path):
    from conftest import pg_url

    store = pj.Store.open(pg_url("partitioned_projection"))
    for i in range(40):
        store.append(f"O-{i}", [("OrderCreated", {}), ("ItemAdded", {"price": i}), ("ItemAdded", {"price": 1})])
    engine = pj.Engine(store, [orders_projection(partitions=4)])
    engine.catch_up()
    status = [s for s in engine.status() if s["name"] == "orders"]
    assert sorted(s["partition"] for s in status) == [0, 1, 2, 3]
    assert sum(s["applied"] for s in status) == 120
    assert rows(store, "SELECT count(*), sum(items), sum(total) FROM orders") == [("40", "80", str(sum(range(40)) + 40))]
