//! Shared by `http.rs` and `browser.rs`: a folder with projections that make a dead letter
//! and a stopped projection, a real daemon on a free loopback port, and a tiny HTTP client.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use projectionist::sqlite::rusqlite::Connection;
use serde_json::Value;

/// A password-like secret carried by every test database URL: it must never be shown.
pub const SECRET: &str = "hunter2-TOPSECRET";
pub const TOKEN: &str = "test-token-0123456789";

/// `items` dead-letters an event whose code has no label (until the label is added);
/// `totals` counts every event; `audit` stops on code `Z`.
pub const CONFIG: &str = r#"
[[projection]]
name = "items"
error_policy = "dead_letter"
setup = """
CREATE TABLE IF NOT EXISTS item_labels (code TEXT PRIMARY KEY, label TEXT NOT NULL);
INSERT OR IGNORE INTO item_labels (code, label) VALUES ('A', 'Apple'), ('B', 'Banana');
CREATE TABLE IF NOT EXISTS items (id TEXT PRIMARY KEY, label TEXT NOT NULL);
"""
reset = "DELETE FROM items"

[projection.handlers]
ItemAdded = "INSERT INTO items (id, label) VALUES (:stream_id, (SELECT label FROM item_labels WHERE code = :data.code))"

[[projection]]
name = "totals"
batch_size = 200
setup = "CREATE TABLE IF NOT EXISTS totals (k TEXT PRIMARY KEY, n INTEGER NOT NULL)"

[projection.handlers]
ItemAdded = "INSERT INTO totals (k, n) VALUES ('all', 1) ON CONFLICT (k) DO UPDATE SET n = n + 1"

[[projection]]
name = "audit"
error_policy = "stop"
setup = "CREATE TABLE IF NOT EXISTS audit (id TEXT PRIMARY KEY, code TEXT NOT NULL CHECK (code <> 'Z'))"

[projection.handlers]
ItemAdded = "INSERT INTO audit (id, code) VALUES (:stream_id, :data.code)"
"#;

/// The database URL of `dir`, with the secret in it.
pub fn url(dir: &Path) -> String {
    // Relative to the folder the commands run in, so that no machine path shows.
    let _ = dir;
    format!("sqlite://p.db?password={SECRET}")
}

pub fn command(dir: &Path) -> Command {
    let mut c = projectionist_testkit::binary!().command(dir);
    c.arg("--database")
        .arg(url(dir))
        .arg("--config")
        .arg(dir.join("projectionist.toml"));
    c
}

#[path = "../examples_support/mod.rs"]
mod examples_support;

/// The stdout of a command that succeeded; panics with its exit code and output otherwise.
#[allow(unused_imports)] // not every test file that includes this module uses it
pub use examples_support::ok as succeeded;

/// Runs a one-shot command; panics with its output when it fails.
pub fn cli(dir: &Path, args: &[&str]) -> String {
    let out = command(dir).args(args).output().expect("run projectionist");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "projectionist {args:?} failed:\n{stdout}\n{stderr}"
    );
    // No command ever shows the password of the database URL.
    assert!(
        !stdout.contains(SECRET) && !stderr.contains(SECRET),
        "projectionist {args:?} showed the database password:\n{stdout}\n{stderr}"
    );
    stdout
}

/// Writes the config (plus `extra`) and imports `n` events, every one with code A or B,
/// plus one with code Z when `with_z` (a dead letter for `items`, a stop for `audit`).
pub fn prepare(dir: &Path, extra: &str, n: usize, with_z: bool) {
    std::fs::write(dir.join("projectionist.toml"), format!("{CONFIG}{extra}")).expect("write the config");
    let mut lines = String::new();
    for i in 1..=n {
        let code = if with_z && i == n.div_ceil(2) {
            "Z"
        } else if i % 2 == 0 {
            "B"
        } else {
            "A"
        };
        lines.push_str(&format!(
            "{{\"stream_id\":\"ITEM-{i}\",\"type\":\"ItemAdded\",\"data\":{{\"code\":\"{code}\"}}}}\n"
        ));
    }
    std::fs::write(dir.join("events.jsonl"), lines).expect("write the events");
    cli(dir, &["init"]);
    cli(dir, &["import", "events.jsonl"]);
}

