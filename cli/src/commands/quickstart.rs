//! `projectionist quickstart`: the README's main job. With no server and no flags it writes an
//! embedded database and the example projections into the current folder, imports the orders
//! example, runs the projections to the head, and shows what they built.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use projectionist::backend::{AnyStore, SqlStore, TextRows};
use projectionist::declarative::Config;
use projectionist::workload::{order_001_story, Orders};

use super::import::import_lines;
use super::{catch_up_with_bars, status, Ctx};
use crate::args::QuickstartArgs;
use crate::backend::Events;
use crate::exit::usage;
use crate::output;

/// The example projections (also in the repository as examples/projectionist.toml).
pub const EXAMPLE_CONFIG: &str = include_str!("../../../examples/projectionist.toml");

/// Tests of the example projections (examples/projectionist.test.toml), for `projectionist test`.
pub const EXAMPLE_TESTS: &str = include_str!("../../../examples/projectionist.test.toml");

/// Where the quickstart writes the example tests: beside the projections file.
fn tests_path(config_path: &std::path::Path) -> std::path::PathBuf {
    config_path
        .parent()
        .unwrap_or(std::path::Path::new(""))
        .join("projectionist.test.toml")
}

pub async fn run(ctx: &Ctx, a: QuickstartArgs) -> Result<()> {
    let started = Instant::now();
    let config_path = ctx.config_path().to_path_buf();
    let mut existing: Vec<String> = ctx
        .url
        .existing_files()
        .iter()
        .map(|p| p.display().to_string())
        .collect();
    if config_path.exists() {
        existing.push(config_path.display().to_string());
    }
    let tests_path = tests_path(&config_path);
    if tests_path.exists() {
        existing.push(tests_path.display().to_string());
    }
    if !existing.is_empty() && !a.force {
        return Err(usage(format!(
            "{} already exist(s) here; the quickstart does not overwrite them. Pass --force to replace \
             them (this deletes that database), or run it in an empty folder",
            existing.join(" and ")
        )));
    }
    if a.force {
        for f in ctx.url.existing_files() {
            std::fs::remove_file(&f).with_context(|| format!("cannot remove {}", f.display()))?;
        }
    }
    std::fs::write(&config_path, EXAMPLE_CONFIG)
        .with_context(|| format!("cannot write {}", config_path.display()))?;
    std::fs::write(&tests_path, EXAMPLE_TESTS)
        .with_context(|| format!("cannot write {}", tests_path.display()))?;
    let config = Config::parse(EXAMPLE_CONFIG, &config_path.display().to_string())?;

    println!("Projectionist quickstart");
    println!("  database     {} (embedded, no server)", ctx.url);
    println!(
        "  projections  {} ({})",
        config_path.display(),
        config
            .projections
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  tests        {} (run them with `projectionist test`)",
        tests_path.display()
    );
    println!();

    let db = ctx.database().await?;

    // The bundled example: seed 002's ORDER-001 story, then the orders workload, as JSON lines
    // through the same import path as `projectionist import`.
    let mut lines = Vec::with_capacity((a.events as usize + 6) * 150);
    for e in order_001_story().into_iter().chain(Orders::new(a.seed, a.events)) {
        lines.extend_from_slice(e.to_json_line().as_bytes());
        lines.push(b'\n');
    }
    let len = lines.len() as u64;
    println!(
        "Importing the orders example ({} events) ...",
        output::thousands(a.events + 6)
    );
    let (n, secs) = import_lines(
        &db.store,
        Box::new(Cursor::new(lines)),
        Some(len),
        "the orders example",
        None,
    )
    .await?
    .ok_or_else(|| anyhow::anyhow!("the example's import stopped"))?;
    println!(
        "  imported {} events in {secs:.2} s ({} events/s)",
        output::thousands(n),
        output::rate(n, secs)
    );
    println!();

    println!("Running the projections to the head ...");
    let engine = Arc::new(ctx.engine(&db, &Events::database(&db), Some(&config))?);
    let reports = catch_up_with_bars(engine.clone(), &[], None).await?;
    for r in &reports {
        println!(
            "  {:<20} {:>9} events in {:.2} s ({} events/s)",
            r.projection,
            output::thousands(r.events),
            r.seconds,
            output::rate(r.events, r.seconds)
        );
    }
    let status_table = status::render(&engine, false).await?;
    println!();
    println!("Status");
    print!("{status_table}");
    println!();

    print_order_001(&db.store).await?;

    println!("Orders per status (order_summary)");
    let rows = db
        .store
        .query_text(
            "SELECT status, count(*) AS orders, sum(item_count) AS items, sum(total_amount) AS total_amount \
             FROM order_summary GROUP BY status ORDER BY count(*) DESC, status",
        )
        .await?;
    print!("{}", show(&rows));
    println!();

    println!("Revenue per carrier (revenue_by_carrier)");
    let rows = db
        .store
        .query_text(
            "SELECT carrier, shipped, delivered, revenue FROM revenue_by_carrier ORDER BY revenue DESC, carrier",
        )
        .await?;
    print!("{}", show(&rows));
    println!();

    println!(
        "Done in {:.1} s. Next, in this folder:",
        started.elapsed().as_secs_f64()
    );
    println!("  projectionist status                  # lag, rate, errors per projection");
    println!(
        "  projectionist append --stream ORDER-001 --type OrderCancelled --data '{{\"order_id\": \"ORDER-001\", \"reason\": \"changed my mind\"}}'"
    );
    println!("  projectionist run                     # keep the read models current (Ctrl-C stops)");
    println!("  projectionist rebuild order_summary   # replay one projection from scratch");
    println!("  projectionist test                    # run the projections' tests (docs/testing.md)");
    println!("  sqlite3 projectionist.db 'SELECT * FROM orders_by_customer'");
    println!(
        "Edit {} to change the projections (see docs/config.md).",
        config_path.display()
    );
    Ok(())
}

