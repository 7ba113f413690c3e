//! The source's settings, from the URL's query parameters and the builder.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use super::error::RabbitError;

/// The exchange the queues are bound to, unless the URL says `exchange=…`.
pub const DEFAULT_EXCHANGE: &str = "events";
/// Messages the broker sends ahead without an acknowledgement, per projection, unless the URL
/// says `prefetch=…`: twice the default batch size, so that the broker keeps streaming while a
/// batch commits.
pub const DEFAULT_PREFETCH: u16 = 2000;
/// Queue names are `<queue_prefix>.<projection>`.
pub const DEFAULT_QUEUE_PREFIX: &str = "projectionist";
/// The binding key of projections without a subject of their own: every routing key.
pub const DEFAULT_SUBJECT: &str = "#";
/// How long a connection attempt may take, unless the URL says `connection_timeout=…` (ms).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The first delay before reconnecting after a failure; it doubles up to the maximum.
pub const DEFAULT_RECONNECT_MIN: Duration = Duration::from_millis(100);
pub const DEFAULT_RECONNECT_MAX: Duration = Duration::from_secs(10);

/// Query parameters of the source itself (removed before the URL goes to the AMQP client).
const OWN_PARAMS: &[&str] = &["exchange", "prefetch", "queue_prefix", "subject"];
/// Query parameters the AMQP client understands (passed through).
const CLIENT_PARAMS: &[&str] = &[
    "heartbeat",
    "connection_timeout",
    "frame_max",
    "channel_max",
    "auth_mechanism",
];

