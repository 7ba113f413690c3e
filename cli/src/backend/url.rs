//! The `--database` URL: its parsing, and the redaction of passwords in every URL shown.

use std::path::PathBuf;

use anyhow::Result;

use super::{Kind, StoreBackend, STORES};
use crate::exit::usage;

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

/// A parsed `--database` URL, with the store backend its scheme names. Its `Display` never
/// shows a password.
#[derive(Clone)]
pub struct DatabaseUrl {
    kind: &'static Kind<dyn StoreBackend>,
    url: SecretUrl,
    shown: String,
}

impl std::fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseUrl")
            .field("store", &self.kind.name)
            .field("url", &self.url)
            .finish()
    }
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
    /// Parses `--database`: `SCHEME://…` (or `SCHEME:…`) for a store of the registry, or a
    /// bare path for the first (embedded) one. Unknown schemes, stores this build lacks, and
    /// URLs the store rejects are usage errors.
    pub fn parse(url: &str) -> Result<Self> {
        let shown = redact(url);
        let url = url.trim();
        if url.is_empty() {
            return Err(usage(format!(
                "--database is empty; give {}",
                Kind::examples(STORES, " or ")
            )));
        }
        let kind = match url.split_once("://") {
            Some((scheme, _)) => Kind::find(STORES, scheme).ok_or_else(|| {
                usage(format!(
                    "unsupported database URL scheme `{scheme}` in --database {shown}; supported: {}",
                    Kind::examples(STORES, " and ")
                ))
            })?,
            None => url
                .split_once(':')
                .and_then(|(scheme, _)| Kind::find(STORES, scheme))
                .unwrap_or(&STORES[0]),
        };
        let parsed = DatabaseUrl {
            kind,
            url: SecretUrl(url.to_owned()),
            shown,
        };
        kind.built(&format!("--database {}", parsed.shown))?
            .check(&parsed)?;
        Ok(parsed)
    }

    /// The URL as given (trimmed), with its password: to connect with, never to print.
    pub fn expose(&self) -> &str {
        self.url.expose()
    }

    /// The name of the store the URL names ("SQLite", "PostgreSQL").
    pub fn backend_name(&self) -> &'static str {
        self.kind.name
    }

    /// The backend (built in: `parse` checked).
    pub fn backend(&self) -> Result<&'static dyn StoreBackend> {
        self.kind.built(&format!("--database {self}"))
    }

    /// Whether the database already exists.
    pub fn exists(&self) -> bool {
        self.backend().is_ok_and(|b| b.exists(self))
    }

    /// The files of an embedded database that exist (the database and its journals).
    pub fn existing_files(&self) -> Vec<PathBuf> {
        self.backend().map(|b| b.files(self)).unwrap_or_default()
    }
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
    fn urls_name_their_store() {
        let store = |s: &str| DatabaseUrl::parse(s).map(|u| u.kind.name);
        assert!(DatabaseUrl::parse("mysql://h/db").is_err());
        assert!(DatabaseUrl::parse("  ").is_err());
        if cfg!(feature = "sqlite") {
            for url in [
                "sqlite://x.db",
                "SQLite:x.db",
                "x.db",
                "data:2024.db",
                "sqlite://:memory:",
            ] {
                assert_eq!(store(url).ok(), Some("SQLite"), "{url}");
            }
            assert!(DatabaseUrl::parse("sqlite://").is_err());
        } else {
            let err = DatabaseUrl::parse("x.db").unwrap_err().to_string();
            assert!(err.contains("no SQLite support"), "{err}");
        }
        if cfg!(feature = "postgres") {
            let pg = DatabaseUrl::parse("postgres://u:secret@h/db?schema=s1").unwrap();
            assert_eq!(pg.kind.name, "PostgreSQL");
            assert!(!pg.to_string().contains("secret"), "{pg}");
            assert!(!format!("{pg:?}").contains("secret"), "{pg:?}");
            assert!(DatabaseUrl::parse("postgresql://h/db").is_ok());
        } else {
            let err = DatabaseUrl::parse("postgres://h/db").unwrap_err().to_string();
            assert!(err.contains("no PostgreSQL support"), "{err}");
        }
    }
}
