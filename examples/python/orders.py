"""Seed 002's ORDER-001 story as a Python projection on the embedded SQLite backend: the same
summary as `cargo run --example orders`.

    pip install ./python
    python examples/python/orders.py
"""

from dataclasses import dataclass

import projectionist as pj


@dataclass
class OrderCreated:
    order_id: str
    customer_id: str
    customer_name: str


@dataclass
class ItemAdded:
    order_id: str
    item_name: str
    quantity: int
    unit_price: float


@dataclass
class OrderConfirmed:
    order_id: str


@dataclass
class OrderShipped:
    order_id: str
    carrier: str
    tracking_number: str


@dataclass
class OrderDelivered:
    order_id: str


order_summary = pj.Projection("order_summary", error_policy="retry_then_dead_letter", max_retries=3)


@order_summary.setup
def create_tables(tx):
    tx.execute_script(
        """CREATE TABLE IF NOT EXISTS order_summary (
               order_id TEXT PRIMARY KEY, customer_id TEXT, customer_name TEXT,
               status TEXT NOT NULL, item_count INTEGER NOT NULL DEFAULT 0,
               total_amount REAL NOT NULL DEFAULT 0, carrier TEXT, tracking_number TEXT,
               version INTEGER NOT NULL);
           CREATE TABLE IF NOT EXISTS order_items (
               order_id TEXT NOT NULL, line INTEGER NOT NULL, item_name TEXT NOT NULL,
               quantity INTEGER NOT NULL, unit_price REAL NOT NULL, PRIMARY KEY (order_id, line));"""
    )


@order_summary.reset
def empty_tables(tx):
    tx.execute_script("DELETE FROM order_summary; DELETE FROM order_items;")


@order_summary.on(OrderCreated)
def created(tx, event):
    e = event.data
    print(f"✓ Order created: {e.order_id} for {e.customer_name}")
    tx.execute(
        "INSERT INTO order_summary (order_id, customer_id, customer_name, status, version) "
        "VALUES (:order_id, :customer_id, :customer_name, 'created', :version)",
        order_id=e.order_id, customer_id=e.customer_id, customer_name=e.customer_name, version=event.stream_version,
    )


@order_summary.on(ItemAdded)
def item_added(tx, event):
    e = event.data
    print(f"  ✓ Item added: {e.item_name} (x{e.quantity} @ ${e.unit_price:.2f})")
    tx.execute(
        "INSERT INTO order_items (order_id, line, item_name, quantity, unit_price) "
        "VALUES (:order_id, :line, :item_name, :quantity, :unit_price)",
        order_id=e.order_id, line=event.stream_version, item_name=e.item_name, quantity=e.quantity, unit_price=float(e.unit_price),
    )
    tx.execute(
        "UPDATE order_summary SET item_count = item_count + :quantity, total_amount = total_amount + :amount, "
        "version = :version WHERE order_id = :order_id",
        order_id=e.order_id, quantity=e.quantity, amount=e.quantity * e.unit_price, version=event.stream_version,
    )


def set_status(tx, order_id, status, version):
    tx.execute(
        "UPDATE order_summary SET status = :status, version = :version WHERE order_id = :order_id",
        order_id=order_id, status=status, version=version,
    )


@order_summary.on(OrderConfirmed)
def confirmed(tx, event):
    print("✓ Order confirmed")
    set_status(tx, event.data.order_id, "confirmed", event.stream_version)


@order_summary.on(OrderShipped)
def shipped(tx, event):
    e = event.data
    print(f"✓ Order shipped via {e.carrier} ({e.tracking_number})")
    tx.execute(
        "UPDATE order_summary SET status = 'shipped', carrier = :carrier, tracking_number = :tracking, "
        "version = :version WHERE order_id = :order_id",
        order_id=e.order_id, carrier=e.carrier, tracking=e.tracking_number, version=event.stream_version,
    )


@order_summary.on(OrderDelivered)
def delivered(tx, event):
    print("✓ Order delivered")
    set_status(tx, event.data.order_id, "delivered", event.stream_version)


def main():
    line = "=" * 60
    print(f"{line}\nCQRS Projection Example: Order Read Models\n{line}\n")

    store = pj.Store.open("sqlite://:memory:")
    store.append(
        "ORDER-001",
        [
            OrderCreated("ORDER-001", "CUST-001", "Alice Johnson"),
            ItemAdded("ORDER-001", "Wireless Keyboard", 1, 79.99),
            ItemAdded("ORDER-001", "Mouse", 1, 39.99),
            OrderConfirmed("ORDER-001"),
            OrderShipped("ORDER-001", "FedEx", "1234567890"),
            OrderDelivered("ORDER-001"),
        ],
        expected_version=0,
    )

    print("Processing events...\n")
    engine = pj.Engine(store, [order_summary])
    engine.catch_up()

    print(f"\n{line}\nQuerying Read Models\n{line}\n")
    _, [summary] = store.query(
        "SELECT order_id, customer_name, customer_id, status, total_amount, carrier, tracking_number "
        "FROM order_summary WHERE order_id = 'ORDER-001'"
    )
    order_id, customer, customer_id, status, total, carrier, tracking = summary
    _, items = store.query("SELECT item_name, quantity, unit_price FROM order_items WHERE order_id = 'ORDER-001' ORDER BY line")
    print(f"{line}\nOrder Summary: {order_id}\n{line}")
    print(f"Customer: {customer} ({customer_id})")
    print(f"Status: {status.upper()}\n\nItems:")
    for name, quantity, price in items:
        print(f"  {name} x{quantity} @ ${float(price):.2f} = ${int(quantity) * float(price):.2f}")
    print(f"\nTotal: ${float(total):.2f}")
    print(f"Shipping: {carrier} (Tracking: {tracking})\n{line}")


if __name__ == "__main__":
    main()