/// AMQP short strings (exchange, queue and routing-key names) hold at most 255 bytes.
const MAX_NAME: usize = 255;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    /// The URL for the AMQP client: the given one without the source's own parameters.
    /// It may hold a password: never show it; show `redacted`.
    pub amqp_url: String,
    /// The host as written (the AMQP client's URL parser loses IP-address hosts).
    pub host: String,
    /// The URL with its password masked, for messages.
    pub redacted: String,
    pub exchange: String,
    pub prefetch: u16,
    pub queue_prefix: String,
    pub default_subject: String,
    /// Binding keys by projection name.
    pub subjects: BTreeMap<String, String>,
    /// Projections registered with the default subject.
    pub registered: BTreeSet<String>,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Settings {
    /// Parses `amqp[s]://user:password@host:port/vhost?exchange=…&prefetch=…&queue_prefix=…`.
    pub fn parse(url: &str) -> Result<Self, RabbitError> {
        let url = url.trim();
        let redacted = redact(url);
        let err = |message: String| RabbitError::Config {
            url: redacted.clone(),
            message,
        };
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(err(
                "expected amqp://user:password@host:port/vhost (or amqps://…)".into(),
            ));
        };
        if !scheme.eq_ignore_ascii_case("amqp") && !scheme.eq_ignore_ascii_case("amqps") {
            return Err(err(format!(
                "unsupported scheme {scheme:?}: expected amqp:// or amqps://"
            )));
        }
        if rest.contains('#') {
            return Err(err(
                "a '#' starts a URL fragment; write a binding key's # as %23 (subject=orders.%23)".into(),
            ));
        }
        let (base, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let after_userinfo = base.rsplit_once('@').map_or(base, |(_, h)| h);
        let host = host_of(after_userinfo.split('/').next().unwrap_or_default()).map_err(&err)?;

        let mut s = Settings {
            amqp_url: String::new(),
            host,
            redacted: redacted.clone(),
            exchange: DEFAULT_EXCHANGE.into(),
            prefetch: DEFAULT_PREFETCH,
            queue_prefix: DEFAULT_QUEUE_PREFIX.into(),
            default_subject: DEFAULT_SUBJECT.into(),
            subjects: BTreeMap::new(),
            registered: BTreeSet::new(),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            reconnect_min: DEFAULT_RECONNECT_MIN,
            reconnect_max: DEFAULT_RECONNECT_MAX,
        };
        let mut passed = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            let key =
                percent_decode(raw_key).map_err(|e| err(format!("query parameter {raw_key:?}: {e}")))?;
            let value = percent_decode(raw_value).map_err(|e| err(format!("query parameter {key}: {e}")))?;
            match key.as_str() {
                "exchange" => s.exchange = value,
                "prefetch" => {
                    s.prefetch = value.parse().map_err(|_| {
                        err(format!(
                            "prefetch: expected a number of messages from 1 to 65535, found {value:?}"
                        ))
                    })?
                }
                "queue_prefix" => s.queue_prefix = value,
                "subject" => s.default_subject = value,
                "connection_timeout" => {
                    let ms: u64 = value.parse().map_err(|_| {
                        err(format!(
                            "connection_timeout: expected milliseconds, found {value:?}"
                        ))
                    })?;
                    s.connect_timeout = Duration::from_millis(ms.max(1));
                    passed.push(pair);
                }
                k if CLIENT_PARAMS.contains(&k) => passed.push(pair),
                other => {
                    return Err(err(format!(
                    "unknown query parameter {other:?}; the source's own are {} and the AMQP client's are {}",
                    OWN_PARAMS.join(", "),
                    CLIENT_PARAMS.join(", ")
                )))
                }
            }
        }
        s.amqp_url = if passed.is_empty() {
            format!("{scheme}://{base}")
        } else {
            format!("{scheme}://{base}?{}", passed.join("&"))
        };
        s.validate()?;
        Ok(s)
    }

    /// Checks the values (after the builder changed them).
    pub fn validate(&self) -> Result<(), RabbitError> {
        let err = |message: String| RabbitError::Config {
            url: self.redacted.clone(),
            message,
        };
        if self.exchange.is_empty() {
            return Err(err(
                "exchange must not be empty: queues cannot be bound to the default exchange".into(),
            ));
        }
        if self.prefetch == 0 {
            return Err(err(
                "prefetch must be at least 1 (0 would let the broker send the whole queue at once)".into(),
            ));
        }
        if self.queue_prefix.is_empty() {
            return Err(err("queue_prefix must not be empty".into()));
        }
        for (what, name) in [("exchange", &self.exchange), ("subject", &self.default_subject)] {
            if name.len() > MAX_NAME {
                return Err(err(format!("{what} is longer than {MAX_NAME} bytes")));
            }
        }
        for (projection, key) in &self.subjects {
            if key.len() > MAX_NAME {
                return Err(err(format!(
                    "the subject of projection {projection} is longer than {MAX_NAME} bytes"
                )));
            }
        }
        for projection in self.projections() {
            self.queue(&projection)?;
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return Err(err("the reconnect backoff needs 0 < minimum <= maximum".into()));
        }
        Ok(())
    }

    /// The queue of `projection`: `<queue_prefix>.<projection>`.
    pub fn queue(&self, projection: &str) -> Result<String, RabbitError> {
        let q = format!("{}.{projection}", self.queue_prefix);
        if q.len() > MAX_NAME {
            return Err(RabbitError::Config {
                url: self.redacted.clone(),
                message: format!(
                    "queue name {q:?} (queue_prefix.projection) is longer than {MAX_NAME} bytes; use a shorter queue_prefix"
                ),
            });
        }
        Ok(q)
    }

    /// The projections registered with the builder (with a subject or without).
    pub fn projections(&self) -> BTreeSet<String> {
        let mut names = self.registered.clone();
        names.extend(self.subjects.keys().cloned());
        names
    }

    /// The binding key of `projection`.
    pub fn subject(&self, projection: &str) -> &str {
        self.subjects
            .get(projection)
            .map_or(self.default_subject.as_str(), String::as_str)
    }
}

/// The host of `host[:port]`, percent-decoded, without the brackets of an IPv6 address.
fn host_of(hostport: &str) -> Result<String, String> {
    let host = if let Some(v6) = hostport.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        hostport.split(':').next().unwrap_or_default()
    };
    let host = percent_decode(host)?;
    Ok(if host.is_empty() { "localhost".into() } else { host })
}

