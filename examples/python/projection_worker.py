"""Seed 004's full `ProjectionWorker` example (cqrs-ddd-projections), ported to Projectionist.

The seed wires an `EventTypeRegistry`, a `ProjectionHandler` with one method per event class,
a `ProjectionRegistry`, a checkpoint store and a `ProjectionWorker(batch_size=100,
poll_interval_seconds=0.5, error_policy=retry x3)`, then `await worker.start()` /
`await worker.stop()`. Here the same pieces map onto Projectionist:

| seed 004                                | Projectionist                                            |
|-----------------------------------------|----------------------------------------------------------|
| `EventTypeRegistry.register(name, cls)` | `pj.EventTypeRegistry().register(cls, name=...)`         |
| `ProjectionHandler.add_handler(cls, f)` | `@projection.on(cls)`: `event.data` is the decoded class |
| `ProjectionRegistry`                    | the list of projections given to `pj.Engine`             |
| `ICheckpointStore`                      | the checkpoint row, committed with the read model        |
| `ProjectionWorker.start()` / `stop()`   | `asyncio.create_task(engine.run_async())` / cancel it    |
| `poll_interval_seconds`                 | none needed: the engine is woken by appends, and polls   |
| `ProjectionErrorPolicy("retry", 3)`     | `error_policy="retry_then_dead_letter", max_retries=3`   |

The one difference that matters: the seed's read model is a dict in memory, updated outside
any transaction, so a crash between the update and `save checkpoint` applies an event twice.
Here the read model is a table written through `tx`, in the same transaction as the
checkpoint: exactly once.

    pip install ./python
    python examples/python/projection_worker.py [DATABASE_URL]
"""

import asyncio
import os
import sys
import tempfile

from pydantic import BaseModel

import projectionist as pj


# 1. Define domain events (the seed's DomainEvent subclasses; pydantic v2 models here).
class OrderCreated(BaseModel):
    order_id: str = ""
    total: float = 0.0


class OrderShipped(BaseModel):
    order_id: str = ""


# 2. Register event types for hydration.
event_registry = pj.EventTypeRegistry()
event_registry.register(OrderCreated, name="OrderCreated")
event_registry.register(OrderShipped, name="OrderShipped")

# 3. Define the projection: one handler per event class, the read model a table.
order_summary = pj.Projection(
    "order_summary",
    batch_size=100,
    error_policy="retry_then_dead_letter",
    max_retries=3,
)


@order_summary.setup
def create_read_model(tx: pj.Tx) -> None:
    tx.execute_script(
        "CREATE TABLE IF NOT EXISTS order_summary ("
        "order_id TEXT PRIMARY KEY, status TEXT NOT NULL, total DOUBLE PRECISION NOT NULL)"
    )


@order_summary.reset
def drop_read_model(tx: pj.Tx) -> None:
    tx.execute_script("DELETE FROM order_summary")


@order_summary.on(OrderCreated)
def on_order_created(tx: pj.Tx, event: pj.Event) -> None:
    tx.execute(
        "INSERT INTO order_summary (order_id, status, total) VALUES (:id, 'created', :total) "
        "ON CONFLICT (order_id) DO NOTHING",
        id=event.data.order_id,
        total=event.data.total,
    )


@order_summary.on(OrderShipped)
def on_order_shipped(tx: pj.Tx, event: pj.Event) -> None:
    # The seed checks `if event.order_id in self.read_db`; the UPDATE does the same.
    tx.execute("UPDATE order_summary SET status = 'shipped' WHERE order_id = :id", id=event.data.order_id)


async def main(url: str) -> None:
    # 4. Wire up: the store (events and read model in one database) and the engine.
    store = pj.Store.open(url, registry=event_registry)
    engine = pj.Engine(store, [order_summary])

    # 5. Run: the worker follows the log in the background while the application appends.
    worker = asyncio.create_task(engine.run_async())
    token = None
    for n in range(1, 4):
        token = store.append(f"ORDER-{n:03}", [OrderCreated(order_id=f"ORDER-{n:03}", total=10.0 * n)], expected_version=0)
    token = store.append("ORDER-002", [OrderShipped(order_id="ORDER-002")], expected_version=1)
    # Read-your-writes: wait until the worker applied the last append.
    await asyncio.get_running_loop().run_in_executor(None, engine.wait_for, "order_summary", token, 10.0)

    # ... the application runs; then stop the worker (a batch is committed whole or not at all).
    worker.cancel()
    try:
        await worker
    except asyncio.CancelledError:
        pass

    _, rows = store.query("SELECT order_id, status, total FROM order_summary ORDER BY order_id")
    for order_id, status, total in rows:
        print(f"{order_id}  {status:<8}  {float(total):6.2f}")
    (status,) = [s for s in engine.status() if s["name"] == "order_summary"]
    print(f"order_summary: checkpoint {status['checkpoint']}, {status['applied']} events applied, {status['errors']} errors")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        asyncio.run(main(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as d:
            asyncio.run(main(os.path.join(d, "worker.db")))
