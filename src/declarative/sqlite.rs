//! Declarative SQL projections on the embedded SQLite backend.
//!
//! Handler statements are rendered with `?N` placeholders, prepared once per connection
//! (through rusqlite's statement cache) and run with the event's values bound: JSON numbers as
//! integer or real, strings as text, booleans as 0 or 1, objects and arrays as JSON text, a
//! missing path as NULL (or an error when the projection is strict).

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::types::{ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, ToSql};

use super::{Decoded, ParamSource, ParamValue, ProjectionDef, Statement};
use crate::core::error::{BatchFailure, HandlerError};
use crate::core::event::Event;
use crate::core::projection::{Applied, Apply, Projection};
use crate::sqlite::SqliteProjection;

/// Room in the connection's prepared-statement cache for the engine's own statements.
const CACHE_HEADROOM: usize = 64;
/// The smallest cache this body asks for, so that several declarative projections that share
/// the connection keep their statements prepared.
const CACHE_MIN: usize = 256;

struct Prepared {
    /// The SQL with `?N` placeholders.
    sql: String,
    /// The statement as written in the config, for error messages.
    text: String,
    params: Vec<ParamSource>,
}

struct Handler {
    statements: Vec<Prepared>,
    needs_data: bool,
    needs_metadata: bool,
}

/// A declarative projection's body on SQLite.
pub struct SqlBody {
    def: Arc<ProjectionDef>,
    handlers: HashMap<String, Handler>,
    statement_count: usize,
}

impl std::fmt::Debug for SqlBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBody")
            .field("projection", &self.def.name)
            .finish()
    }
}

fn prepared(st: &Statement) -> Prepared {
    Prepared {
        sql: st.render_sqlite(),
        text: st.text().trim().to_owned(),
        params: st.params().to_vec(),
    }
}

impl SqlBody {
    pub fn new(def: Arc<ProjectionDef>) -> Self {
        let mut statement_count = 0;
        let handlers = def
            .handlers
            .iter()
            .map(|(event_type, statements)| {
                statement_count += statements.len();
                let handler = Handler {
                    needs_data: statements.iter().any(Statement::needs_data),
                    needs_metadata: statements.iter().any(Statement::needs_metadata),
                    statements: statements.iter().map(prepared).collect(),
                };
                (event_type.clone(), handler)
            })
            .collect();
        SqlBody {
            def,
            handlers,
            statement_count,
        }
    }

    pub fn def(&self) -> &ProjectionDef {
        &self.def
    }

    fn run_event(&self, cx: &Connection, handler: &Handler, event: &Event) -> Result<(), HandlerError> {
        let decoded = Decoded::of(event, handler.needs_data, handler.needs_metadata)?;
        let n = handler.statements.len();
        for (k, st) in handler.statements.iter().enumerate() {
            let context = || {
                if n == 1 {
                    format!("{} handler", event.event_type)
                } else {
                    format!("{} handler, statement {} of {n}", event.event_type, k + 1)
                }
            };
            let mut stmt = cx
                .prepare_cached(&st.sql)
                .map_err(|e| HandlerError::from(e).context(context()))?;
            for (i, param) in st.params.iter().enumerate() {
                let value = decoded.value(event, param, self.def.strict)?;
                stmt.raw_bind_parameter(i + 1, Bind(value))
                    .map_err(|e| HandlerError::from(e).context(format!("{}: binding {param}", context())))?;
            }
            stmt.raw_execute()
                .map_err(|e| HandlerError::from(e).context(context()))?;
        }
        Ok(())
    }