/// The URL with the password of its user info replaced by `***`. Over-masks rather than
/// leaks: everything between the first `:` after the scheme and the last `@` before the query
/// is taken for the password, even when it holds an unencoded `/`.
pub(crate) fn redact(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    let before_query = rest.find('?').unwrap_or(rest.len());
    let Some(at) = rest[..before_query].rfind('@') else {
        return url.to_owned();
    };
    let (userinfo, hostport) = rest.split_at(at);
    match userinfo.split_once(':') {
        Some((user, _)) => format!("{scheme}{user}:***{hostport}"),
        None => url.to_owned(),
    }
}

fn percent_decode(s: &str) -> Result<String, String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| format!("bad percent-encoding in {s:?}"))?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| format!("{s:?} does not decode to UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_every_parameter() {
        let s = Settings::parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(s.exchange, "events");
        assert_eq!(s.prefetch, DEFAULT_PREFETCH);
        assert_eq!(s.queue_prefix, "projectionist");
        assert_eq!(s.subject("orders"), "#");
        assert_eq!(s.host, "127.0.0.1");
        assert_eq!(s.amqp_url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(s.queue("orders").unwrap(), "projectionist.orders");

        let s = Settings::parse(
            "amqps://u:p@mq.example:5671/prod?exchange=domain.events&prefetch=500&queue_prefix=rm&subject=orders.%23&heartbeat=30&connection_timeout=2500",
        )
        .unwrap();
        assert_eq!(s.exchange, "domain.events");
        assert_eq!(s.prefetch, 500);
        assert_eq!(s.queue("orders").unwrap(), "rm.orders");
        assert_eq!(s.subject("orders"), "orders.#");
        assert_eq!(s.connect_timeout, Duration::from_millis(2500));
        assert_eq!(s.host, "mq.example");
        assert_eq!(
            s.amqp_url,
            "amqps://u:p@mq.example:5671/prod?heartbeat=30&connection_timeout=2500"
        );
    }

    #[test]
    fn bad_urls_say_what_is_wrong_without_the_password() {
        let cases = [
            ("http://u:secret@h/", "unsupported scheme"),
            ("amqp://u:secret@h/?prefetch=0", "prefetch must be at least 1"),
            ("amqp://u:secret@h/?prefetch=70000", "from 1 to 65535"),
            ("amqp://u:secret@h/?prefetch=many", "from 1 to 65535"),
            (
                "amqp://u:secret@h/?exchnage=x",
                "unknown query parameter \"exchnage\"",
            ),
            ("amqp://u:secret@h/?exchange=", "exchange must not be empty"),
            ("amqp://u:secret@h/?subject=orders.#", "%23"),
            ("amqp://u:secret@h/?queue_prefix=%zz", "percent-encoding"),
            ("u:secret@h", "expected amqp://"),
        ];
        for (url, want) in cases {
            let msg = Settings::parse(url).unwrap_err().to_string();
            assert!(msg.contains(want), "{url}: {msg}");
            assert!(!msg.contains("secret"), "{url}: the password leaked: {msg}");
        }
    }

    #[test]
    fn redaction_masks_only_the_password() {
        assert_eq!(
            redact("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:***@127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://a:b@c@h/v?x=1"), "amqp://a:***@h/v?x=1");
        assert_eq!(redact("amqp://user@h/"), "amqp://user@h/");
        assert_eq!(redact("amqp://h"), "amqp://h");
        assert_eq!(redact("amqp://u:pa/ss@h/v"), "amqp://u:***@h/v");
        assert_eq!(redact("u:secret@h"), "u:***@h");
    }

    #[test]
    fn hosts_keep_ip_addresses() {
        assert_eq!(host_of("[::1]:5672").unwrap(), "::1");
        assert_eq!(host_of("10.0.0.5").unwrap(), "10.0.0.5");
        assert_eq!(host_of("").unwrap(), "localhost");
    }

    #[test]
    fn long_queue_names_are_refused() {
        let mut s = Settings::parse("amqp://h/").unwrap();
        s.subjects.insert("x".repeat(300), "#".into());
        assert!(s
            .validate()
            .unwrap_err()
            .to_string()
            .contains("shorter queue_prefix"));
    }
}
