//! The `[http]` table of the projections file: where `projectionist run` serves, where its API
//! token comes from, and the lag limits of readiness. The library keeps the table as written
//! (`Config::http`); this reads it.

use std::fmt;

use projectionist::declarative::{describe_value as describe, Config, ConfigError};

/// The `[http]` table: where `projectionist run` serves health, metrics, the JSON API and the
/// dashboard, where its API token comes from, and the lag limits of readiness.
#[derive(Clone, Default, PartialEq)]
pub struct HttpConfig {
    /// `listen`: the address to serve on (a bare port means 127.0.0.1).
    pub listen: Option<std::net::SocketAddr>,
    /// `api_token_env`: the environment variable that holds the API bearer token.
    pub api_token_env: Option<String>,
    /// `api_token`: the API bearer token itself (a secret: never printed).
    pub api_token: Option<String>,
    /// `max_lag_events`: not ready when a projection lags more events than this.
    pub max_lag_events: Option<u64>,
    /// `max_lag_seconds`: not ready when a projection's oldest unapplied event is older.
    pub max_lag_seconds: Option<f64>,
}

impl fmt::Debug for HttpConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpConfig")
            .field("listen", &self.listen)
            .field("api_token_env", &self.api_token_env)
            .field("api_token", &self.api_token.as_ref().map(|_| "***"))
            .field("max_lag_events", &self.max_lag_events)
            .field("max_lag_seconds", &self.max_lag_seconds)
            .finish()
    }
}

const HTTP_KEYS: &[&str] = &[
    "listen",
    "api_token_env",
    "api_token",
    "max_lag_events",
    "max_lag_seconds",
];

/// Parses a listen address: `HOST:PORT`, `:PORT` or `PORT` (the last two on 127.0.0.1).
pub fn parse_listen(s: &str) -> Result<std::net::SocketAddr, String> {
    let s = s.trim();
    let loopback = std::net::Ipv4Addr::LOCALHOST;
    if let Ok(port) = s.strip_prefix(':').unwrap_or(s).parse::<u16>() {
        return Ok(std::net::SocketAddr::from((loopback, port)));
    }
    s.parse::<std::net::SocketAddr>()
        .map_err(|_| format!("expected an address such as 127.0.0.1:9464, [::1]:9464 or a port, found {s:?}"))
}

impl HttpConfig {
    /// The `[http]` table of `config` (the defaults when it has none), with errors that name
    /// the file and the key.
    pub fn of(config: &Config) -> Result<Self, ConfigError> {
        Self::parse(config.http.get()).map_err(|(key, message)| ConfigError {
            file: config.file.clone(),
            projection: None,
            key: Some(key),
            message,
        })
    }

    fn parse(v: Option<&toml::Value>) -> Result<Self, (String, String)> {
        let fail = |k: &str, m: String| (format!("http.{k}"), m);
        let t = match v {
            None => return Ok(HttpConfig::default()),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                return Err((
                    "http".into(),
                    format!("expected a table ([http]), found {}", describe(other)),
                ))
            }
        };
        for key in t.keys() {
            if !HTTP_KEYS.contains(&key.as_str()) {
                return Err(fail(
                    key,
                    format!("unknown key; known keys: {}", HTTP_KEYS.join(", ")),
                ));
            }
        }
        let string = |k: &str| -> Result<Option<String>, (String, String)> {
            match t.get(k) {
                None => Ok(None),
                Some(toml::Value::String(s)) if !s.trim().is_empty() => Ok(Some(s.clone())),
                Some(toml::Value::String(_)) => {
                    Err(fail(k, "expected a non-empty string, found an empty one".into()))
                }
                // Never echo a value that may be a secret.
                Some(other) if k == "api_token" => Err(fail(
                    k,
                    format!(
                        "expected a string, found {} (its value is not shown: it may be a secret)",
                        kind(other)
                    ),
                )),
                Some(other) => Err(fail(k, format!("expected a string, found {}", describe(other)))),
            }
        };
        let listen = match string("listen")? {
            None => None,
            Some(s) => Some(parse_listen(&s).map_err(|m| fail("listen", m))?),
        };
        let api_token_env = string("api_token_env")?;
        if let Some(name) = &api_token_env {
            if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(fail(
                    "api_token_env",
                    format!(
                        "expected the name of an environment variable (letters, digits, _), found {name:?}"
                    ),
                ));
            }
        }
        let api_token = string("api_token")?;
        if api_token.is_some() && api_token_env.is_some() {
            return Err(fail(
                "api_token",
                "give either api_token or api_token_env, not both".into(),
            ));
        }
        let max_lag_events = match t.get("max_lag_events") {
            None => None,
            Some(toml::Value::Integer(i)) if *i >= 1 => Some(*i as u64),
            Some(other) => {
                return Err(fail(
                    "max_lag_events",
                    format!("expected a positive integer, found {}", describe(other)),
                ))
            }
        };
        let max_lag_seconds = match t.get("max_lag_seconds") {
            None => None,
            Some(toml::Value::Integer(i)) if *i > 0 => Some(*i as f64),
            Some(toml::Value::Float(x)) if x.is_finite() && *x > 0.0 => Some(*x),
            Some(other) => {
                return Err(fail(
                    "max_lag_seconds",
                    format!("expected a positive number of seconds, found {}", describe(other)),
                ))
            }
        };
        Ok(HttpConfig {
            listen,
            api_token_env,
            api_token,
            max_lag_events,
            max_lag_seconds,
        })
    }
}