pub fn db(dir: &Path) -> Connection {
    Connection::open(dir.join("p.db")).expect("open the test database")
}

/// Adds the label whose absence makes code Z fail in `items`.
pub fn fix_items(dir: &Path) {
    db(dir)
        .execute(
            "INSERT OR IGNORE INTO item_labels (code, label) VALUES ('Z', 'Zucchini')",
            [],
        )
        .expect("add the missing label");
}

/// Collects the piped stderr of `child`, line by line, as it comes.
pub fn collect_stderr(child: &mut Child) -> Arc<Mutex<String>> {
    let stderr = Arc::new(Mutex::new(String::new()));
    let pipe = child.stderr.take().expect("stderr is piped");
    let sink = stderr.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            let mut s = sink.lock().unwrap_or_else(|p| p.into_inner());
            s.push_str(&line);
            s.push('\n');
        }
    });
    stderr
}

/// A running daemon; killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub base: String,
    pub addr: String,
    pub stderr: Arc<Mutex<String>>,
    stdout: Option<std::process::ChildStdout>,
}

impl Daemon {
    /// Starts `projectionist run` with `args` (give `--listen 127.0.0.1:0`, or a config
    /// `[http] listen`) and waits until it serves.
    pub fn start(dir: &Path, args: &[&str], envs: &[(&str, &str)]) -> Daemon {
        let mut c = command(dir);
        c.arg("run").args(args);
        for (k, v) in envs {
            c.env(k, v);
        }
        Daemon::spawn(c)
    }

    /// Starts `c` (a `projectionist … run …` command that serves HTTP) and waits until it
    /// serves.
    pub fn spawn(mut c: Command) -> Daemon {
        c.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = c.spawn().expect("start the daemon");
        let stderr = collect_stderr(&mut child);
        let stdout = child.stdout.take();
        let deadline = Instant::now() + Duration::from_secs(60);
        let addr = loop {
            let text = stderr.lock().unwrap_or_else(|p| p.into_inner()).clone();
            if let Some(at) = text.find("http://127.0.0.1:") {
                let rest = &text[at + "http://".len()..];
                let end = rest
                    .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':'))
                    .unwrap_or(rest.len());
                break rest[..end].to_owned();
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("the daemon exited ({status}) before serving:\n{text}");
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not start serving:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        Daemon {
            child,
            base: format!("http://{addr}"),
            addr,
            stderr,
            stdout,
        }
    }

    pub fn logs(&self) -> String {
        self.stderr.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn get(&self, path: &str) -> Response {
        request(&self.addr, "GET", path, None)
    }

    pub fn post(&self, path: &str, token: Option<&str>) -> Response {
        request(&self.addr, "POST", path, token)
    }

    /// SIGTERM; waits for the exit. Returns (success, stdout, stderr).
    pub fn stop(mut self) -> (bool, String, String) {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                break Some(s);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut s) = self.stdout.take() {
            let _ = s.read_to_string(&mut out);
        }
        std::thread::sleep(Duration::from_millis(100));
        (status.is_some_and(|s| s.success()), out, self.logs())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Response {
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim().eq_ignore_ascii_case(name).then(|| v.trim().to_owned())
        })
    }
}

/// One HTTP/1.1 request on a fresh connection.
pub fn request(addr: &str, method: &str, path: &str, token: Option<&str>) -> Response {
    let mut s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("set a read timeout");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: 0\r\n{auth}\r\n"
    )
    .expect("send the request");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    let headers = head.split_once("\r\n").map_or("", |(_, h)| h).to_owned();
    let chunked = headers
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked");
    let body = if chunked { dechunk(body) } else { body.to_owned() };
    Response {
        status,
        headers,
        body,
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` until it returns `Some`, or panics after `secs` with `what`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The status object of `name` from `/api/projections`.
pub fn projection(d: &Daemon, name: &str) -> Value {
    let all = d.get("/api/projections").json();
    all.as_array()
        .and_then(|a| a.iter().find(|p| p["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no projection {name} in {all}"))
}
