//! The source URL:
//! `kafka://[USER:PASSWORD@]HOST[:PORT][,HOST[:PORT]…][?topic=NAME[,NAME…]][&group=PREFIX][&assignment=group|leases][&partial_history=accept][&CLIENT.SETTING=VALUE…]`.
//!
//! `topic` names the topics of every projection that names none of its own
//! ([`super::KafkaSourceBuilder::topics`]); a URL without it serves only projections that do.
//!
//! Every parameter whose name holds a dot (`security.protocol`, `sasl.mechanism`,
//! `sasl.username`, `sasl.password`, `ssl.ca.location`, `session.timeout.ms`, …) is passed to
//! librdkafka as it is. `USER:PASSWORD@` is SASL's user name and password (mechanism `PLAIN`
//! and protocol `SASL_PLAINTEXT` unless the URL says otherwise).

use std::collections::BTreeMap;

use crate::core::error::{Error, Result};
use crate::core::source::PartitionAssignment;

/// The default prefix of consumer-group names: a projection's group is the prefix and its name.
pub const DEFAULT_GROUP_PREFIX: &str = "projectionist-";

/// Parameters of projectionist itself (the others, with a dot, go to librdkafka).
pub const PARAMETERS: &[&str] = &["topic", "group", "assignment", "partial_history"];

/// What a source URL says.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Address {
    /// `HOST:PORT,…`, as librdkafka's `bootstrap.servers`.
    pub brokers: String,
    /// The topics of projections that name none of their own, in the URL's order (may be
    /// empty when every projection names its own).
    pub topics: Vec<String>,
    /// The consumer-group prefix.
    pub group_prefix: String,
    /// Whether a partition whose start retention dropped may be read from its low watermark.
    pub accept_partial_history: bool,
    /// Who shares the partitions out between `run` processes: the consumer group
    /// (`assignment=group`, the default) or the store's leases (`assignment=leases`).
    pub assignment: PartitionAssignment,
    /// librdkafka settings, SASL credentials included.
    pub client: BTreeMap<String, String>,
}

impl std::fmt::Debug for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let client: BTreeMap<&str, &str> = self
            .client
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("Address")
            .field("brokers", &self.brokers)
            .field("topics", &self.topics)
            .field("group_prefix", &self.group_prefix)
            .field("accept_partial_history", &self.accept_partial_history)
            .field("assignment", &self.assignment)
            .field("client", &client)
            .finish()
    }
}

/// Whether a client setting holds a secret (never logged or shown).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    ["pass", "secret", "token", "key"].iter().any(|s| k.contains(s))
}

fn invalid(message: String) -> Error {
    Error::Config(message)
}

/// Decodes `%XX` escapes (a `+` stays a `+`).
fn percent_decode(text: &str) -> Result<String> {
    let escaped = format!("v={}", text.replace('+', "%2B"));
    url::form_urlencoded::parse(escaped.as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .ok_or_else(|| invalid("a Kafka source URL has a malformed user name or password".into()))
}

impl Address {
    /// Parses a source URL. Errors never repeat a password.
    pub fn parse(url: &str) -> Result<Self> {
        let url = url.trim();
        let example = "kafka://HOST:9092?topic=EVENTS";
        let Some((scheme, rest)) = url.split_once("://") else {
            return Err(invalid(format!(
                "a Kafka source URL looks like {example}; this one has no scheme"
            )));
        };
        if !scheme.eq_ignore_ascii_case("kafka") {
            return Err(invalid(format!(
                "unsupported scheme `{scheme}` for a Kafka source; use {example}"
            )));
        }
        let (authority, query) = rest.split_once('?').unwrap_or((rest, ""));
        if rest.contains('#') {
            return Err(invalid("a Kafka source URL takes no #fragment".into()));
        }
        let authority = authority.trim_end_matches('/');
        if authority.contains('/') {
            return Err(invalid(format!(
                "a Kafka source URL has no path; name the topic with ?topic=NAME ({example})"
            )));
        }
        let mut out = Address {
            group_prefix: DEFAULT_GROUP_PREFIX.to_owned(),
            ..Address::default()
        };
        let hosts = match authority.rfind('@') {
            Some(at) => {
                let (user, password) = authority[..at].split_once(':').ok_or_else(|| {
                    invalid("a Kafka source URL's user-info is USER:PASSWORD (SASL)".into())
                })?;
                out.client.insert("sasl.username".into(), percent_decode(user)?);
                out.client
                    .insert("sasl.password".into(), percent_decode(password)?);
                &authority[at + 1..]
            }
            None => authority,
        };
        let brokers: Vec<&str> = hosts
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .collect();
        if brokers.is_empty() {
            return Err(invalid(format!(
                "a Kafka source URL names at least one broker: {example}"
            )));
        }
        out.brokers = brokers
            .iter()
            .map(|h| {
                if h.contains(':') {
                    (*h).to_owned()
                } else {
                    format!("{h}:9092")
                }
            })
            .collect::<Vec<_>>()
            .join(",");
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "topic" => out.topics.extend(topic_list(&value)?),
                "group" => out.group_prefix = value.into_owned(),
                "assignment" => {
                    out.assignment = match value.as_ref() {
                        "group" => PartitionAssignment::Broker,
                        "leases" => PartitionAssignment::Leases,
                        other => {
                            return Err(invalid(format!(
                                "assignment is `group` (the consumer group shares the partitions out) \
                                 or `leases` (the store's leases do), not `{other}`"
                            )))
                        }
                    }
                }
                "partial_history" => {
                    out.accept_partial_history = match value.as_ref() {
                        "accept" | "true" | "yes" => true,
                        "refuse" | "false" | "no" => false,
                        other => {
                            return Err(invalid(format!(
                                "partial_history is `accept` or `refuse`, not `{other}`"
                            )))
                        }
                    }
                }
                k if k.contains('.') => {
                    out.client.insert(k.to_owned(), value.into_owned());
                }
                other => {
                    return Err(invalid(format!(
                        "unknown parameter `{other}` in a Kafka source URL; known: {}, or a librdkafka \
                         setting such as security.protocol or sasl.mechanism",
                        PARAMETERS.join(", ")
                    )))
                }
            }
        }
        check_distinct(&out.topics, "the Kafka source URL")?;
        if out.client.contains_key("sasl.username") {
            out.client
                .entry("sasl.mechanism".into())
                .or_insert_with(|| "PLAIN".into());
            out.client
                .entry("security.protocol".into())
                .or_insert_with(|| "SASL_PLAINTEXT".into());
        }
        Ok(out)
    }

    /// The brokers and topics, for logs (no credentials).
    pub fn location(&self) -> String {
        if self.topics.is_empty() {
            format!("{} (topics per projection)", self.brokers)
        } else {
            format!("{} topic {}", self.brokers, self.topics.join(","))
        }
    }
}

