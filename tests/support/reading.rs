//! A projection whose handlers read before they write, written once over `SqlTx` so that it
//! runs on SQLite and PostgreSQL alike (seed 000's cross-domain projections):
//!
//! - `customers` is another read model, built first: customer id → name, from `OrderCreated`.
//! - `ledger` keeps per order its customer and last applied version (`T_orders`) and per
//!   customer name the items bought (`T_items`). Each `ItemAdded` looks up its order's row,
//!   which an earlier event of the same batch may have written, then the customer's name in
//!   `customers`, then writes. Every event checks the order's last version: a duplicate or an
//!   out-of-order event fails the handler.
#![allow(dead_code)]

use projectionist::sql::{column, Dialect, SqlTx, SqlValue};
use projectionist::{Event, HandlerError, Handlers};
use serde_json::Value;

/// `?N` placeholders rewritten for the context's dialect.
pub fn sql<C: SqlTx + ?Sized>(cx: &C, text: &str) -> String {
    match cx.dialect() {
        Dialect::Sqlite => text.to_owned(),
        Dialect::Postgres => text.replace('?', "$"),
    }
}

pub fn customers<C: SqlTx + ?Sized + 'static>(table: &'static str) -> Handlers<C> {
    Handlers::new()
        .setup(move |cx: &C| {
            cx.execute_script_labeled(
                &format!("CREATE TABLE IF NOT EXISTS {table} (customer_id TEXT PRIMARY KEY, name TEXT NOT NULL)"),
                "",
            )
        })
        .reset(move |cx: &C| cx.execute_script_labeled(&format!("DELETE FROM {table}"), ""))
        .on_json("OrderCreated", move |cx: &C, _ev, v| {
            let id = v["customer_id"].as_str().unwrap_or_default().to_owned();
            let name = v["customer_name"].as_str().unwrap_or_default().to_owned();
            let q = sql(
                cx,
                &format!("INSERT INTO {table} (customer_id, name) VALUES (?1, ?2) ON CONFLICT (customer_id) DO NOTHING"),
            );
            cx.execute(&q, &[SqlValue::from(id), SqlValue::from(name)])
        })
}

fn order_row<C: SqlTx + ?Sized>(cx: &C, prefix: &str, ev: &Event) -> Result<(String, i64), HandlerError> {
    let q = sql(
        cx,
        &format!("SELECT customer_id, version FROM {prefix}orders WHERE order_id = ?1"),
    );
    let Some(row) = cx.query_opt(&q, &[SqlValue::from(ev.stream_id.as_str())])? else {
        return Err(HandlerError::msg(format!(
            "{} at version {} of {}: the order's row is missing",
            ev.event_type, ev.stream_version, ev.stream_id
        )));
    };
    let version: i64 = column(&row, "version")?;
    if version + 1 != ev.stream_version {
        return Err(HandlerError::msg(format!(
            "{} of {}: version {} after {version} (duplicate or out of order)",
            ev.event_type, ev.stream_id, ev.stream_version
        )));
    }
    Ok((column(&row, "customer_id")?, version))
}

fn bump<C: SqlTx + ?Sized>(cx: &C, prefix: &str, ev: &Event, items: i64) -> Result<(), HandlerError> {
    let q = sql(
        cx,
        &format!("UPDATE {prefix}orders SET version = ?2, items = items + ?3 WHERE order_id = ?1"),
    );
    cx.execute(
        &q,
        &[
            SqlValue::from(ev.stream_id.as_str()),
            SqlValue::Int(ev.stream_version),
            SqlValue::Int(items),
        ],
    )
}

/// The reading projection, in tables `{prefix}orders` and `{prefix}items`, reading the
/// `customers` read model.
pub fn ledger<C: SqlTx + ?Sized + 'static>(prefix: &'static str, customers: &'static str) -> Handlers<C> {
    let mut h = Handlers::new()
        .setup(move |cx: &C| {
            cx.execute_script_labeled(
                &format!(
                    "CREATE TABLE IF NOT EXISTS {prefix}orders (order_id TEXT PRIMARY KEY, customer_id TEXT NOT NULL, \
                     version BIGINT NOT NULL, items BIGINT NOT NULL); \
                     CREATE TABLE IF NOT EXISTS {prefix}items (customer TEXT PRIMARY KEY, items BIGINT NOT NULL, \
                     events BIGINT NOT NULL)"
                ),
                "",
            )
        })
        .reset(move |cx: &C| {
            cx.execute_script_labeled(&format!("DELETE FROM {prefix}orders; DELETE FROM {prefix}items"), "")
        })
        .on_json("OrderCreated", move |cx: &C, ev, v: Value| {
            let q = sql(cx, &format!("SELECT 1 AS found FROM {prefix}orders WHERE order_id = ?1"));
            if cx.query_opt(&q, &[SqlValue::from(ev.stream_id.as_str())])?.is_some() {
                return Err(HandlerError::msg(format!("{} created twice (a duplicate)", ev.stream_id)));
            }
            let q = sql(
                cx,
                &format!("INSERT INTO {prefix}orders (order_id, customer_id, version, items) VALUES (?1, ?2, ?3, 0)"),
            );
            cx.execute(
                &q,
                &[
                    SqlValue::from(ev.stream_id.as_str()),
                    SqlValue::from(v["customer_id"].as_str().unwrap_or_default()),
                    SqlValue::Int(ev.stream_version),
                ],
            )
        })
        .on_json("ItemAdded", move |cx: &C, ev, v: Value| {
            let (customer_id, _) = order_row(cx, prefix, ev)?;
            let q = sql(cx, &format!("SELECT name FROM {customers} WHERE customer_id = ?1"));
            let Some(customer) = cx.query_opt(&q, &[SqlValue::from(customer_id.as_str())])? else {
                return Err(HandlerError::msg(format!("customer {customer_id} is not in {customers}")));
            };
            let name: String = column(&customer, "name")?;
            let quantity = v["quantity"].as_i64().unwrap_or(0);
            let q = sql(
                cx,
                &format!(
                    "INSERT INTO {prefix}items (customer, items, events) VALUES (?1, ?2, 1) \
                     ON CONFLICT (customer) DO UPDATE SET items = {prefix}items.items + ?2, events = {prefix}items.events + 1"
                ),
            );
            cx.execute(&q, &[SqlValue::from(name), SqlValue::Int(quantity)])?;
            bump(cx, prefix, ev, quantity)
        });
    for ty in [
        "OrderConfirmed",
        "OrderShipped",
        "OrderDelivered",
        "OrderCancelled",
    ] {
        h = h.on_json(ty, move |cx: &C, ev, _v: Value| {
            order_row(cx, prefix, ev)?;
            bump(cx, prefix, ev, 0)
        });
    }
    h
}
