use super::*;
use crate::core::event::Event;
use crate::core::policy::ErrorPolicy;
use proptest::prelude::*;

fn names(st: &Statement) -> Vec<String> {
    st.params().iter().map(ParamSource::name).collect()
}

#[test]
fn named_parameters_become_positional() {
    let st = Statement::parse(
        "INSERT INTO t (a, b, c, d) VALUES (:stream_id, :data.customer.name, :stream_id, :metadata.user_id)",
    )
    .unwrap();
    assert_eq!(
        names(&st),
        [":stream_id", ":data.customer.name", ":metadata.user_id"]
    );
    assert_eq!(
        st.render_sqlite(),
        "INSERT INTO t (a, b, c, d) VALUES (?1, ?2, ?1, ?3)"
    );
    assert_eq!(
        st.render_postgres(),
        "INSERT INTO t (a, b, c, d) VALUES ($1, $2, $1, $3)"
    );
}

#[test]
fn colons_in_literals_casts_identifiers_and_comments_are_not_parameters() {
    let sql = "SELECT ':data.x', \"a:b\", `c:d`, x::text, E'it\\'s :no', $$ :no $$, $t$ :no $t$ \
               -- :comment\n /* :block */ FROM t WHERE y = :position";
    let st = Statement::parse(sql).unwrap();
    assert_eq!(names(&st), [":position"]);
    assert!(st.render_sqlite().ends_with("WHERE y = ?1"));
    assert!(st.render_sqlite().contains("x::text"));
    assert!(st.render_sqlite().contains("':data.x'"));
}

#[test]
fn unknown_parameters_multiple_statements_and_unterminated_literals_are_errors() {
    assert!(matches!(
        Statement::parse("SELECT :nope"),
        Err(SqlError::UnknownParameter { .. })
    ));
    assert!(matches!(
        Statement::parse("SELECT :stream_id.x"),
        Err(SqlError::UnknownParameter { .. })
    ));
    assert!(matches!(
        Statement::parse("DELETE FROM a; DELETE FROM b"),
        Err(SqlError::MultipleStatements { .. })
    ));
    assert!(Statement::parse("DELETE FROM a;  -- done\n").is_ok());
    assert!(matches!(
        Statement::parse("SELECT 'abc"),
        Err(SqlError::Unterminated { .. })
    ));
    assert!(matches!(Statement::parse("  -- nothing\n"), Err(SqlError::Empty)));
}

#[test]
fn arithmetic_operands_are_found_by_their_neighbours() {
    let st = Statement::parse(
        "UPDATE t SET a = a + :data.q * :data.p, b = :data.b, c = :data.c->>'x', \
         d = -:data.d, e = :data.e::int * 2, f = :data.f -- note\n WHERE k = :stream_id",
    )
    .unwrap();
    assert_eq!(
        names(&st),
        vec![
            ":data.q",
            ":data.p",
            ":data.b",
            ":data.c",
            ":data.d",
            ":data.e",
            ":data.f",
            ":stream_id"
        ]
    );
    assert_eq!(
        st.arithmetic(),
        vec![true, true, false, false, true, false, false, false]
    );
}

#[test]
fn setup_checks_type_placeholders_from_their_kind_and_use() {
    use crate::core::sql::Dialect;
    let st = Statement::parse(
        "UPDATE t SET n = n + :data.q * :data.p, v = :stream_version, m = :metadata WHERE k = :stream_id",
    )
    .unwrap();
    let params = st.params();
    let arithmetic = st.arithmetic();
    let render = |dialect: Dialect| {
        st.render(|n| {
            let sample = params[n - 1].sample();
            dialect.check_placeholder(n, sample.as_ref(), arithmetic[n - 1])
        })
    };
    assert_eq!(
        render(Dialect::Postgres),
        "UPDATE t SET n = n + $1::numeric * $2::numeric, v = $3::bigint, m = $4::jsonb WHERE k = $5"
    );
    assert_eq!(
        render(Dialect::Sqlite),
        "UPDATE t SET n = n + ?1 * ?2, v = ?3, m = ?4 WHERE k = ?5"
    );
}

