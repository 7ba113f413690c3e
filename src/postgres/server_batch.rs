//! Declarative projections on PostgreSQL, one server call per batch.
//!
//! A declarative projection's statements are fixed SQL with named event parameters, so the
//! store turns them, once per process and projection, into a PL/pgSQL function in the store's
//! schema (named by a digest of its text, so that every process and version of the statements
//! finds or creates its own). A batch is then one call: the events' fields go to the server as
//! arrays, and the function runs each event's statements there (static SQL: plans cached per
//! connection), in order, inside the batch's transaction.
//!
//! Each parameter becomes an expression over the arrays (`:data.a.b` is the payload's
//! `#>> '{a,b}'`), cast to the type PostgreSQL infers for it when the statement is prepared
//! with the casts the setup check uses (`:data.quantity * :data.unit_price` as `numeric`,
//! positions as `bigint`; a JSON-path parameter elsewhere takes its context's type, as a
//! parameter bound as text does on the per-event path).
//!
//! The loop runs in one `BEGIN … EXCEPTION` block: a failing statement's error is caught (the
//! server logs nothing for it) and the block's subtransaction undoes the batch's statements;
//! the function returns the failing event, the statement and the error instead of raising. The
//! runner then commits the events before it (one call again), deals with the failing one under
//! the projection's policy, and goes on after it, as on the per-event path. A batch costs one
//! subtransaction, not one per event.
//!
//! Statements that a PL/pgSQL function cannot hold as they are (a `SELECT`, a `RETURNING`, a
//! leading comment), and `strict` projections (a missing path is the handler's error), stay on
//! the per-event path.

use std::collections::HashMap;
use std::sync::Arc;

use deadpool_postgres::GenericClient;
use tokio_postgres::types::Type;

use super::error::{self, db};
use super::quote;
use crate::core::error::{BatchFailure, Error, HandlerError};
use crate::core::event::Event;
use crate::core::projection::Applied;
use crate::core::sql::Dialect;
use crate::declarative::{ParamSource, SqlBody};

/// A projection's function, ready to call.
pub(crate) struct ServerFn {
    /// `SELECT "schema"."name"($1, …, $8)`.
    call: String,
    /// Labels of the statements by event type, in order (for error messages).
    labels: HashMap<String, Vec<String>>,
    needs: Needs,
}

/// Which event fields the statements use (the others go as empty arrays).
#[derive(Clone, Copy, Default)]
struct Needs {
    position: bool,
    event_id: bool,
    recorded_at: bool,
    data: bool,
    metadata: bool,
}

/// The arrays, in argument order, and how the function's body names each.
const TYPES: &str = "$1";
const STREAM_IDS: &str = "$2";
const VERSIONS: &str = "$3";
const POSITIONS: &str = "$4";
const EVENT_IDS: &str = "$5";
const RECORDED: &str = "$6";
const DATA: &str = "$7";
const METADATA: &str = "$8";
const ARGUMENTS: &str = "text[], text[], bigint[], bigint[], text[], text[], text[], text[]";
/// The body's dollar quote (a statement holding it stays on the per-event path).
const QUOTE: &str = "$projectionist_batch$";

/// Why a body is not run through a function: it says which statement, for the debug log.
pub(crate) struct NotEligible(pub String);