/// A TOML value's type, with its article, without the value.
fn kind(v: &toml::Value) -> &'static str {
    match v {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a datetime",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "[[projection]]\nname = \"p\"\nhandlers = { E = \"SELECT 1\" }\n";

    fn parse(extra: &str) -> Result<HttpConfig, ConfigError> {
        parse_file(&format!("{P}{extra}"))
    }

    fn parse_file(text: &str) -> Result<HttpConfig, ConfigError> {
        Config::parse(text, "f.toml").and_then(|c| HttpConfig::of(&c))
    }

    #[test]
    fn the_http_table_is_optional_and_parsed() {
        assert_eq!(parse("").ok(), Some(HttpConfig::default()));
        let h = parse(
            "[http]\nlisten = \"9464\"\napi_token_env = \"MY_TOKEN\"\nmax_lag_events = 500\nmax_lag_seconds = 30\n",
        )
        .ok();
        let h = h.unwrap_or_default();
        assert_eq!(h.listen, Some(([127, 0, 0, 1], 9464).into()));
        assert_eq!(h.api_token_env.as_deref(), Some("MY_TOKEN"));
        assert_eq!(h.max_lag_events, Some(500));
        assert_eq!(h.max_lag_seconds, Some(30.0));
        assert_eq!(parse_listen(":80"), Ok(([127, 0, 0, 1], 80).into()));
        assert_eq!(parse_listen("0.0.0.0:1"), Ok(([0, 0, 0, 0], 1).into()));
    }

    #[test]
    fn bad_http_keys_name_the_key() {
        let e = |extra: &str| parse(extra).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(
            e("[http]\nlisten = \"nowhere\"\n"),
            "f.toml: key `http.listen`: expected an address such as 127.0.0.1:9464, [::1]:9464 or a port, found \"nowhere\""
        );
        assert!(e("[http]\nlisen = 1\n").contains("key `http.lisen`: unknown key"));
        assert!(e("[http]\nmax_lag_events = 0\n")
            .contains("key `http.max_lag_events`: expected a positive integer"));
        assert!(e("[http]\nmax_lag_seconds = \"x\"\n").contains("key `http.max_lag_seconds`"));
        assert!(e("[http]\napi_token_env = \"A B\"\n").contains("key `http.api_token_env`"));
        let top = parse_file(&format!("http = 3\n{P}")).err().map(|e| e.to_string());
        assert!(top.unwrap_or_default().contains("key `http`: expected a table"));
        assert!(e("[daemon]\nx = 1\n").contains("key `daemon`: unknown key"));
    }

    #[test]
    fn the_token_never_shows_in_debug_or_errors() {
        let h = parse("[http]\napi_token = \"s3cret-token\"\n").unwrap_or_default();
        assert_eq!(h.api_token.as_deref(), Some("s3cret-token"));
        assert!(!format!("{h:?}").contains("s3cret"));
        let e = parse("[http]\napi_token = 12345678\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            e.contains("key `http.api_token`: expected a string, found an integer (its value is not shown")
                && !e.contains("12345678"),
            "{e}"
        );
    }
}
