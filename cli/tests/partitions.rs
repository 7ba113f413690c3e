//! Scale-out on PostgreSQL with real processes: three `projectionist run` processes share a
//! projection of 8 partitions while 200,000 events are appended live; one is killed with
//! SIGKILL partway. The read model must end exactly equal to a clean single-process rebuild,
//! the killed process's partitions must be taken over within the takeover bound, and no
//! partition may ever have been committed by two owners: a trigger (the test's own witness,
//! not the engine's) logs every checkpoint move with the lease owner and token, and each
//! partition's log must be one unbroken chain whose tokens never go back.
//!
//! PostgreSQL from `PROJECTIONIST_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`); required under `CI=true`.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use projectionist::postgres::tokio_postgres;
use projectionist::postgres::PgStore;
use projectionist::EventLog;
use projectionist::{ExpectedVersion, NewEvent, StreamAppend};
use projectionist_testkit as kit;
use serde_json::json;

const EVENTS: usize = 200_000;
const STREAMS: usize = 2_000;
const CHUNK: usize = 1_000;
const TAKEOVER_SECONDS: f64 = 3.0;

const CONFIG: &str = r#"
[[projection]]
name = "ticks"
partitions = 8
batch_size = 250
# A duplicate (primary key) stops the projection instead of hiding.
error_policy = "stop"
setup = """
CREATE TABLE IF NOT EXISTS tick_events (event_id text PRIMARY KEY, stream_id text NOT NULL, stream_version bigint NOT NULL);
CREATE TABLE IF NOT EXISTS tick_streams (stream_id text PRIMARY KEY, n bigint NOT NULL, last_version bigint NOT NULL);
"""

[projection.handlers]
Tick = [
  "INSERT INTO tick_events (event_id, stream_id, stream_version) VALUES (:event_id, :stream_id, :stream_version)",
  # Only the next version moves a stream on: an event out of order leaves n short.
  "INSERT INTO tick_streams AS t (stream_id, n, last_version) VALUES (:stream_id, 1, :stream_version) ON CONFLICT (stream_id) DO UPDATE SET n = t.n + 1, last_version = EXCLUDED.last_version WHERE t.last_version = EXCLUDED.last_version - 1",
]
"#;

/// Logs every move of a checkpoint of `ticks`, with the lease it was made under.
const AUDIT: &str = r#"
CREATE TABLE audit (id bigserial PRIMARY KEY, partition int, old_txid bigint, old_position bigint,
    new_txid bigint, new_position bigint, owner text, token bigint);
CREATE FUNCTION audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.projection = 'ticks' AND (NEW.txid, NEW.position) IS DISTINCT FROM (OLD.txid, OLD.position) THEN
        INSERT INTO audit (partition, old_txid, old_position, new_txid, new_position, owner, token)
        VALUES (NEW.partition, OLD.txid, OLD.position, NEW.txid, NEW.position, NEW.owner, NEW.lease_token);
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER audit_checkpoint AFTER UPDATE ON projection_checkpoints
    FOR EACH ROW EXECUTE FUNCTION audit_checkpoint();
"#;

