//! Where events come from: `--source`, the config's `source`, or the database.

use anyhow::Result;
use projectionist::backend::{AnySource, Source};
use projectionist::declarative::Config;

use super::{redact, Database, Kind, SOURCES};
use crate::exit::usage;

/// A source that is not the database: what it is and where its URL came from, for messages.
struct Broker {
    /// The source's name in the registry ("NATS JetStream").
    name: &'static str,
    /// `--source`, or the config file and key.
    origin: String,
    /// What it reads, without credentials.
    describe: String,
}

/// Where commands that read events take them from: `--source`, else the config's `source`,
/// else the database's own events table.
pub struct Events {
    pub source: AnySource,
    broker: Option<Broker>,
}

impl Events {
    /// The source URL in force (`--source`, else the config's `source`), and where it comes
    /// from, for messages.
    pub fn url<'a>(flag: Option<&'a str>, config: Option<&'a Config>) -> Option<(&'a str, String)> {
        let given = |u: &&str| !u.trim().is_empty();
        match flag.filter(given) {
            Some(url) => Some((url.trim(), "--source".to_owned())),
            None => config.and_then(|c| {
                c.source
                    .as_deref()
                    .filter(given)
                    .map(|url| (url.trim(), format!("{}: key `source`", c.file)))
            }),
        }
    }

    /// The database's own events.
    pub fn database(db: &Database) -> Self {
        Events {
            source: db.events.clone(),
            broker: None,
        }
    }

    /// Opens the source at `url` (`None`: the database's events) for the projections of
    /// `config`. A bad URL or setting is a usage error (exit 2), and so is a partitioned
    /// projection on a source that does not partition; errors never show a password.
    pub async fn open(url: Option<(&str, String)>, db: &Database, config: Option<&Config>) -> Result<Self> {
        let Some((url, origin)) = url else {
            return Ok(Events::database(db));
        };
        let shown = format!("{origin} {}", redact(url));
        let scheme = url
            .split_once("://")
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default();
        let kind = Kind::find(SOURCES, &scheme).ok_or_else(|| {
            usage(format!(
                "{shown}: unsupported source scheme `{scheme}`; supported: {}, or no source to read the \
                 database's events table",
                Kind::examples(SOURCES, ", ")
            ))
        })?;
        let opened = kind.built(&shown)?.open(url, &shown, config).await?;
        if !opened.source.supports_partitions() {
            for def in config.map_or(&[][..], |c| &c.projections[..]) {
                if def.partitions > 1 {
                    return Err(usage(format!(
                        "projection {} has partitions = {}, and the {} source ({shown}) does not partition; \
                         set partitions = 1 (scale out with one process per projection instead)",
                        def.name, def.partitions, kind.name
                    )));
                }
            }
        }
        Ok(Events {
            source: opened.source,
            broker: Some(Broker {
                name: kind.name,
                origin,
                describe: opened.describe,
            }),
        })
    }

    /// What a broker source reads, without credentials, for logs (`None`: the database).
    pub fn describe(&self) -> Option<&str> {
        self.broker.as_ref().map(|b| b.describe.as_str())
    }

    /// Fails, as a usage error and before anything changes, unless the source can replay: a
    /// rebuild reads every event again.
    pub fn check_replay(&self) -> Result<()> {
        match &self.broker {
            Some(b) if !self.source.can_replay() => Err(usage(format!(
                "{} is a {} source, which cannot replay: a rebuild needs a replayable source (NATS \
                 JetStream, or the database's events table); nothing was changed",
                b.origin, b.name
            ))),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_source_flag_overrides_the_config() {
        let config = Config::parse(
            "source = \"nats://h?stream=A\"\n[[projection]]\nname = \"p\"\n[projection.handlers]\nT = \"SELECT 1\"\n",
            "p.toml",
        )
        .unwrap();
        assert_eq!(
            Events::url(Some("nats://k?stream=B"), Some(&config)),
            Some(("nats://k?stream=B", "--source".to_owned()))
        );
        assert_eq!(
            Events::url(Some("  "), Some(&config)),
            Some(("nats://h?stream=A", "p.toml: key `source`".to_owned()))
        );
        assert_eq!(Events::url(None, None), None);
    }
}