fn show(rows: &TextRows) -> String {
    let headers: Vec<&str> = rows.columns.iter().map(String::as_str).collect();
    let body: Vec<Vec<String>> = rows
        .rows
        .iter()
        .map(|r| r.iter().map(|c| two_decimals(c)).collect())
        .collect();
    output::table(&headers, &body)
}

/// Real numbers with two decimals; everything else as it is.
fn two_decimals(cell: &str) -> String {
    if cell.contains('.') {
        if let Ok(x) = cell.parse::<f64>() {
            return format!("{x:.2}");
        }
    }
    cell.to_owned()
}

/// A number with two decimals.
fn money(cell: &str) -> String {
    cell.parse::<f64>()
        .map_or_else(|_| cell.to_owned(), |x| format!("{x:.2}"))
}

async fn print_order_001(store: &AnyStore) -> Result<()> {
    let summary = store
        .query_text(
            "SELECT customer_name, customer_id, status, item_count, total_amount, carrier, tracking_number \
             FROM order_summary WHERE order_id = 'ORDER-001'",
        )
        .await?;
    let items = store
        .query_text(
            "SELECT item_name, quantity, unit_price, quantity * unit_price FROM order_items \
             WHERE order_id = 'ORDER-001' ORDER BY line",
        )
        .await?;
    let line = "=".repeat(60);
    println!("{line}\nOrder Summary: ORDER-001 (seed 002's story)\n{line}");
    let Some(s) = summary.rows.first() else {
        println!("ORDER-001 is not in order_summary; check `projectionist status` for errors\n");
        return Ok(());
    };
    let cell = |i: usize| s.get(i).map(String::as_str).unwrap_or_default();
    println!("Customer: {} ({})", cell(0), cell(1));
    println!("Status:   {}", cell(2).to_uppercase());
    println!("Items:    {}", cell(3));
    for it in &items.rows {
        let c = |i: usize| it.get(i).map(String::as_str).unwrap_or_default();
        println!("  {} x{} @ ${} = ${}", c(0), c(1), money(c(2)), money(c(3)));
    }
    println!("Total:    ${}", money(cell(4)));
    println!("Shipping: {} (Tracking: {})", cell(5), cell(6));
    println!("{line}\n");
    Ok(())
}
