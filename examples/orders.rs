//! Seed 002's ORDER-001 story as a typed projection on the embedded SQLite backend.
//!
//! ```text
//! cargo run --example orders
//! ```

use projectionist::sqlite::{rusqlite, SqliteHandlers, SqliteProjection, SqliteStore, StreamAppend};
use projectionist::EventLog;
use projectionist::{ErrorPolicy, ExpectedVersion, HandlerError, NewEvent};
use serde::{Deserialize, Serialize};
use serde_json::json;

#[derive(Serialize, Deserialize)]
struct OrderCreated {
    order_id: String,
    customer_id: String,
    customer_name: String,
}

#[derive(Serialize, Deserialize)]
struct ItemAdded {
    order_id: String,
    item_name: String,
    quantity: i64,
    unit_price: f64,
}

#[derive(Serialize, Deserialize)]
struct OrderShipped {
    order_id: String,
    carrier: String,
    tracking_number: String,
}

#[derive(Deserialize)]
struct OrderRef {
    order_id: String,
}

fn order_summary() -> SqliteProjection {
    let handlers = SqliteHandlers::new()
        .setup(|db| {
            db.execute_batch(
                "CREATE TABLE IF NOT EXISTS order_summary (
                    order_id TEXT PRIMARY KEY, customer_id TEXT, customer_name TEXT,
                    status TEXT NOT NULL, item_count INTEGER NOT NULL DEFAULT 0,
                    total_amount REAL NOT NULL DEFAULT 0, carrier TEXT, tracking_number TEXT,
                    version INTEGER NOT NULL);
                 CREATE TABLE IF NOT EXISTS order_items (
                    order_id TEXT NOT NULL, line INTEGER NOT NULL, item_name TEXT NOT NULL,
                    quantity INTEGER NOT NULL, unit_price REAL NOT NULL, PRIMARY KEY (order_id, line));",
            )?;
            Ok(())
        })
        .reset(|db| {
            db.execute_batch("DELETE FROM order_summary; DELETE FROM order_items;")?;
            Ok(())
        })
        .on("OrderCreated", |db, ev, e: OrderCreated| {
            println!("✓ Order created: {} for {}", e.order_id, e.customer_name);
            db.execute(
                "INSERT INTO order_summary (order_id, customer_id, customer_name, status, version)
                 VALUES (?1, ?2, ?3, 'created', ?4)",
                (&e.order_id, &e.customer_id, &e.customer_name, ev.stream_version),
            )?;
            Ok(())
        })
        .on("ItemAdded", |db, ev, e: ItemAdded| {
            println!("  ✓ Item added: {} (x{} @ ${:.2})", e.item_name, e.quantity, e.unit_price);
            db.execute(
                "INSERT INTO order_items (order_id, line, item_name, quantity, unit_price) VALUES (?1, ?2, ?3, ?4, ?5)",
                (&e.order_id, ev.stream_version, &e.item_name, e.quantity, e.unit_price),
            )?;
            db.execute(
                "UPDATE order_summary SET item_count = item_count + ?2, total_amount = total_amount + ?3, version = ?4
                 WHERE order_id = ?1",
                (&e.order_id, e.quantity, e.quantity as f64 * e.unit_price, ev.stream_version),
            )?;
            Ok(())
        })
        .on("OrderConfirmed", |db, ev, e: OrderRef| {
            println!("✓ Order confirmed");
            set_status(db, &e.order_id, "confirmed", ev.stream_version)
        })
        .on("OrderShipped", |db, ev, e: OrderShipped| {
            println!("✓ Order shipped via {} ({})", e.carrier, e.tracking_number);
            db.execute(
                "UPDATE order_summary SET status = 'shipped', carrier = ?2, tracking_number = ?3, version = ?4
                 WHERE order_id = ?1",
                (&e.order_id, &e.carrier, &e.tracking_number, ev.stream_version),
            )?;
            Ok(())
        })
        .on("OrderDelivered", |db, ev, e: OrderRef| {
            println!("✓ Order delivered");
            set_status(db, &e.order_id, "delivered", ev.stream_version)
        });
    SqliteProjection::new("order_summary", handlers).error_policy(ErrorPolicy::retry_then_dead_letter(3))
}

fn set_status(
    db: &rusqlite::Connection,
    order_id: &str,
    status: &str,
    version: i64,
) -> Result<(), HandlerError> {
    db.execute(
        "UPDATE order_summary SET status = ?2, version = ?3 WHERE order_id = ?1",
        (order_id, status, version),
    )?;
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let line = "=".repeat(60);
    println!("{line}\nCQRS Projection Example: Order Read Models\n{line}\n");

    let store = SqliteStore::in_memory()?;
    let events = vec![
        NewEvent::new(
            "OrderCreated",
            json!({"order_id": "ORDER-001", "customer_id": "CUST-001", "customer_name": "Alice Johnson"}),
        ),
        NewEvent::new(
            "ItemAdded",
            json!({"order_id": "ORDER-001", "item_name": "Wireless Keyboard", "quantity": 1, "unit_price": 79.99}),
        ),
        NewEvent::new(
            "ItemAdded",
            json!({"order_id": "ORDER-001", "item_name": "Mouse", "quantity": 1, "unit_price": 39.99}),
        ),
        NewEvent::new("OrderConfirmed", json!({"order_id": "ORDER-001"})),
        NewEvent::new(
            "OrderShipped",
            json!({"order_id": "ORDER-001", "carrier": "FedEx", "tracking_number": "1234567890"}),
        ),
        NewEvent::new("OrderDelivered", json!({"order_id": "ORDER-001"})),
    ];
    store
        .append_many(vec![StreamAppend::new(
            "ORDER-001",
            ExpectedVersion::NoStream,
            events,
        )])
        .await?;

    println!("Processing events...\n");
    let engine = store.engine().with(order_summary())?;
    engine.catch_up().await?;

    println!("\n{line}\nQuerying Read Models\n{line}\n");
    let (summary, items) = store
        .read(|db| {
            let summary = db.query_row(
                "SELECT order_id, customer_name, customer_id, status, total_amount, carrier, tracking_number
                 FROM order_summary WHERE order_id = 'ORDER-001'",
                [],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, f64>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, Option<String>>(6)?,
                    ))
                },
            )?;
            let mut st = db.prepare("SELECT item_name, quantity, unit_price FROM order_items WHERE order_id = 'ORDER-001' ORDER BY line")?;
            let items = st
                .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?, r.get::<_, f64>(2)?)))?
                .collect::<Result<Vec<_>, _>>()?;
            Ok((summary, items))
        })
        .await?;
    let (order_id, customer, customer_id, status, total, carrier, tracking) = summary;
    println!("{line}\nOrder Summary: {order_id}\n{line}");
    println!("Customer: {customer} ({customer_id})");
    println!("Status: {}\n\nItems:", status.to_uppercase());
    for (name, quantity, price) in items {
        println!(
            "  {name} x{quantity} @ ${price:.2} = ${:.2}",
            quantity as f64 * price
        );
    }
    println!("\nTotal: ${total:.2}");
    println!(
        "Shipping: {} (Tracking: {})\n{line}",
        carrier.unwrap_or_default(),
        tracking.unwrap_or_default()
    );
    Ok(())
}
