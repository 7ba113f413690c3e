//! Interop with Python `eventsourcing` 9.5.6: a real application of that library stores the
//! orders workload in PostgreSQL and in SQLite (compressed, and encrypted), and Projectionist
//! reads its tables where they lie. The example projections then equal those read from
//! Projectionist's own events table (the reference fold), and `order_summary` equals the
//! library's own `ProjectionRunner` result row by row. (On SQLite the comparison is with the
//! reference fold only: the library's SQLite recorder has no subscriptions, so its
//! `ProjectionRunner` raises `NotImplementedError` there.)
//!
//! The library runs in the peers' virtual environment (`bench/peers/requirements.txt`), which
//! `scripts/test` prepares; `PROJECTIONIST_TEST_PEER_PYTHON` names another interpreter.

mod examples_support;

use std::path::{Path, PathBuf};

use examples_support::{bin, example_dir, ok, pg_rows, sqlite_all, TABLES};
use projectionist_testkit as kit;
use tempfile::TempDir;

const EVENTS: &str = "3000";
/// A fixed AES-256 key (base64) for the encrypted store.
const CIPHER_KEY: &str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";

fn python(test: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PROJECTIONIST_TEST_PEER_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| kit::workspace_root().join("target/peers/venv/bin/python"));
    let found = std::process::Command::new(&path)
        .args(["-c", "import eventsourcing, psycopg, Crypto"])
        .output()
        .map_err(|e| e.to_string())
        .and_then(|o| {
            if o.status.success() {
                Ok(())
            } else {
                Err(String::from_utf8_lossy(&o.stderr).into_owned())
            }
        });
    kit::require(
        test,
        "the Python eventsourcing 9.5.6 virtual environment",
        "run scripts/test (it makes target/peers/venv from bench/peers/requirements.txt), or set PROJECTIONIST_TEST_PEER_PYTHON",
        found.map(|()| path),
    )
}

/// Runs the library's writer (`bench/peers/eventsourcing_store.py`).
fn store(python: &Path, workload: &Path, args: &[&str]) {
    let peers = kit::workspace_root().join("bench/peers");
    let url = url::Url::parse(&kit::postgres_url()).expect("the PostgreSQL URL");
    let out = std::process::Command::new(python)
        .current_dir(&peers)
        .arg(peers.join("eventsourcing_store.py"))
        .args(args)
        .arg(workload)
        .env("PGHOST", url.host_str().unwrap_or("127.0.0.1"))
        .env("PGPORT", url.port().unwrap_or(5432).to_string())
        .env("PGUSER", url.username())
        .env("PGPASSWORD", url.password().unwrap_or(""))
        .env("PGDATABASE", url.path().trim_start_matches('/'))
        .output()
        .expect("run the eventsourcing writer");
    ok(&out);
}

fn setup() -> (TempDir, PathBuf) {
    let dir = example_dir();
    let d = dir.path();
    let workload = ok(&bin(d)
        .args(["generate", "--events", EVENTS, "--seed", "21"])
        .output()
        .expect("generate"));
    let path = d.join("workload.jsonl");
    std::fs::write(&path, &workload).expect("workload");
    (dir, path)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_eventsourcing_postgres_store_projects_like_the_library_and_the_reference() {
    let Some(python) = python("an_eventsourcing_postgres_store_projects_like_the_library_and_the_reference")
    else {
        return;
    };
    let Some((es, client)) = kit::postgres::fresh_schema("es_app", "pcli").await else {
        return;
    };
    let (dir, workload) = setup();
    let d = dir.path();
    let library_rows = d.join("library-rows.json");
    store(
        &python,
        &workload,
        &[
            "--postgres-schema",
            &es,
            "--project",
            &library_rows.to_string_lossy(),
        ],
    );

    // The reference: the same workload imported into Projectionist's own events table.
    let Some((reference, _)) = kit::postgres::fresh_schema("es_ref", "pcli").await else {
        return;
    };
    let reference_url = kit::postgres::url_with_schema(&reference);
    ok(&bin(d)
        .args([
            "import",
            &workload.to_string_lossy(),
            "--database",
            &reference_url,
        ])
        .output()
        .expect("import"));
    ok(&bin(d)
        .args(["run", "--once", "--database", &reference_url])
        .output()
        .expect("reference run"));

    // Projectionist reading the application's table where it lies.
    let Some((models, _)) = kit::postgres::fresh_schema("es_models", "pcli").await else {
        return;
    };
    let source = format!(
        "eventsourcing+{}",
        kit::with_params(&kit::postgres_url(), &format!("application=Orders&schema={es}"))
    );
    let models_url = kit::postgres::url_with_schema(&models);
    ok(&bin(d)
        .args(["run", "--once", "--database", &models_url, "--source", &source])
        .output()
        .expect("run on the eventsourcing table"));
    for (table, cols) in TABLES {
        let got = pg_rows(&client, &models, table, cols).await;
        let want = pg_rows(&client, &reference, table, cols).await;
        assert!(!want.is_empty(), "{table} is empty");
        assert_eq!(got, want, "{table}: eventsourcing table vs events table");
    }

    // order_summary equals the library's own ProjectionRunner result, row by row.
    let library: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&library_rows).expect("rows")).expect("JSON");
    let mut library: Vec<Vec<String>> = library
        .iter()
        .map(|r| {
            let text = |k: &str| r[k].as_str().map(str::to_owned).unwrap_or_default();
            vec![
                text("order_id"),
                text("customer_name"),
                text("status"),
                r["item_count"].to_string(),
                format!("{:.6}", r["total_amount"].as_f64().unwrap_or(f64::NAN)),
                text("carrier"),
                text("tracking_number"),
                r["version"].to_string(),
            ]
        })
        .collect();
    library.sort();
    let ours = pg_rows(
        &client,
        &models,
        "order_summary",
        "order_id, customer_name, status, item_count, round(total_amount, 6), carrier, tracking_number, version",
    )
    .await;
    assert_eq!(ours.len(), library.len());
    assert_eq!(ours, library, "order_summary vs eventsourcing's ProjectionRunner");
    for schema in [&es, &reference, &models] {
        kit::postgres::drop_schema(&client, schema).await;
    }
}