#[test]
fn scripts_split_at_statement_ends_only() {
    let script = "CREATE TABLE a (x TEXT DEFAULT ';');\n\
                  -- a comment; with a semicolon\n\
                  CREATE TRIGGER t AFTER INSERT ON a BEGIN UPDATE a SET x = CASE WHEN 1 THEN 'y' END; DELETE FROM a; END;\n\
                  CREATE INDEX IF NOT EXISTS i ON a (x);;";
    let parts = split_statements(script).unwrap();
    assert_eq!(parts.len(), 3, "{parts:#?}");
    assert!(parts[1].starts_with("-- a comment") || parts[1].contains("CREATE TRIGGER"));
    assert!(parts[1].ends_with("END"));
}

#[test]
fn default_reset_deletes_the_created_tables_in_reverse() {
    let setup = split_statements(
        "CREATE TABLE IF NOT EXISTS order_summary (id TEXT);\
         create temp table \"Odd Name\" (x);\
         CREATE INDEX IF NOT EXISTS i ON order_summary (id);\
         CREATE TABLE main.items (x)",
    )
    .unwrap();
    assert_eq!(
        created_tables(&setup),
        ["order_summary", "\"Odd Name\"", "main.items"]
    );
}

#[test]
fn extraction_follows_paths_and_types() {
    let event = Event {
        position: 7,
        txid: 0,
        stream_id: "S-1".into(),
        stream_version: 2,
        event_type: "T".into(),
        event_id: uuid::Uuid::nil(),
        data: r#"{"a":{"b":[10, 2.5, "x", true, null, {"k":1}]}}"#.into(),
        metadata: r#"{"user":"u1"}"#.into(),
        recorded_at: chrono::DateTime::default(),
    };
    let decoded = Decoded::of(&event, true, true).unwrap();
    let v = |name: &str| {
        let p = ParamSource::parse(name).unwrap();
        decoded.value(&event, &p, false).unwrap()
    };
    assert_eq!(v("data.a.b.0"), ParamValue::Integer(10));
    assert_eq!(v("data.a.b.1"), ParamValue::Real(2.5));
    assert_eq!(v("data.a.b.2"), ParamValue::Text("x".into()));
    assert_eq!(v("data.a.b.3"), ParamValue::Bool(true));
    assert_eq!(v("data.a.b.4"), ParamValue::Null);
    assert_eq!(v("data.a.b.5"), ParamValue::Json(r#"{"k":1}"#.into()));
    assert_eq!(v("data.a.missing"), ParamValue::Missing);
    assert_eq!(v("metadata.user"), ParamValue::Text("u1".into()));
    assert_eq!(v("position"), ParamValue::Integer(7));
    assert_eq!(v("stream_version"), ParamValue::Integer(2));
    let missing = ParamSource::parse("data.nope").unwrap();
    let err = decoded.value(&event, &missing, true).unwrap_err().to_string();
    assert!(err.contains(":data.nope") && err.contains("strict"), "{err}");
}

const GOOD: &str = r#"
[[projection]]
name = "p1"
setup = "CREATE TABLE IF NOT EXISTS p1 (id TEXT PRIMARY KEY, n INTEGER)"
error_policy = "dead_letter"
batch_size = 10
priority = 5
strict = true
[projection.handlers]
Created = "INSERT INTO p1 (id, n) VALUES (:stream_id, 0)"
Bumped = ["UPDATE p1 SET n = n + 1 WHERE id = :stream_id", "SELECT 1"]
"#;

#[test]
fn config_parses_with_defaults() {
    let c = Config::parse(GOOD, "x.toml").unwrap();
    let p = &c.projections[0];
    assert_eq!(p.name, "p1");
    assert_eq!(p.batch_size, 10);
    assert_eq!(p.priority, 5);
    assert!(p.strict);
    assert_eq!(p.error_policy, ErrorPolicy::DeadLetter);
    assert_eq!(p.reset, ["DELETE FROM p1"]);
    assert!(p.reset_is_default);
    assert_eq!(p.handlers["Bumped"].len(), 2);
    assert_eq!(p.event_types(), ["Bumped", "Created"]);
}

fn config_err(text: &str) -> ConfigError {
    Config::parse(text, "proj.toml").unwrap_err()
}

#[test]
fn config_errors_name_the_file_projection_key_and_expectation() {
    let e = config_err(&GOOD.replace("batch_size = 10", "batch_size = \"ten\""));
    assert_eq!(e.file, "proj.toml");
    assert_eq!(e.projection.as_deref(), Some("p1"));
    assert_eq!(e.key.as_deref(), Some("batch_size"));
    assert!(e.message.contains("expected an integer"), "{e}");
    let shown = e.to_string();
    assert!(
        shown.starts_with("proj.toml: projection p1: key `batch_size`: expected"),
        "{shown}"
    );

    let e = config_err(&GOOD.replace("\"dead_letter\"", "\"explode\""));
    assert_eq!(e.key.as_deref(), Some("error_policy"));
    assert!(e.message.contains("retry_then_dead_letter"));

    let e = config_err(&GOOD.replace("strict = true", "stirct = true"));
    assert_eq!(e.key.as_deref(), Some("stirct"));
    assert!(e.message.contains("unknown key"));

    let e = config_err(&GOOD.replace(":stream_id, 0", ":streamid, 0"));
    assert_eq!(e.key.as_deref(), Some("handlers.Created"));
    assert!(e.message.contains(":streamid"), "{e}");

    let e = config_err(&GOOD.replace("\"SELECT 1\"", "42"));
    assert_eq!(e.key.as_deref(), Some("handlers.Bumped[1]"));

    let e = config_err(&GOOD.replace("name = \"p1\"", ""));
    assert_eq!(e.projection.as_deref(), Some("#1"));
    assert_eq!(e.key.as_deref(), Some("name"));

    let e = config_err("[[projection]\nname = 1");
    assert!(
        e.message.contains("not valid TOML") && e.message.contains("line"),
        "{e}"
    );

    let e = config_err(&format!("{GOOD}\n{GOOD}"));
    assert_eq!(e.key.as_deref(), Some("name"));
    assert!(e.message.contains("unique"));

    let e = config_err("");
    assert!(e.message.contains("no [[projection]]"));
}

/// SQL-ish text made of the tricky pieces the lexer has to get right.
fn sqlish() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        Just("SELECT ".to_owned()),
        Just(":stream_id ".to_owned()),
        Just(":data.a.b ".to_owned()),
        Just(":metadata.x ".to_owned()),
        Just("::text".to_owned()),
        Just("';:data.q'".to_owned()),
        Just("\"col:x\"".to_owned()),
        Just("-- c :data.z\n".to_owned()),
        Just("/* :data.w */".to_owned()),
        Just("$$ :data.v $$".to_owned()),
        Just(", ".to_owned()),
        Just(" + ".to_owned()),
        " [a-z]{0,4} ",
    ];
    proptest::collection::vec(piece, 0..24).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    /// The lexer and the config parser never panic on arbitrary input.
    #[test]
    fn parsers_never_panic(s in "\\PC{0,200}") {
        let _ = Statement::parse(&s);
        let _ = split_statements(&s);
        let _ = Config::parse(&s, "fuzz.toml");
    }

    /// Rendering the placeholders back as their names gives the original SQL, and parameters
    /// inside literals and comments are left alone.
    #[test]
    fn parameters_round_trip(sql in sqlish()) {
        if let Ok(st) = Statement::parse(&sql) {
            let back = st.render(|n| st.params()[n - 1].name());
            prop_assert_eq!(&back, &sql);
            for p in st.params() {
                let n = p.name();
                prop_assert!(n == ":stream_id" || n == ":data.a.b" || n == ":metadata.x", "{}", n);
            }
        }
    }

    /// Arbitrary handler SQL placed in an otherwise valid config either parses or yields a
    /// config error that names the projection and the handler key.
    #[test]
    fn config_errors_locate_the_handler(sql in sqlish()) {
        let text = format!(
            "[[projection]]\nname = \"p\"\n[projection.handlers]\nE = {}\n",
            toml::Value::String(sql)
        );
        match Config::parse(&text, "f.toml") {
            Ok(c) => prop_assert_eq!(c.projections.len(), 1),
            Err(e) => {
                prop_assert_eq!(e.projection.as_deref(), Some("p"));
                prop_assert_eq!(e.key.as_deref(), Some("handlers.E"));
            }
        }
    }

    /// Numeric config values outside their range are rejected with the key named.
    #[test]
    fn out_of_range_numbers_are_rejected(n in any::<i64>()) {
        let text = GOOD.replace("batch_size = 10", &format!("batch_size = {n}"));
        match Config::parse(&text, "f.toml") {
            Ok(c) => prop_assert!((1..=MAX_BATCH_SIZE as i64).contains(&n) && c.projections[0].batch_size == n as usize),
            Err(e) => {
                prop_assert!(!(1..=MAX_BATCH_SIZE as i64).contains(&n));
                prop_assert_eq!(e.key.as_deref(), Some("batch_size"));
            }
        }
    }
}