/// Whether `body`'s statements can run in a generated function.
fn eligible(body: &SqlBody) -> Result<(), NotEligible> {
    if body.def().strict {
        return Err(NotEligible(
            "strict = true (a missing path is checked per event)".into(),
        ));
    }
    for h in body.handlers() {
        for (st, label) in &h.statements {
            let text = st.text().trim_start();
            let lower = text.to_ascii_lowercase();
            let verb = ["insert", "update", "delete", "merge"].iter().any(|v| {
                lower.starts_with(v)
                    && !lower[v.len()..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
            });
            if !verb || lower.contains("returning") || text.contains(QUOTE) {
                return Err(NotEligible(format!(
                    "{label} is not a plain INSERT, UPDATE, DELETE or MERGE without RETURNING"
                )));
            }
        }
    }
    Ok(())
}

/// A SQL string literal.
fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The expression of one parameter inside the function, before its cast.
fn source_expr(p: &ParamSource) -> String {
    let path = |root: &str, path: &[String]| {
        if path.is_empty() {
            root.to_owned()
        } else {
            let segs: Vec<String> = path.iter().map(|s| literal(s)).collect();
            format!("({root} #>> ARRAY[{}]::text[])", segs.join(", "))
        }
    };
    match p {
        ParamSource::StreamId => format!("{STREAM_IDS}[projectionist_i]"),
        ParamSource::StreamVersion => format!("{VERSIONS}[projectionist_i]"),
        ParamSource::Position => format!("{POSITIONS}[projectionist_i]"),
        ParamSource::EventType => format!("{TYPES}[projectionist_i]"),
        ParamSource::EventId => format!("{EVENT_IDS}[projectionist_i]"),
        ParamSource::RecordedAt => format!("{RECORDED}[projectionist_i]"),
        ParamSource::Data(p) => path("projectionist_d", p),
        ParamSource::Metadata(p) => path("projectionist_m", p),
    }
}

/// The cast to `ty` (none for `unknown`: the context types it).
fn cast(ty: &Type) -> String {
    if ty.name() == "unknown" {
        String::new()
    } else {
        format!("::{}.{}", quote(ty.schema()), quote(ty.name()))
    }
}

/// The types PostgreSQL infers for `st`'s parameters, prepared with the setup check's casts
/// (falling back to plain placeholders where those do not fit, as the check does).
async fn param_types(
    client: &deadpool_postgres::Object,
    st: &crate::declarative::Statement,
) -> Result<Vec<Type>, tokio_postgres::Error> {
    let dialect = Dialect::Postgres;
    let params = st.params();
    let arithmetic = st.arithmetic();
    let typed = st.render(|n| {
        let sample = params.get(n - 1).and_then(ParamSource::sample);
        let numeric = arithmetic.get(n - 1).copied().unwrap_or(false);
        dialect.check_placeholder(n, sample.as_ref(), numeric)
    });
    let prepared = match client.prepare(&typed).await {
        Ok(p) => p,
        Err(_) => client.prepare(&st.render_postgres()).await?,
    };
    Ok(prepared.params().to_vec())
}

/// The function's source for `body`, given each statement's parameter types (by event type,
/// in order), and what it needs.
fn source(
    schema: &str,
    body: &SqlBody,
    types: &HashMap<(String, usize), Vec<Type>>,
) -> (String, String, Needs) {
    let mut needs = Needs::default();
    let mut cases = String::new();
    for h in body.handlers() {
        cases.push_str(&format!("      WHEN {} THEN\n", literal(h.event_type)));
        if h.needs_data {
            needs.data = true;
            cases.push_str(&format!(
                "        projectionist_s := 0;\n        projectionist_d := {DATA}[projectionist_i]::jsonb;\n"
            ));
        }
        if h.needs_metadata {
            needs.metadata = true;
            cases.push_str(&format!("        projectionist_s := 0;\n        projectionist_m := {METADATA}[projectionist_i]::jsonb;\n"));
        }
        for (k, (st, _)) in h.statements.iter().enumerate() {
            let tys = types.get(&(h.event_type.to_owned(), k));
            for p in st.params() {
                match p {
                    ParamSource::Position => needs.position = true,
                    ParamSource::EventId => needs.event_id = true,
                    ParamSource::RecordedAt => needs.recorded_at = true,
                    _ => {}
                }
            }
            let sql = st.render(|n| {
                let param = st.params().get(n - 1);
                let expr = param.map_or_else(|| "NULL".to_owned(), source_expr);
                let ty = tys.and_then(|t| t.get(n - 1));
                // A JSON number bound on the per-event path is a `bigint` or a `double
                // precision`, which an integer column takes rounded: through `numeric`, the
                // text of `1.5` does too.
                let json_path =
                    matches!(param, Some(ParamSource::Data(p) | ParamSource::Metadata(p)) if !p.is_empty());
                let integer = ty.is_some_and(|t| [Type::INT2, Type::INT4, Type::INT8].contains(t));
                let via = if json_path && integer { "::numeric" } else { "" };
                format!("({expr}){via}{}", ty.map_or_else(String::new, cast))
            });
            let sql = sql.trim_end().trim_end_matches(';').trim_end();
            cases.push_str(&format!(
                "        projectionist_s := {};\n        {sql}\n        ;\n",
                k + 1
            ));
        }
    }
    let body_sql = format!(
        "DECLARE
  projectionist_i integer := 0;
  projectionist_s integer := 0;
  projectionist_n integer := coalesce(array_length({TYPES}, 1), 0);
  projectionist_d jsonb;
  projectionist_m jsonb;
  projectionist_state text;
  projectionist_message text;
  projectionist_detail text;
  projectionist_hint text;
BEGIN
  BEGIN
    WHILE projectionist_i < projectionist_n LOOP
      projectionist_i := projectionist_i + 1;
      CASE {TYPES}[projectionist_i]
{cases}      ELSE NULL;
      END CASE;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    GET STACKED DIAGNOSTICS projectionist_state = RETURNED_SQLSTATE, projectionist_message = MESSAGE_TEXT,
                            projectionist_detail = PG_EXCEPTION_DETAIL, projectionist_hint = PG_EXCEPTION_HINT;
    RETURN ARRAY[projectionist_i::text, projectionist_s::text, projectionist_state, projectionist_message, projectionist_detail, projectionist_hint];
  END;
  RETURN NULL;
END
"
    );
    use md5::{Digest, Md5};
    let name = format!(
        "projectionist_batch_{}",
        &format!("{:x}", Md5::digest(body_sql.as_bytes()))[..20]
    );
    let create = format!(
        "CREATE FUNCTION {}.{}({ARGUMENTS}) RETURNS text[] LANGUAGE plpgsql AS {QUOTE}\n{body_sql}{QUOTE}",
        quote(schema),
        quote(&name)
    );
    (name, create, needs)
}

/// Creates the function `name` in `schema` by running `create`, unless it is there already,
/// under an advisory lock (so that processes starting together do not race), in a transaction
/// of its own on `client`. `Ok(Err(e))`: `create` failed, not retryably (nothing was created).
pub(crate) async fn create_once(
    client: &mut deadpool_postgres::Object,
    schema: &str,
    name: &str,
    create: &str,
    op: &'static str,
) -> Result<Result<(), tokio_postgres::Error>, Error> {
    let tx = client.transaction().await.map_err(|e| db(op, e))?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&name])
        .await
        .map_err(|e| db(op, e))?;
    let exists = tx
        .query_opt(
            "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
              WHERE n.nspname = $1 AND p.proname = $2",
            &[&schema, &name],
        )
        .await
        .map_err(|e| db(op, e))?
        .is_some();
    if !exists {
        if let Err(e) = tx.batch_execute(create).await {
            if error::retryable(&e) {
                return Err(db(op, e));
            }
            return Ok(Err(e));
        }
    }
    tx.commit().await.map_err(|e| db(op, e))?;
    Ok(Ok(()))
}