#[test]
fn eventsourcing_sqlite_stores_compressed_and_encrypted_project_like_the_reference() {
    let Some(python) =
        python("eventsourcing_sqlite_stores_compressed_and_encrypted_project_like_the_reference")
    else {
        return;
    };
    let (dir, workload) = setup();
    let d = dir.path();
    let reference = d.join("reference.db");
    ok(&bin(d)
        .args([
            "import",
            &workload.to_string_lossy(),
            "--database",
            &reference.to_string_lossy(),
        ])
        .output()
        .expect("import"));
    ok(&bin(d)
        .args(["run", "--once", "--database", &reference.to_string_lossy()])
        .output()
        .expect("reference run"));
    let want = sqlite_all(&reference);
    assert!(!want[0].is_empty());

    // Compressed: read with compression=zlib.
    let zipped = d.join("zipped-app.sqlite");
    store(
        &python,
        &workload,
        &["--sqlite", &zipped.to_string_lossy(), "--compress"],
    );
    let models = d.join("zipped-models.db");
    let source = format!("eventsourcing+sqlite://{}?compression=zlib", zipped.display());
    ok(&bin(d)
        .args([
            "run",
            "--once",
            "--database",
            &models.to_string_lossy(),
            "--source",
            &source,
        ])
        .output()
        .expect("run on the compressed table"));
    assert_eq!(
        sqlite_all(&models),
        want,
        "compressed eventsourcing table vs events table"
    );

    // Encrypted and compressed: refused without the key, with a clear error; read with it.
    let sealed = d.join("sealed-app.sqlite");
    store(
        &python,
        &workload,
        &[
            "--sqlite",
            &sealed.to_string_lossy(),
            "--compress",
            "--cipher-key",
            CIPHER_KEY,
        ],
    );
    let models = d.join("sealed-models.db");
    let without = bin(d)
        .args([
            "run",
            "--once",
            "--database",
            &models.to_string_lossy(),
            "--source",
            &format!("eventsourcing+sqlite://{}?compression=zlib", sealed.display()),
        ])
        .output()
        .expect("run without the key");
    let stderr = String::from_utf8_lossy(&without.stderr);
    assert_eq!(without.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("cipher_key") || stderr.contains("zlib"),
        "{stderr}"
    );
    let with_key = format!(
        "eventsourcing+sqlite://{}?compression=zlib&cipher_key={}",
        sealed.display(),
        url::form_urlencoded::byte_serialize(CIPHER_KEY.as_bytes()).collect::<String>()
    );
    let out = bin(d)
        .args([
            "run",
            "--once",
            "--database",
            &models.to_string_lossy(),
            "--source",
            &with_key,
        ])
        .output()
        .expect("run with the key");
    ok(&out);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains(CIPHER_KEY),
        "the cipher key is never printed"
    );
    assert_eq!(
        sqlite_all(&models),
        want,
        "encrypted eventsourcing table vs events table"
    );
}
