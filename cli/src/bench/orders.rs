//! The `order_summary` read model of DESIGN.md in every style, shared by the backends.

use projectionist::{Documents, HandlerError};
use serde::{Deserialize, Serialize};

/// The `order_summary` table (portable SQL: SQLite and PostgreSQL).
pub fn create_table(table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (
            order_id        TEXT PRIMARY KEY,
            customer_name   TEXT,
            status          TEXT NOT NULL,
            item_count      INTEGER NOT NULL DEFAULT 0,
            total_amount    DOUBLE PRECISION NOT NULL DEFAULT 0,
            carrier         TEXT,
            tracking_number TEXT,
            version         INTEGER NOT NULL
        )"
    )
}

/// `order_summary` as a declarative SQL projection (the same statements as the example config,
/// without its extra `order_items` table), in `partitions` partitions (1: not partitioned),
/// with `batch_size` events per batch (`None`: the store's default, as in a projections file
/// that does not set it).
pub fn declarative_config(name: &str, table: &str, batch_size: Option<usize>, partitions: u32) -> String {
    let batch_size = batch_size.map_or(String::new(), |n| format!("batch_size = {n}\n"));
    format!(
        r#"
[[projection]]
name = "{name}"
partitions = {partitions}
{batch_size}error_policy = "stop"
setup = """{setup}"""

[projection.handlers]
OrderCreated = """
INSERT INTO {table} (order_id, customer_name, status, version)
VALUES (:stream_id, :data.customer_name, 'created', :stream_version)
ON CONFLICT (order_id) DO NOTHING"""
ItemAdded = """
UPDATE {table} SET item_count = item_count + :data.quantity,
       total_amount = total_amount + :data.quantity * :data.unit_price, version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderConfirmed = """
UPDATE {table} SET status = 'confirmed', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderShipped = """
UPDATE {table} SET status = 'shipped', carrier = :data.carrier, tracking_number = :data.tracking_number,
       version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderDelivered = """
UPDATE {table} SET status = 'delivered', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
OrderCancelled = """
UPDATE {table} SET status = 'cancelled', version = :stream_version
 WHERE order_id = :stream_id AND version < :stream_version"""
"#,
        setup = create_table(table)
    )
}

/// The document of `order_summary`.
#[derive(Default, Serialize, Deserialize)]
pub struct Summary {
    order_id: String,
    customer_name: Option<String>,
    status: String,
    item_count: i64,
    total_amount: f64,
    carrier: Option<String>,
    tracking_number: Option<String>,
    version: i64,
}

#[derive(Deserialize)]
pub struct Created {
    pub customer_name: String,
}
#[derive(Deserialize)]
pub struct Item {
    pub quantity: i64,
    pub unit_price: f64,
}
#[derive(Deserialize)]
pub struct Shipped {
    pub carrier: String,
    pub tracking_number: String,
}
#[derive(Deserialize)]
pub struct Nothing {}

/// `order_summary` as documents.
pub fn documents(table: &str) -> Documents<Summary> {
    fn status(
        s: &'static str,
    ) -> impl Fn(&mut Summary, &projectionist::Event, Nothing) -> Result<(), HandlerError> {
        move |d, ev, _| {
            d.status = s.into();
            d.version = ev.stream_version;
            Ok(())
        }
    }
    Documents::<Summary>::new(table, "order_id")
        .setup_sql(create_table(table))
        .on("OrderCreated", |d: &mut Summary, ev, e: Created| {
            d.customer_name = Some(e.customer_name);
            d.status = "created".into();
            d.version = ev.stream_version;
            Ok(())
        })
        .on("ItemAdded", |d: &mut Summary, ev, e: Item| {
            d.item_count += e.quantity;
            d.total_amount += e.quantity as f64 * e.unit_price;
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderConfirmed", status("confirmed"))
        .on("OrderShipped", |d: &mut Summary, ev, e: Shipped| {
            d.status = "shipped".into();
            d.carrier = Some(e.carrier);
            d.tracking_number = Some(e.tracking_number);
            d.version = ev.stream_version;
            Ok(())
        })
        .on("OrderDelivered", status("delivered"))
        .on("OrderCancelled", status("cancelled"))
}
