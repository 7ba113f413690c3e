//! The `--database` URL: its parsing, and the redaction of passwords in every URL shown.

use std::path::{Path, PathBuf};

use anyhow::Result;

use crate::exit::usage;

/// Where the database is, parsed from `--database`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// An embedded SQLite file.
    Sqlite(PathBuf),
    /// A private in-memory SQLite database (`sqlite://:memory:`), for experiments.
    SqliteMemory,
    /// A PostgreSQL database: `postgres://user[:password]@host[:port]/db[?schema=NAME&…]`.
    Postgres(SecretUrl),
}

/// A URL that may hold a password: its `Debug` shows it redacted.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(String);

impl SecretUrl {
    /// The URL with its password, to connect with. Never print it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact(&self.0))
    }
}

/// A parsed `--database` URL. Its `Display` never shows a password.
#[derive(Clone, Debug)]
pub struct DatabaseUrl {
    pub location: Location,
    shown: String,
}

impl std::fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.shown)
    }
}

/// `url` with any password replaced by `***`: the user-info password, and query parameters
/// that look secret (libpq-style URLs may carry `?password=`).
pub fn redact(url: &str) -> String {
    mask_query_secrets(&redact_userinfo(url))
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let Some(at) = authority.rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &authority[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let scheme = url[..scheme_end].to_ascii_lowercase();
    let masked = if userinfo.contains(':') {
        format!("{user}:***")
    } else if matches!(scheme.as_str(), "nats" | "tls") {
        // A bare NATS user-info is a token.
        "***".to_owned()
    } else {
        user.to_owned()
    };
    format!("{}://{masked}{}", &url[..scheme_end], &rest[at..])
}

/// Masks the values of query parameters whose names look secret; drops any fragment.
fn mask_query_secrets(shown: &str) -> String {
    let Some((base, query)) = shown.split_once('?') else {
        return shown.to_owned();
    };
    let (query, fragment) = match query.split_once('#') {
        Some((q, f)) => (q, Some(f)),
        None => (query, None),
    };
    let masked: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if is_secret_key(k) => format!("{k}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let mut out = format!("{base}?{}", masked.join("&"));
    if fragment.is_some() {
        // A fragment has no meaning to the database; it is not shown.
        out.push_str("#***");
    }
    out
}

fn is_secret_key(k: &str) -> bool {
    let k = k.to_ascii_lowercase();
    ["pass", "pwd", "secret", "token", "key"]
        .iter()
        .any(|s| k.contains(s))
}

impl DatabaseUrl {
    /// Parses `sqlite://PATH`, `sqlite:PATH`, a bare path, or `postgres://…` /
    /// `postgresql://…`. Other schemes are usage errors.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url);
        let url = url.trim();
        if url.is_empty() {
            return Err(usage(
                "--database is empty; give sqlite://PATH (for example sqlite://projectionist.db) or postgres://USER@HOST/DB",
            ));
        }
        let path = if let Some(rest) = url.strip_prefix("sqlite://") {
            rest
        } else if let Some(rest) = url.strip_prefix("sqlite:") {
            rest
        } else if let Some((scheme, _)) = url.split_once("://") {
            if matches!(scheme.to_ascii_lowercase().as_str(), "postgres" | "postgresql") {
                if !cfg!(feature = "postgres") {
                    return Err(usage(format!(
                        "--database {shown}: this build of projectionist has no PostgreSQL support \
                         (build it with the `postgres` feature); use sqlite://PATH"
                    )));
                }
                return Ok(DatabaseUrl {
                    location: Location::Postgres(SecretUrl(url.to_owned())),
                    shown,
                });
            }
            return Err(usage(format!(
                "unsupported database URL scheme `{scheme}` in --database {shown}; supported: \
                 sqlite://PATH (or a bare file path) and postgres://USER[:PASSWORD]@HOST[:PORT]/DB[?schema=NAME]"
            )));
        } else {
            url
        };
        let path = path.split(['?', '#']).next().unwrap_or_default();
        if path.is_empty() {
            return Err(usage(format!(
                "--database {shown} names no file; give sqlite://PATH, e.g. sqlite://projectionist.db"
            )));
        }
        let location = if path == ":memory:" {
            Location::SqliteMemory
        } else {
            Location::Sqlite(PathBuf::from(path))
        };
        Ok(DatabaseUrl { location, shown })
    }

    /// Whether the database already exists.
    pub fn exists(&self) -> bool {
        match &self.location {
            Location::Sqlite(p) => p.exists(),
            Location::SqliteMemory | Location::Postgres(_) => true,
        }
    }

    /// The files of an embedded database that exist (the database and its WAL files).
    pub fn existing_files(&self) -> Vec<PathBuf> {
        match &self.location {
            Location::Sqlite(p) => sqlite_files(p).into_iter().filter(|f| f.exists()).collect(),
            Location::SqliteMemory | Location::Postgres(_) => Vec::new(),
        }
    }
}

fn sqlite_files(p: &Path) -> Vec<PathBuf> {
    let mut out = vec![p.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut s = p.as_os_str().to_owned();
        s.push(suffix);
        out.push(PathBuf::from(s));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_secrets_are_masked() {
        assert_eq!(
            redact("sqlite://a.db?password=hunter2&mode=rwc"),
            "sqlite://a.db?password=***&mode=rwc"
        );
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(
            redact("postgres://u:pw@h/x?sslpassword=a#b"),
            "postgres://u:***@h/x?sslpassword=***#***"
        );
        assert_eq!(redact("x?api_key=1&a=b"), "x?api_key=***&a=b");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact("postgres://app:s3cret@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(redact("sqlite://a.db"), "sqlite://a.db");
        assert_eq!(redact("postgres://u:p@ss@h/x"), "postgres://u:***@h/x");
        assert_eq!(
            redact("nats://app:s3cret@h:4222?stream=EVENTS"),
            "nats://app:***@h:4222?stream=EVENTS"
        );
        assert_eq!(redact("nats://t0ken@h?stream=S"), "nats://***@h?stream=S");
    }

    #[test]
    fn urls_parse() {
        let p = |s: &str| DatabaseUrl::parse(s).map(|u| u.location);
        assert_eq!(p("sqlite://x.db").ok(), Some(Location::Sqlite("x.db".into())));
        assert_eq!(
            p("sqlite:///abs/x.db").ok(),
            Some(Location::Sqlite("/abs/x.db".into()))
        );
        assert_eq!(p("x.db").ok(), Some(Location::Sqlite("x.db".into())));
        assert_eq!(p("sqlite://:memory:").ok(), Some(Location::SqliteMemory));
        let pg = DatabaseUrl::parse("postgres://u:secret@h/db?schema=s1").unwrap();
        assert!(matches!(pg.location, Location::Postgres(_)));
        assert!(!pg.to_string().contains("secret"), "{pg}");
        assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
        assert!(DatabaseUrl::parse("postgresql://h/db").is_ok());
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("sqlite://").is_err());
    }
}
