//! The source URL: `nats://[USER:PASSWORD@|TOKEN@]HOST[:PORT][,HOST[:PORT]…][?stream=NAME&…]`.

use crate::core::error::{Error, Result};

/// Query parameters a source URL may carry.
pub const PARAMETERS: &[&str] = &["stream", "subject", "consumer_prefix", "creds"];

/// What a source URL says, credentials split off.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// The servers, each `SCHEME://HOST[:PORT]`, without credentials.
    pub servers: Vec<String>,
    /// `USER:PASSWORD@`.
    pub user_password: Option<(String, String)>,
    /// A bare `TOKEN@`.
    pub token: Option<String>,
    pub stream: Option<String>,
    pub subject: Option<String>,
    pub consumer_prefix: Option<String>,
    /// A credentials file (`creds=PATH`).
    pub creds: Option<String>,
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Address")
            .field("servers", &self.servers)
            .field("user", &self.user_password.as_ref().map(|(u, _)| u))
            .field("token", &self.token.as_ref().map(|_| "***"))
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("consumer_prefix", &self.consumer_prefix)
            .field("creds", &self.creds)
            .finish()
    }
}

fn invalid(message: String) -> Error {
    Error::Config(message)
}

impl Address {
    /// Parses a source URL. Errors never repeat a password or token.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(
                "a NATS source URL looks like nats://HOST:4222?stream=EVENTS; this one has no scheme".into(),
            ));
        };
        let scheme = scheme.to_ascii_lowercase();
        if scheme != "nats" && scheme != "tls" {
            return Err(invalid(format!(
                "unsupported scheme `{scheme}` for a NATS source; use nats://HOST:4222?stream=EVENTS (or tls://)"
            )));
        }
        let (authority, query) = match rest.split_once('?') {
            Some((a, q)) => (a, Some(q)),
            None => (rest, None),
        };
        if authority.contains('#') || query.is_some_and(|q| q.contains('#')) {
            return Err(invalid("a NATS source URL takes no #fragment".into()));
        }
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') {
            return Err(invalid(
                "a NATS source URL has no path; name the stream with ?stream=NAME".into(),
            ));
        }
        let mut out = Address::default();
        let hosts = match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, password)) => {
                        out.user_password = Some((percent_decode(user)?, percent_decode(password)?))
                    }
                    None if !userinfo.is_empty() => out.token = Some(percent_decode(userinfo)?),
                    None => {}
                }
                &authority[at + 1..]
            }
            None => authority,
        };
        for host in hosts.split(',') {
            let host = host.trim();
            if host.is_empty() || host.contains(char::is_whitespace) {
                return Err(invalid(format!(
                    "the NATS source URL names no server (or an empty one) in `{hosts}`; give HOST[:PORT]"
                )));
            }
            out.servers.push(format!("{scheme}://{host}"));
        }
        for pair in query.unwrap_or_default().split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = percent_decode(value)?;
            if value.is_empty() {
                return Err(invalid(format!(
                    "the NATS source URL's parameter `{key}` is empty"
                )));
            }
            let slot = match key {
                "stream" => &mut out.stream,
                "subject" => &mut out.subject,
                "consumer_prefix" => &mut out.consumer_prefix,
                "creds" => &mut out.creds,
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}` in the NATS source URL; known: {}",
                        PARAMETERS.join(", ")
                    )))
                }
            };
            if slot.replace(value).is_some() {
                return Err(invalid(format!("the NATS source URL gives `{key}` twice")));
            }
        }
        Ok(out)
    }
}

/// Decodes `%XX` escapes (user names, passwords and parameters may need them).
fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(b) => {
                    out.push(b);
                    i += 3;
                    continue;
                }
                None => {
                    return Err(invalid(
                        "the NATS source URL has a bad %-escape; write % as %25".into(),
                    ))
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8(out).map_err(|_| invalid("the NATS source URL has %-escapes that are not UTF-8".into()))
}

/// Whether `name` can name a JetStream stream or consumer: not empty, no whitespace, `.`,
/// `*`, `>`, path separators or control characters, at most 255 bytes.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '*' | '>' | '/' | '\\'))
}

/// Whether `subject` is a valid subject filter: dot-separated non-empty tokens without
/// whitespace, where `*` is a whole token and `>` only the last one.
pub fn valid_subject(subject: &str) -> bool {
    let tokens: Vec<&str> = subject.split('.').collect();
    !subject.is_empty()
        && tokens.iter().enumerate().all(|(i, t)| {
            !t.is_empty()
                && !t.contains(char::is_whitespace)
                && (!t.contains('*') || *t == "*")
                && (!t.contains('>') || (*t == ">" && i + 1 == tokens.len()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let a = Address::parse("nats://127.0.0.1:4222?stream=EVENTS").unwrap();
        assert_eq!(a.servers, ["nats://127.0.0.1:4222"]);
        assert_eq!(a.stream.as_deref(), Some("EVENTS"));
        assert_eq!(a.user_password, None);

        let a = Address::parse(
            "nats://app:p%40ss:w@a:1,b:2/?stream=S&subject=orders.%3E&consumer_prefix=x-&creds=/c.creds",
        )
        .unwrap();
        assert_eq!(a.servers, ["nats://a:1", "nats://b:2"]);
        assert_eq!(a.user_password, Some(("app".into(), "p@ss:w".into())));
        assert_eq!(a.subject.as_deref(), Some("orders.>"));
        assert_eq!(a.consumer_prefix.as_deref(), Some("x-"));
        assert_eq!(a.creds.as_deref(), Some("/c.creds"));
        assert!(!format!("{a:?}").contains("p@ss"));

        let a = Address::parse("TLS://s3cr3t@h").unwrap();
        assert_eq!(a.token.as_deref(), Some("s3cr3t"));
        assert_eq!(a.servers, ["tls://h"]);
        assert!(!format!("{a:?}").contains("s3cr3t"));
        assert_eq!(a.stream, None);
    }

    #[test]
    fn bad_urls_are_refused_without_echoing_secrets() {
        for (url, needle) in [
            ("127.0.0.1:4222", "no scheme"),
            ("amqp://h?stream=S", "unsupported scheme"),
            ("nats://h/EVENTS", "no path"),
            ("nats://h?stream=S&strem=T", "unknown parameter `strem`"),
            ("nats://h?stream=S&stream=T", "twice"),
            ("nats://h?stream=", "empty"),
            ("nats://u:secret@?stream=S", "names no server"),
            ("nats://h,,k?stream=S", "names no server"),
            ("nats://u:pa%zzss@h", "%-escape"),
            ("nats://h?stream=S#x", "fragment"),
        ] {
            let err = Address::parse(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secret"), "{err}");
        }
    }

    #[test]
    fn names_and_subjects() {
        assert!(valid_name("EVENTS_1-a"));
        for bad in ["", "a.b", "a b", "a*", "a>", "a/b"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        for good in ["orders", "orders.*", "orders.>", "*.created", ">", "a.*.c"] {
            assert!(valid_subject(good), "{good:?}");
        }
        for bad in ["", "a..b", "a.>.c", "a b", "or*ders", "a.b>", "."] {
            assert!(!valid_subject(bad), "{bad:?}");
        }
    }
}
