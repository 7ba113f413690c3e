//! The one place where URLs map to backends.
//!
//! Every command runs on one engine type, [`CliEngine`] (`Engine<AnySource, AnyStore>`): the
//! commands are plain functions over it, with no `match` per backend or per source. What a
//! backend can do (replay, partitions, blue/green, inline appends) is asked of the source or
//! the store itself, through the library's traits.
//!
//! Adding a store is a module that implements [`StoreBackend`] (it opens its URLs as an
//! `AnyStore` and the `AnySource` of its own events) and one line in [`STORES`]. Adding an
//! event source is a module that implements [`SourceBackend`] and one line in [`SOURCES`].

mod engine;
mod registry;
mod source;
mod url;

#[cfg(feature = "kafka")]
mod kafka;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "postgres")]
mod postgres;
#[cfg(feature = "rabbitmq")]
mod rabbitmq;
#[cfg(feature = "sqlite")]
mod sqlite;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod table;

pub use engine::{engine, CliEngine};
pub use registry::{BenchRun, Database, Kind, SourceBackend, StoreBackend};
pub use source::Events;
pub use url::{redact, DatabaseUrl};

/// `Some(backend)` when `feature` (or, with `any(…)`, one of the features) is built in, else
/// `None`.
macro_rules! built_in {
    ($feature:literal, $backend:expr => $as:ty) => {
        built_in!(any($feature), $backend => $as)
    };
    (any($($feature:literal),+), $backend:expr => $as:ty) => {{
        #[cfg(any($(feature = $feature),+))]
        let backend: Option<&'static $as> = Some(&$backend);
        #[cfg(not(any($(feature = $feature),+)))]
        let backend: Option<&'static $as> = None;
        backend
    }};
}

/// The stores `--database` can name, by URL scheme. A URL without a scheme is a path for the
/// first one.
pub const STORES: &[Kind<dyn StoreBackend>] = &[
    Kind {
        name: "SQLite",
        feature: "sqlite",
        schemes: &["sqlite"],
        example: "sqlite://PATH (or a bare file path)",
        backend: built_in!("sqlite", sqlite::Sqlite => dyn StoreBackend),
    },
    Kind {
        name: "PostgreSQL",
        feature: "postgres",
        schemes: &["postgres", "postgresql"],
        example: "postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]",
        backend: built_in!("postgres", postgres::Postgres => dyn StoreBackend),
    },
];

/// The event sources `--source` (or the config's `source`) can name, by URL scheme. With none,
/// events come from the database's own events table.
pub const SOURCES: &[Kind<dyn SourceBackend>] = &[
    Kind {
        name: "NATS JetStream",
        feature: "nats",
        schemes: &["nats"],
        example: "nats://HOST:4222?stream=NAME (NATS JetStream)",
        backend: built_in!("nats", nats::Nats => dyn SourceBackend),
    },
    Kind {
        name: "RabbitMQ",
        feature: "rabbitmq",
        schemes: &["amqp", "amqps"],
        example: "amqp://USER:PASSWORD@HOST:5672/VHOST?exchange=NAME (RabbitMQ)",
        backend: built_in!("rabbitmq", rabbitmq::Rabbit => dyn SourceBackend),
    },
    Kind {
        name: "Kafka",
        feature: "kafka",
        schemes: &["kafka"],
        example: "kafka://HOST:9092?topic=NAME (Kafka, Redpanda)",
        backend: built_in!("kafka", kafka::Kafka => dyn SourceBackend),
    },
    Kind {
        name: "events table",
        feature: "sqlite or postgres",
        schemes: projectionist::table::SCHEMES,
        example: "table+postgres://USER@HOST/DB?table=T&position=…&stream_id=…&stream_version=…&event_type=…&data=… \
                  (an events table you already have), eventsourcing+postgres://USER@HOST/DB?application=NAME",
        backend: built_in!(any("sqlite", "postgres"), table::Table => dyn SourceBackend),
    },
];

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::{SOURCES, STORES};

    #[test]
    fn each_scheme_names_one_backend_in_lower_case() {
        let mut seen = HashSet::new();
        let stores = STORES.iter().flat_map(|k| k.schemes.iter());
        let sources = SOURCES.iter().flat_map(|k| k.schemes.iter());
        for scheme in stores.chain(sources) {
            assert_eq!(*scheme, scheme.to_ascii_lowercase());
            assert!(seen.insert(*scheme), "{scheme} names two backends");
        }
    }
}