impl ServerFn {
    /// Prepares `body`'s statements (on `client`, outside any transaction), generates its
    /// function and creates it in `schema` unless it is there already (under an advisory
    /// lock, so that processes starting together do not race). `Ok(None)`: the body stays on
    /// the per-event path.
    pub(crate) async fn ensure(
        client: &mut deadpool_postgres::Object,
        schema: &str,
        body: &SqlBody,
    ) -> Result<Result<ServerFn, NotEligible>, Error> {
        if let Err(why) = eligible(body) {
            return Ok(Err(why));
        }
        let mut types = HashMap::new();
        let mut labels: HashMap<String, Vec<String>> = HashMap::new();
        for h in body.handlers() {
            for (k, (st, label)) in h.statements.iter().enumerate() {
                match param_types(client, st).await {
                    Ok(t) => {
                        types.insert((h.event_type.to_owned(), k), t);
                    }
                    Err(e) if error::retryable(&e) => return Err(db("preparing a projection's function", e)),
                    Err(e) => {
                        return Ok(Err(NotEligible(format!(
                            "{label} does not prepare: {}",
                            error::describe(&e)
                        ))))
                    }
                }
                labels
                    .entry(h.event_type.to_owned())
                    .or_default()
                    .push((*label).to_owned());
            }
        }
        let (name, create, needs) = source(schema, body, &types);
        let op = "creating a projection's function";
        if let Err(e) = create_once(client, schema, &name, &create, op).await? {
            return Ok(Err(NotEligible(format!(
                "its function does not compile: {}",
                error::describe(&e)
            ))));
        }
        let call = format!(
            "SELECT {}.{}($1, $2, $3, $4, $5, $6, $7, $8)",
            quote(schema),
            quote(&name)
        );
        Ok(Ok(ServerFn { call, labels, needs }))
    }

