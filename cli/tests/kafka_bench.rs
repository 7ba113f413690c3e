//! `projectionist bench --source kafka://…` on a small workload, against a real Kafka-protocol
//! broker (`PROJECTIONIST_TEST_KAFKA_URL`, default `kafka://127.0.0.1:9092`; required under
//! `CI=true`, skipped loudly elsewhere): the events go to a fresh topic of 8 partitions, a bare
//! consumer reads them all back, and the declarative projection rebuilt from the topic equals
//! the reference read model, with its ratio to the rebuild from the events table.

use std::time::Duration;

use projectionist_testkit as kit;
use serde_json::Value;

const EVENTS: u64 = 3_000;

#[test]
fn bench_with_a_kafka_source_rebuilds_from_a_fresh_topic_and_verifies_it() {
    const TEST: &str = "bench_with_a_kafka_source_rebuilds_from_a_fresh_topic_and_verifies_it";
    let url = kit::kafka_url();
    let host = url
        .split_once("://")
        .map_or(url.as_str(), |(_, r)| r)
        .split(['?', '/', ','])
        .next()
        .unwrap_or_default()
        .to_owned();
    let reached = std::net::ToSocketAddrs::to_socket_addrs(host.as_str())
        .and_then(|mut a| {
            a.next()
                .ok_or_else(|| std::io::Error::other(format!("{host} resolves to nothing")))
        })
        .and_then(|a| std::net::TcpStream::connect_timeout(&a, Duration::from_secs(5)));
    let Some(_) = kit::require_service(TEST, kit::Service::Kafka, reached) else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kit::binary!()
        .command(dir.path())
        .args(["bench", "--events", &EVENTS.to_string(), "--live-seconds", "0"])
        .args(["--source", &url, "--json"])
        .output()
        .expect("run the bench");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let phases: Vec<Value> = serde_json::from_slice(&out.stdout).expect("json");
    let phase = |name: &str| -> &Value {
        phases
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no phase {name:?} in {phases:?}"))
    };
    let produced = phase("kafka: produce to a fresh topic, 8 partitions");
    assert_eq!(produced["events"], EVENTS);
    let fetched = phase("kafka: bare consumer fetch (broker alone)");
    assert_eq!(fetched["events"], EVENTS, "every record read back");
    assert_eq!(fetched["verified"], true);
    let rebuilt = phase("rebuild: declarative SQL from Kafka, 8 partitions");
    assert_eq!(rebuilt["verified"], true, "the read model equals the reference");
    let table = phase("rebuild: declarative SQL projection");
    let ratio = rebuilt["ratio_to_events_table"].as_f64().expect("a ratio");
    let expected = rebuilt["events_per_second"].as_f64().expect("a rate")
        / table["events_per_second"].as_f64().expect("a rate");
    assert!(
        (ratio - expected).abs() < 1e-9 * expected.max(1.0),
        "{ratio} vs {expected}"
    );
    assert!(
        table.get("ratio_to_events_table").is_none(),
        "only the Kafka phases have it"
    );
}

#[test]
fn bench_refuses_a_source_that_is_not_kafka() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = kit::binary!()
        .command(dir.path())
        .args([
            "bench",
            "--events",
            "10",
            "--source",
            "nats://127.0.0.1:4222?stream=x",
        ])
        .output()
        .expect("run the bench");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("kafka://HOST:9092"), "{stderr}");
}