    /// Runs lifecycle statements one by one, naming the one that fails.
    fn run_script(&self, cx: &Connection, step: &str, statements: &[String]) -> Result<(), HandlerError> {
        let n = statements.len();
        for (k, sql) in statements.iter().enumerate() {
            if let Err(e) = cx.execute_batch(sql) {
                let mut hint = String::new();
                if step == "setup" && e.to_string().contains("already exists") {
                    hint = "; setup runs at every start, so write CREATE TABLE IF NOT EXISTS / \
                            CREATE INDEX IF NOT EXISTS"
                        .to_owned();
                }
                return Err(HandlerError::from(e).context(format!(
                    "{step} statement {} of {n} failed{hint}\n    {}\n  error",
                    k + 1,
                    sql.replace('\n', "\n    ")
                )));
            }
        }
        Ok(())
    }

    /// Prepares every handler statement, so that a SQL error shows at startup with the
    /// projection, the event type and the statement, rather than at the first event.
    fn check_handlers(&self, cx: &Connection) -> Result<(), HandlerError> {
        for (event_type, handler) in &self.def.handlers {
            let Some(compiled) = self.handlers.get(event_type) else {
                continue;
            };
            let n = handler.len();
            for (k, st) in compiled.statements.iter().enumerate() {
                let which = if n == 1 {
                    format!("handler for {event_type}")
                } else {
                    format!("handler for {event_type}, statement {} of {n}", k + 1)
                };
                let show = st.text.replace('\n', "\n    ");
                let stmt = cx.prepare_cached(&st.sql).map_err(|e| {
                    HandlerError::from(e).context(format!("{which} does not prepare\n    {show}\n  error"))
                })?;
                if stmt.parameter_count() != st.params.len() {
                    return Err(HandlerError::msg(format!(
                        "{which} uses a parameter that is not a named event parameter (such as ?, ?1, $x or @x)\n    {show}\n  \
                         use named parameters only: {}",
                        super::PARAMETER_NAMES.join(", ")
                    )));
                }
            }
        }
        Ok(())
    }
}

/// A bound value.
struct Bind<'a>(ParamValue<'a>);

impl ToSql for Bind<'_> {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match &self.0 {
            ParamValue::Null | ParamValue::Missing => ToSqlOutput::Owned(SqlValue::Null),
            ParamValue::Integer(i) => ToSqlOutput::Owned(SqlValue::Integer(*i)),
            ParamValue::Real(x) => ToSqlOutput::Owned(SqlValue::Real(*x)),
            ParamValue::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
            ParamValue::Text(s) | ParamValue::Json(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

impl Apply<Connection> for SqlBody {
    fn event_types(&self) -> Option<Vec<String>> {
        Some(self.def.event_types())
    }

    fn setup(&self, cx: &Connection) -> Result<(), HandlerError> {
        cx.set_prepared_statement_cache_capacity(CACHE_MIN.max(self.statement_count + CACHE_HEADROOM));
        self.run_script(cx, "setup", &self.def.setup)?;
        self.check_handlers(cx)
    }

    fn reset(&self, cx: &Connection) -> Result<(), HandlerError> {
        if self.def.reset.is_empty() && !self.def.setup.is_empty() {
            return Err(HandlerError::msg(
                "this projection has no reset statements and its setup creates no table, so a rebuild \
                 cannot empty its read model; add a `reset` key to its config",
            ));
        }
        self.run_script(cx, "reset", &self.def.reset)
    }

    fn apply(&self, cx: &Connection, events: &[Event]) -> Result<Applied, BatchFailure> {
        let mut applied = Applied::default();
        for (index, event) in events.iter().enumerate() {
            match self.handlers.get(&event.event_type) {
                None => applied.ignored += 1,
                Some(handler) => {
                    self.run_event(cx, handler, event)
                        .map_err(|error| BatchFailure { index, error })?;
                    applied.handled += 1;
                }
            }
        }
        Ok(applied)
    }
}

/// The engine projection for a declarative definition, with its options (batch size,
/// priority, error policy).
pub fn projection(def: &ProjectionDef) -> SqliteProjection {
    let def = Arc::new(def.clone());
    let options = def.options();
    Projection::new(def.name.clone(), SqlBody::new(def)).with_options(options)
}
