//! The JSON Schema of projectionist.toml (schema/projectionist.schema.json, printed by
//! `projectionist schema`): a valid draft-07 schema that accepts the example config and the
//! quickstart's file, and rejects unknown keys, as the parser does.

mod examples_support;

use examples_support::{bin, text, CONFIG};
use serde_json::Value;
use tempfile::TempDir;

const SCHEMA: &str = include_str!("../../schema/projectionist.schema.json");

fn validator() -> jsonschema::Validator {
    let schema: Value = serde_json::from_str(SCHEMA).expect("the schema is JSON");
    assert!(
        jsonschema::draft7::meta::is_valid(&schema),
        "not a valid draft-07 schema"
    );
    jsonschema::draft7::new(&schema).expect("the schema compiles")
}

/// The TOML file as the JSON value a TOML language server checks against the schema.
fn as_json(toml_text: &str) -> Value {
    let value: toml::Value = toml::from_str(toml_text).expect("valid TOML");
    serde_json::to_value(value).expect("TOML as JSON")
}

/// The schema's errors for `toml_text`, as text.
fn errors(toml_text: &str) -> Vec<String> {
    let instance = as_json(toml_text);
    validator()
        .iter_errors(&instance)
        .map(|e| e.to_string())
        .collect()
}

/// Whether the library's parser (the keys and values it reads) accepts `toml_text`.
fn parser_accepts(toml_text: &str) -> bool {
    projectionist::declarative::Config::parse(toml_text, "x.toml").is_ok()
}

#[test]
fn projectionist_schema_prints_the_file_in_the_repository() {
    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path()).arg("schema").output().expect("run");
    assert!(out.status.success());
    assert_eq!(text(&out).0, SCHEMA);
}

#[test]
fn the_example_config_and_the_quickstarts_file_are_valid() {
    assert_eq!(errors(CONFIG), Vec::<String>::new());

    let dir = TempDir::new().expect("tempdir");
    let out = bin(dir.path())
        .args(["quickstart", "--events", "10"])
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out).1);
    let written =
        std::fs::read_to_string(dir.path().join("projectionist.toml")).expect("the quickstart's file");
    assert_eq!(errors(&written), Vec::<String>::new());

    // Every key the parser knows, with the daemon's [http] table and a source.
    let full = r#"
source = "nats://127.0.0.1:4222?stream=EVENTS"
[http]
listen = "127.0.0.1:9464"
api_token_env = "MY_TOKEN"
max_lag_events = 1000
max_lag_seconds = 2.5
[[projection]]
name = "p.1"
description = "all keys"
setup = ["CREATE TABLE IF NOT EXISTS t (id TEXT)"]
reset = "DELETE FROM t"
error_policy = "stop"
max_retries = 0
batch_size = 100000
priority = -3
strict = true
partitions = 4
subject = "orders.>"
[projection.handlers]
A = "INSERT INTO t (id) VALUES (:stream_id)"
B = ["DELETE FROM t WHERE id = :stream_id", "INSERT INTO t (id) VALUES (:stream_id)"]
"#;
    assert!(parser_accepts(full));
    assert_eq!(errors(full), Vec::<String>::new());
}

#[test]
fn unknown_keys_and_wrong_values_are_rejected_as_the_parser_rejects_them() {
    let cases = [
        (
            "an unknown top-level key",
            format!("sauce = \"nats://h?stream=S\"\n{CONFIG}"),
        ),
        (
            "an unknown projection key",
            CONFIG.replace("priority = 10", "priorty = 10"),
        ),
        (
            "an unknown error policy",
            CONFIG.replacen("\"retry_then_dead_letter\"", "\"retry_forever\"", 1),
        ),
        (
            "a batch size of 0",
            CONFIG.replacen("batch_size = 1000", "batch_size = 0", 1),
        ),
        (
            "a name with a space",
            CONFIG.replace("\"order_summary\"", "\"order summary\""),
        ),
        ("no projection", "source = \"nats://h?stream=S\"\n".to_owned()),
        (
            "a handler that is a number",
            "[[projection]]\nname = \"p\"\n[projection.handlers]\nA = 3\n".to_owned(),
        ),
    ];
    for (what, config) in cases {
        assert!(!parser_accepts(&config), "the parser accepts {what}");
        assert!(!errors(&config).is_empty(), "the schema accepts {what}");
    }
    // The [http] table is read by the daemon (the library keeps it as written): `check`
    // rejects an unknown key in it, and so does the schema.
    let http = format!("{CONFIG}\n[http]\nlisen = \"9464\"\n");
    let dir = TempDir::new().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), &http).expect("write");
    let out = bin(dir.path()).arg("check").output().expect("run");
    assert_eq!(out.status.code(), Some(2), "check accepts an unknown [http] key");
    assert!(
        !errors(&http).is_empty(),
        "the schema accepts an unknown [http] key"
    );

    let unknown = errors(&CONFIG.replace("priority = 10", "priorty = 10"));
    assert!(unknown.iter().any(|e| e.contains("priorty")), "{unknown:?}");
}
