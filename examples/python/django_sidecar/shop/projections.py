"""The app's projections, in Python, and the Projectionist store of Django's database."""

from django.conf import settings

import projectionist as pj

order_summary = pj.Projection("order_summary", error_policy="retry_then_dead_letter", max_retries=3)


@order_summary.setup
def create(tx: pj.Tx) -> None:
    tx.execute_script(
        "CREATE TABLE IF NOT EXISTS order_summary (order_id TEXT PRIMARY KEY, customer_name TEXT NOT NULL, "
        "status TEXT NOT NULL, item_count INTEGER NOT NULL DEFAULT 0, "
        "total_amount DOUBLE PRECISION NOT NULL DEFAULT 0, version INTEGER NOT NULL)"
    )


@order_summary.reset
def empty(tx: pj.Tx) -> None:
    tx.execute_script("DELETE FROM order_summary")


@order_summary.on("OrderCreated")
def created(tx: pj.Tx, e: pj.Event) -> None:
    tx.execute(
        "INSERT INTO order_summary (order_id, customer_name, status, version) "
        "VALUES (:id, :name, 'created', :v) ON CONFLICT (order_id) DO NOTHING",
        id=e.stream_id,
        name=e.data["customer_name"],
        v=e.stream_version,
    )


@order_summary.on("ItemAdded")
def item_added(tx: pj.Tx, e: pj.Event) -> None:
    # Reads before it writes, inside the batch's transaction.
    row = tx.query_one("SELECT version FROM order_summary WHERE order_id = :id", id=e.stream_id)
    if row is None or row["version"] >= e.stream_version:
        return
    tx.execute(
        "UPDATE order_summary SET item_count = item_count + :q, total_amount = total_amount + :amount, "
        "version = :v WHERE order_id = :id",
        q=e.data["quantity"],
        amount=e.data["quantity"] * e.data["unit_price"],
        v=e.stream_version,
        id=e.stream_id,
    )


@order_summary.on("OrderShipped")
def shipped(tx: pj.Tx, e: pj.Event) -> None:
    tx.execute(
        "UPDATE order_summary SET status = 'shipped', version = :v WHERE order_id = :id AND version < :v",
        v=e.stream_version,
        id=e.stream_id,
    )


PROJECTIONS = [order_summary]


def store_url() -> str:
    """Django's default database as a Projectionist store URL."""
    db = settings.DATABASES["default"]
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite://{db['NAME']}"
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    host = db["HOST"] or "127.0.0.1"
    port = f":{db['PORT']}" if db.get("PORT") else ""
    return f"postgresql://{auth}@{host}{port}/{db['NAME']}"


def store() -> pj.Store:
    return pj.Store.open(store_url())