    /// Applies `events[range]` in one call inside `tx`: what it applied, or the failing event
    /// (by its index in `events`) with the error its statement raised.
    pub(crate) async fn apply(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        body: &SqlBody,
        events: &[Event],
        start: usize,
    ) -> Result<Result<Applied, BatchFailure>, Error> {
        let n = events.len();
        let mut applied = Applied::default();
        let mut types: Vec<&str> = Vec::with_capacity(n);
        let mut streams: Vec<&str> = Vec::with_capacity(n);
        let mut versions: Vec<i64> = Vec::with_capacity(n);
        let (mut positions, mut ids, mut recorded, mut data, mut metadata) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let need = self.needs;
        for e in events {
            if body.handles(&e.event_type) {
                applied.handled += 1;
            } else {
                applied.ignored += 1;
            }
            types.push(&e.event_type);
            streams.push(&e.stream_id);
            versions.push(e.stream_version);
            if need.position {
                positions.push(e.position);
            }
            if need.event_id {
                ids.push(e.event_id.hyphenated().to_string());
            }
            if need.recorded_at {
                recorded.push(e.recorded_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true));
            }
            if need.data {
                data.push(&*e.data);
            }
            if need.metadata {
                metadata.push(&*e.metadata);
            }
        }
        let op = "applying a batch";
        let st = tx.prepare_cached(&self.call).await.map_err(|e| db(op, e))?;
        let row = tx
            .query_one(
                &st,
                &[
                    &types, &streams, &versions, &positions, &ids, &recorded, &data, &metadata,
                ],
            )
            .await
            .map_err(|e| db(op, e))?;
        let failed: Option<Vec<Option<String>>> = row.try_get(0).map_err(|e| db(op, e))?;
        let Some(failed) = failed else {
            return Ok(Ok(applied));
        };
        let field = |k: usize| failed.get(k).cloned().flatten();
        let index: usize = field(0).and_then(|s| s.parse().ok()).unwrap_or(1);
        let statement: usize = field(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let state = field(2).unwrap_or_default();
        let Some(event) = events.get(index.saturating_sub(1)) else {
            return Err(Error::Internal(format!(
                "a projection's function reported event {index} of a batch of {n}"
            )));
        };
        let mut message = format!("ERROR: {}", field(3).unwrap_or_default());
        if let Some(d) = field(4).filter(|d| !d.is_empty()) {
            message.push_str(&format!(" ({d})"));
        }
        if let Some(h) = field(5).filter(|h| !h.is_empty()) {
            message.push_str(&format!("; hint: {h}"));
        }
        message.push_str(&format!(" [SQLSTATE {state}]"));
        if error::retryable_code(&state) {
            return Err(Error::Database {
                op,
                message: format!("{message} (transient: retrying later may succeed)"),
                retryable: true,
                cause: None,
            });
        }
        let error = if statement == 0 {
            // The payload (or metadata) is not JSON: a decode error, as on the per-event path.
            match serde_json::from_str::<serde::de::IgnoredAny>(&event.data)
                .and_then(|_| serde_json::from_str::<serde::de::IgnoredAny>(&event.metadata))
            {
                Err(e) => HandlerError::decode(event, e),
                Ok(_) => HandlerError::decode(event, std::io::Error::other(message)),
            }
        } else {
            let label = self
                .labels
                .get(&event.event_type)
                .and_then(|l| l.get(statement - 1))
                .map_or("handler", String::as_str);
            HandlerError::msg(format!("{label}: {message}"))
        };
        Ok(Err(BatchFailure {
            index: start + index - 1,
            error,
        }))
    }
}

/// The functions of the declarative projections this store has applied, by the digest of
/// their statements: `None` for a body that stays on the per-event path.
pub(crate) type ServerFns = std::sync::Mutex<HashMap<String, Option<Arc<ServerFn>>>>;