/// The topics of a comma-separated list (`orders, payments`), each named once.
pub fn topic_list(text: &str) -> Result<Vec<String>> {
    let topics: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if let Some(bad) = topics.iter().find(|t| !valid_topic(t)) {
        return Err(invalid(format!(
            "`{bad}` is not a Kafka topic name: use letters, digits, `.`, `_` and `-`, at most 249 characters"
        )));
    }
    check_distinct(&topics, "one list")?;
    Ok(topics)
}

/// Whether `name` is a legal Kafka topic name.
fn valid_topic(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

fn check_distinct(topics: &[String], place: &str) -> Result<()> {
    let mut seen = std::collections::HashSet::new();
    match topics.iter().find(|t| !seen.insert(t.as_str())) {
        Some(dup) => Err(invalid(format!("topic {dup} is named twice in {place}"))),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_url_parses() {
        let a = Address::parse(
            "kafka://alice:p%40ss+w@k1,k2:9093/?topic=orders,payments&group=app-&assignment=leases&partial_history=accept&security.protocol=SASL_SSL&session.timeout.ms=6000",
        )
        .unwrap();
        assert_eq!(a.brokers, "k1:9092,k2:9093");
        assert_eq!(a.topics, ["orders", "payments"]);
        assert_eq!(a.group_prefix, "app-");
        assert!(a.accept_partial_history);
        assert_eq!(a.assignment, PartitionAssignment::Leases);
        assert_eq!(a.client["sasl.username"], "alice");
        assert_eq!(a.client["sasl.password"], "p@ss+w");
        assert_eq!(a.client["sasl.mechanism"], "PLAIN");
        assert_eq!(a.client["security.protocol"], "SASL_SSL");
        assert_eq!(a.client["session.timeout.ms"], "6000");
        let shown = format!("{a:?}");
        assert!(!shown.contains("p@ss"), "{shown}");
    }

    #[test]
    fn defaults() {
        let a = Address::parse("kafka://localhost:9092?topic=t").unwrap();
        assert_eq!(a.group_prefix, DEFAULT_GROUP_PREFIX);
        assert!(!a.accept_partial_history);
        assert_eq!(a.assignment, PartitionAssignment::Broker);
        assert!(a.client.is_empty());
        assert_eq!(a.location(), "localhost:9092 topic t");
        let untopical = Address::parse("kafka://localhost").unwrap();
        assert!(untopical.topics.is_empty());
        assert_eq!(untopical.location(), "localhost:9092 (topics per projection)");
    }

    #[test]
    fn topic_lists() {
        assert_eq!(topic_list(" a, b.c ,,d_e-1").unwrap(), ["a", "b.c", "d_e-1"]);
        assert!(topic_list("a,a").unwrap_err().to_string().contains("named twice"));
        assert!(topic_list("orders.>")
            .unwrap_err()
            .to_string()
            .contains("not a Kafka topic"));
        assert!(topic_list("").unwrap().is_empty());
    }

    #[test]
    fn bad_urls_say_why_without_the_password() {
        for (url, needle) in [
            ("localhost:9092", "no scheme"),
            ("nats://h?topic=t", "unsupported scheme"),
            ("kafka://h?topic=a,b%20c", "not a Kafka topic name"),
            ("kafka://h/x?topic=t", "no path"),
            ("kafka://?topic=t", "at least one broker"),
            ("kafka://h?topic=t&stream=x", "unknown parameter `stream`"),
            ("kafka://h?topic=t&partial_history=maybe", "partial_history"),
            ("kafka://h?topic=t&assignment=static", "assignment is `group`"),
            ("kafka://h?topic=t,t", "named twice"),
            ("kafka://secret@h?topic=t", "USER:PASSWORD"),
        ] {
            let err = Address::parse(url).expect_err(url).to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("secret"), "{url}: {err}");
        }
    }
}