#[test]
fn named_statements_take_any_name_once_each_in_order_of_first_use() {
    let st = Statement::parse_named(
        "INSERT INTO t (a, b, c) VALUES (:order_id, :total, :order_id) -- :not_me\n ON CONFLICT DO NOTHING /* :nor_me */ RETURNING ':no', x::text",
    )
    .unwrap();
    assert_eq!(st.params(), ["order_id".to_owned(), "total".to_owned()]);
    assert_eq!(
        st.render_sqlite(),
        "INSERT INTO t (a, b, c) VALUES (?1, ?2, ?1) -- :not_me\n ON CONFLICT DO NOTHING /* :nor_me */ RETURNING ':no', x::text"
    );
    assert!(matches!(
        Statement::parse_named("SELECT 1; SELECT 2"),
        Err(SqlError::MultipleStatements { .. })
    ));
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
#[test]
fn a_source_table_becomes_a_table_source_url() {
    let c = Config::parse(
        "[source]\nurl = \"postgres://app@db/shop\"\ntable = \"es.events\"\nposition = \"id\"\n\
         stream_id = \"aggregate_id\"\nstream_version = \"version\"\nevent_type = \"kind\"\ndata = \"payload\"\n\
         gap_guard = true\n\
         [[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
        "p.toml",
    )
    .unwrap();
    let url = c.source.unwrap();
    assert!(url.starts_with("table+postgres://app@db/shop?"), "{url}");
    let mapping = crate::table::TableMapping::from_url(&url).unwrap();
    assert_eq!(
        (mapping.table.as_str(), mapping.data.as_str()),
        ("es.events", "payload")
    );
    assert!(mapping.gap_guard);

    let c = Config::parse(
        "[source]\nkind = \"eventsourcing\"\nurl = \"app.sqlite\"\n[source.topics]\n\"shop:Order.Made\" = \"OrderCreated\"\n\
         [[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
        "p.toml",
    )
    .unwrap();
    let url = c.source.unwrap();
    let mapping = crate::table::TableMapping::from_url(&url).unwrap();
    assert_eq!(mapping.connect, "app.sqlite");
    assert_eq!(
        mapping.eventsourcing.unwrap().topics["shop:Order.Made"],
        "OrderCreated"
    );

    let e = Config::parse(
        "[source]\nurl = \"x.db\"\nposition = 3\n[[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
        "p.toml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("source.position") && e.contains("expected a string"),
        "{e}"
    );
}