fn runner(dir: &Path, url: &str) -> Child {
    kit::binary!()
        .command(dir)
        .env("PROJECTIONIST_DATABASE_URL", url)
        .env("PROJECTIONIST_CONFIG", dir.join("projectionist.toml"))
        .env("PROJECTIONIST_LOG", "info")
        .args(["run", "--takeover-seconds", &TAKEOVER_SECONDS.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::from(
            std::fs::File::create(dir.join(format!("run-{}.log", rand_suffix()))).expect("log file"),
        ))
        .spawn()
        .expect("start projectionist run")
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

fn cli(dir: &Path, url: &str, args: &[&str]) -> String {
    let out = kit::binary!()
        .command(dir)
        .env("PROJECTIONIST_DATABASE_URL", url)
        .env("PROJECTIONIST_CONFIG", dir.join("projectionist.toml"))
        .args(args)
        .output()
        .expect("run projectionist");
    assert!(
        out.status.success(),
        "projectionist {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn rows(
    c: &tokio_postgres::Client,
    schema: &str,
) -> (Vec<(String, i64, i64)>, Vec<(String, String, i64)>) {
    let streams = c
        .query(
            &format!("SELECT stream_id, n, last_version FROM {schema}.tick_streams ORDER BY stream_id"),
            &[],
        )
        .await
        .expect("tick_streams")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let events = c
        .query(
            &format!(
                "SELECT event_id, stream_id, stream_version FROM {schema}.tick_events ORDER BY event_id"
            ),
            &[],
        )
        .await
        .expect("tick_events")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    (streams, events)
}

/// Leases of `ticks` by partition: (owner, token).
async fn leases(c: &tokio_postgres::Client, schema: &str) -> BTreeMap<i32, (Option<String>, i64)> {
    c.query(
        &format!(
            "SELECT partition, CASE WHEN expires_at > now() THEN owner END, token \
             FROM {schema}.projection_leases WHERE projection = 'ticks'"
        ),
        &[],
    )
    .await
    .expect("leases")
    .iter()
    .map(|r| (r.get(0), (r.get(1), r.get(2))))
    .collect()
}

/// One logged checkpoint move: old txid, old position, new txid, new position, owner, token.
type Move = (i64, i64, i64, i64, Option<String>, Option<i64>);

fn owned_by(owner: &Option<String>, pid: u32) -> bool {
    owner.as_deref().is_some_and(|o| o.contains(&format!("-{pid}-")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_processes_share_eight_partitions_through_a_sigkill() {
    let Some((schema, c)) = kit::postgres::fresh_schema("partitions", "pcli").await else {
        return;
    };
    let url = kit::postgres::url_with_schema(&schema);
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("projectionist.toml"), CONFIG).expect("config");

    // The engine's tables, then the witness trigger on the checkpoints.
    let store = PgStore::builder(&kit::postgres_url())
        .expect("url")
        .schema(&schema)
        .connect()
        .await
        .expect("connect");
    c.batch_execute(&format!("SET search_path = {schema}; {AUDIT}; RESET search_path"))
        .await
        .expect("audit trigger");

    let mut children: Vec<Child> = (0..3).map(|_| runner(dir.path(), &url)).collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();

    // Wait until the three share the partitions (3 + 3 + 2).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let l = leases(&c, &schema).await;
        let per: Vec<usize> = pids
            .iter()
            .map(|pid| l.values().filter(|(o, _)| owned_by(o, *pid)).count())
            .collect();
        let mut sorted = per.clone();
        sorted.sort();
        if sorted == vec![2, 3, 3] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the three processes never shared 3/3/2: {per:?} {l:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Append live; kill the process that owns partition 0 once 40% are in.
    let mut versions: HashMap<usize, i64> = HashMap::new();
    let mut killed: Option<(u32, Instant, Vec<i32>)> = None;
    let victim_index = {
        let l = leases(&c, &schema).await;
        let owner0 = l.get(&0).and_then(|(o, _)| o.clone()).expect("partition 0 owned");
        pids.iter()
            .position(|pid| owner0.contains(&format!("-{pid}-")))
            .expect("an owner of ours")
    };
    let mut appended = 0;
    let mut takeover: Option<Duration> = None;
    while appended < EVENTS {
        let appends: Vec<StreamAppend> = (0..CHUNK)
            .map(|k| {
                let s = (appended + k * 7) % STREAMS;
                let v = versions.entry(s).or_insert(0);
                *v += 1;
                StreamAppend::new(
                    format!("tick-{s}"),
                    ExpectedVersion::Any,
                    vec![NewEvent::new("Tick", json!({ "v": *v }))],
                )
            })
            .collect();
        store.append_many(appends).await.expect("append");
        appended += CHUNK;
        if killed.is_none() && appended >= EVENTS * 2 / 5 {
            let pid = pids[victim_index];
            let held: Vec<i32> = leases(&c, &schema)
                .await
                .iter()
                .filter(|(_, (o, _))| owned_by(o, pid))
                .map(|(p, _)| *p)
                .collect();
            children[victim_index].kill().expect("SIGKILL");
            let _ = children[victim_index].wait();
            killed = Some((pid, Instant::now(), held));
        }
        if let (Some((pid, at, held)), None) = (&killed, takeover) {
            let l = leases(&c, &schema).await;
            if held
                .iter()
                .all(|p| l.get(p).is_some_and(|(o, _)| o.is_some() && !owned_by(o, *pid)))
            {
                takeover = Some(at.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (dead_pid, killed_at, held) = killed.expect("a process was killed");
    while takeover.is_none() {
        let l = leases(&c, &schema).await;
        if held.iter().all(|p| {
            l.get(p)
                .is_some_and(|(o, _)| o.is_some() && !owned_by(o, dead_pid))
        }) {
            takeover = Some(killed_at.elapsed());
        }
        assert!(
            killed_at.elapsed() < Duration::from_secs(60),
            "no takeover of {held:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = takeover.unwrap_or_default();
    eprintln!("takeover of partitions {held:?} after SIGKILL: {takeover:?} (bound {TAKEOVER_SECONDS} s)");
    assert!(
        takeover.as_secs_f64() <= TAKEOVER_SECONDS + 1.0,
        "takeover took {takeover:?}, bound {TAKEOVER_SECONDS} s"
    );

    // Every partition catches up with every event.
    let head: (i64, i64) = c
        .query_one(
            &format!("SELECT xid, position FROM {schema}.events ORDER BY xid DESC, position DESC LIMIT 1"),
            &[],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .expect("head");
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let behind: i64 = c
            .query_one(
                &format!(
                    "SELECT count(*) FROM {schema}.projection_checkpoints WHERE projection = 'ticks' \
                     AND partition < 8 AND (txid, position) < ($1, $2)"
                ),
                &[&head.0, &head.1],
            )
            .await
            .expect("checkpoints")
            .get(0);
        let stopped: i64 = c
            .query_one(
                &format!("SELECT count(*) FROM {schema}.projection_checkpoints WHERE state <> 'running'"),
                &[],
            )
            .await
            .expect("states")
            .get(0);
        assert_eq!(stopped, 0, "a partition stopped (a duplicate?)");
        if behind == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{behind} partitions never caught up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for (i, child) in children.iter_mut().enumerate() {
        if i != victim_index {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    // Exact: every event once, every stream complete and in order.
    let (streams, events) = rows(&c, &schema).await;
    assert_eq!(events.len(), EVENTS);
    assert_eq!(streams.len(), STREAMS);
    for (stream, n, last) in &streams {
        let s: usize = stream.trim_start_matches("tick-").parse().expect("stream number");
        let len = versions[&s];
        assert_eq!((*n, *last), (len, len), "stream {stream}");
    }

    // The witness: per partition, one unbroken chain of moves; tokens never go back; each
    // token belongs to one owner; and the killed node's partitions changed owner.
    let audit = c
        .query(
            &format!(
                "SELECT partition, old_txid, old_position, new_txid, new_position, owner, token \
                 FROM {schema}.audit ORDER BY id"
            ),
            &[],
        )
        .await
        .expect("audit");
    let mut chains: BTreeMap<i32, Vec<Move>> = BTreeMap::new();
    for r in &audit {
        chains.entry(r.get(0)).or_default().push((
            r.get(1),
            r.get(2),
            r.get(3),
            r.get(4),
            r.get(5),
            r.get(6),
        ));
    }
    assert_eq!(chains.len(), 8, "every partition moved");
    for (p, moves) in &chains {
        let mut at = (0i64, 0i64);
        let mut token = 0i64;
        let mut owners: HashMap<i64, String> = HashMap::new();
        for (old_txid, old_pos, new_txid, new_pos, owner, t) in moves {
            assert_eq!(
                (*old_txid, *old_pos),
                at,
                "partition {p}: a move that does not start where the last ended"
            );
            let (owner, t) = (owner.clone().expect("owner"), t.expect("token"));
            assert!(t >= token, "partition {p}: token went back from {token} to {t}");
            if let Some(prev) = owners.insert(t, owner.clone()) {
                assert_eq!(prev, owner, "partition {p}: token {t} used by two owners");
            }
            token = t;
            at = (*new_txid, *new_pos);
        }
        assert_eq!(at, head, "partition {p} ends at the head");
        if held.contains(p) {
            let first = moves.iter().position(|m| {
                m.4.as_deref()
                    .is_some_and(|o| !o.contains(&format!("-{dead_pid}-")))
            });
            let dead_after = first.map(|i| moves[i..].iter().any(|m| owned_by(&m.4, dead_pid)));
            assert_ne!(
                dead_after,
                Some(true),
                "partition {p}: the killed node committed after its takeover"
            );
        }
    }

    // A clean single-process rebuild gives the same read model.
    c.batch_execute(&format!(
        "DROP TRIGGER audit_checkpoint ON {schema}.projection_checkpoints"
    ))
    .await
    .expect("drop trigger");
    let before = rows(&c, &schema).await;
    cli(dir.path(), &url, &["rebuild", "ticks", "--yes"]);
    assert_eq!(
        rows(&c, &schema).await,
        before,
        "the read model equals a clean rebuild"
    );

    // Status shows each partition with its checkpoint (owners are gone: every runner stopped).
    let status: serde_json::Value =
        serde_json::from_str(&cli(dir.path(), &url, &["status", "--json"])).expect("json");
    let parts: Vec<&serde_json::Value> = status
        .as_array()
        .expect("array")
        .iter()
        .filter(|s| s["name"] == "ticks")
        .collect();
    assert_eq!(parts.len(), 8, "{status}");
    assert!(
        parts.iter().all(|s| s["partitions"] == 8 && s["lag_events"] == 0),
        "{status}"
    );

    c.batch_execute(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .await
        .expect("drop schema");
}
