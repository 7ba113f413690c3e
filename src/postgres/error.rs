//! Mapping PostgreSQL errors to the core's errors: which are worth retrying, and what they say.

use crate::core::error::Error;

/// Whether retrying later may succeed: a lost or refused connection, a terminated backend, a
/// serialization failure or deadlock, a cancelled statement, too many connections.
pub(crate) fn retryable(e: &tokio_postgres::Error) -> bool {
    if e.is_closed() {
        return true;
    }
    if let Some(code) = e.code() {
        return retryable_code(code.code());
    }
    // No SQLSTATE: I/O trouble is retryable; a value conversion error is not.
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        if s.is::<std::io::Error>() {
            return true;
        }
        source = s.source();
    }
    false
}

/// Whether an error of SQLSTATE `c` is worth retrying later (see [`retryable`]).
pub(crate) fn retryable_code(c: &str) -> bool {
    c.starts_with("08")
        || c.starts_with("53")
        || c.starts_with("57P")
        || c == "57014"
        || c == "40001"
        || c == "40P01"
        || c == "55P03"
}

/// The error's text, with the server's detail and hint when there are some.
pub(crate) fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => {
            let mut s = format!("{}: {}", db.severity(), db.message());
            if let Some(d) = db.detail() {
                s.push_str(&format!(" ({d})"));
            }
            if let Some(h) = db.hint() {
                s.push_str(&format!("; hint: {h}"));
            }
            s.push_str(&format!(" [SQLSTATE {}]", db.code().code()));
            s
        }
        // "error connecting to server" alone hides the cause: add the sources' texts.
        None => {
            let mut s = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(cause) = source {
                let text = cause.to_string();
                if !s.contains(&text) {
                    s.push_str(": ");
                    s.push_str(&text);
                }
                source = cause.source();
            }
            s
        }
    }
}

/// A database error during `op`, keeping `e` (and so its SQLSTATE, see
/// [`Error::sqlstate`]).
pub(crate) fn db(op: &'static str, e: tokio_postgres::Error) -> Error {
    let retryable = retryable(&e);
    let mut message = describe(&e);
    if retryable {
        message.push_str(" (transient: retrying later may succeed)");
    }
    Error::Database {
        op,
        message,
        retryable,
        cause: Some(Box::new(e)),
    }
}

/// `db(op, e)` as a closure for `map_err`.
pub(crate) fn db_err(op: &'static str) -> impl Fn(tokio_postgres::Error) -> Error {
    move |e| db(op, e)
}

/// A pool error during `op` (no connection could be had).
pub(crate) fn pool(op: &'static str, e: deadpool_postgres::PoolError) -> Error {
    use deadpool_postgres::PoolError;
    if let PoolError::Backend(e) = e {
        return db(op, e);
    }
    let (message, retryable) = match &e {
        PoolError::Timeout(t) => (
            format!(
                "timed out waiting for a PostgreSQL connection ({t:?}); check that the database is \
                 reachable and that the pool is large enough"
            ),
            true,
        ),
        PoolError::Closed => ("the connection pool is closed".to_owned(), false),
        other => (format!("cannot get a PostgreSQL connection: {other}"), true),
    };
    Error::Database {
        op,
        message,
        retryable,
        cause: Some(Box::new(e)),
    }
}
