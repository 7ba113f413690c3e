//! The declarative projection body, written once over [`SqlTx`] for every SQL store.
//!
//! Handler statements are rendered with the store's placeholders ([`Dialect`]): on SQLite `?N`,
//! rendered once; on PostgreSQL `$N` with a cast chosen from the JSON type of the value it binds
//! (see [`Dialect::placeholder`]), rendered per event and prepared once per connection and per
//! combination of casts. Values are always bound, never spliced into the SQL text.
//!
//! At setup each `setup` statement runs on its own (a failing one is named in the error), and
//! each handler statement is prepared without running, so that SQL the database rejects shows
//! before any event.

use std::collections::HashMap;
use std::sync::Arc;

use super::{Decoded, ParamSource, ParamValue, ProjectionDef, Statement, PARAMETER_NAMES};
use crate::core::error::{BatchFailure, HandlerError};
use crate::core::event::Event;
use crate::core::projection::{Applied, Apply, Projection};
use crate::core::sql::{Dialect, SqlTx, SqlValue};

struct Compiled {
    statement: Statement,
    /// The SQL with plain SQLite placeholders (`?N`), rendered once.
    sqlite: String,
    /// "OrderCreated handler, statement 2 of 3", for error messages.
    label: String,
    /// "handler for OrderCreated, statement 2 of 3", for setup checks.
    which: String,
}

/// One event type's statements, as [`SqlBody::handlers`] lists them.
pub struct HandlerStatements<'a> {
    pub event_type: &'a str,
    /// Each statement, with its label for error messages.
    pub statements: Vec<(&'a Statement, &'a str)>,
    pub needs_data: bool,
    pub needs_metadata: bool,
}

struct Handler {
    statements: Vec<Compiled>,
    needs_data: bool,
    needs_metadata: bool,
}

/// A declarative projection's body, on any store whose context is a [`SqlTx`].
pub struct SqlBody {
    def: Arc<ProjectionDef>,
    handlers: HashMap<String, Handler>,
    statement_count: usize,
    fingerprint: String,
}

impl std::fmt::Debug for SqlBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlBody")
            .field("projection", &self.def.name)
            .finish()
    }
}

impl<'a> ParamValue<'a> {
    /// The value to bind: a missing path binds NULL.
    pub fn into_sql(self) -> SqlValue<'a> {
        match self {
            ParamValue::Null | ParamValue::Missing => SqlValue::Null,
            ParamValue::Integer(i) => SqlValue::Int(i),
            ParamValue::Real(x) => SqlValue::Real(x),
            ParamValue::Bool(b) => SqlValue::Bool(b),
            ParamValue::Text(s) => SqlValue::Text(s),
            ParamValue::Json(s) => SqlValue::Json(s),
        }
    }
}

impl SqlBody {
    pub fn new(def: Arc<ProjectionDef>) -> Self {
        let mut statement_count = 0;
        let handlers = def
            .handlers
            .iter()
            .map(|(event_type, statements)| {
                let n = statements.len();
                statement_count += n;
                let handler = Handler {
                    needs_data: statements.iter().any(Statement::needs_data),
                    needs_metadata: statements.iter().any(Statement::needs_metadata),
                    statements: statements
                        .iter()
                        .enumerate()
                        .map(|(k, st)| {
                            let (label, which) = if n == 1 {
                                (
                                    format!("{event_type} handler"),
                                    format!("handler for {event_type}"),
                                )
                            } else {
                                (
                                    format!("{event_type} handler, statement {} of {n}", k + 1),
                                    format!("handler for {event_type}, statement {} of {n}", k + 1),
                                )
                            };
                            Compiled {
                                sqlite: st.render_sqlite(),
                                statement: st.clone(),
                                label,
                                which,
                            }
                        })
                        .collect(),
                };
                (event_type.clone(), handler)
            })
            .collect();
        use md5::{Digest, Md5};
        let mut digest = Md5::new();
        for (event_type, statements) in &def.handlers {
            digest.update(event_type.as_bytes());
            for st in statements {
                digest.update([0u8]);
                digest.update(st.text().as_bytes());
            }
            digest.update([1u8]);
        }
        let fingerprint = format!("{:x}", digest.finalize());
        SqlBody {
            def,
            handlers,
            statement_count,
            fingerprint,
        }
    }

    pub fn def(&self) -> &ProjectionDef {
        &self.def
    }

    /// The handlers, sorted by event type: each statement with its label for error messages
    /// (`"OrderCreated handler, statement 2 of 3"`), and whether any of them needs the decoded
    /// payload or metadata.
    pub fn handlers(&self) -> Vec<HandlerStatements<'_>> {
        let mut out: Vec<HandlerStatements<'_>> = self
            .handlers
            .iter()
            .map(|(event_type, h)| HandlerStatements {
                event_type,
                statements: h
                    .statements
                    .iter()
                    .map(|c| (&c.statement, c.label.as_str()))
                    .collect(),
                needs_data: h.needs_data,
                needs_metadata: h.needs_metadata,
            })
            .collect();
        out.sort_by(|a, b| a.event_type.cmp(b.event_type));
        out
    }

    /// Whether `event_type` has a handler.
    pub fn handles(&self, event_type: &str) -> bool {
        self.handlers.contains_key(event_type)
    }

    /// A digest of the statements (event types and SQL as written), for a store that derives
    /// something from them once (a server-side function) and keys it by what they are.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    fn run_event<C: SqlTx + ?Sized>(
        &self,
        cx: &C,
        handler: &Handler,
        event: &Event,
    ) -> Result<(), HandlerError> {
        let decoded = Decoded::of(event, handler.needs_data, handler.needs_metadata)?;
        let dialect = cx.dialect();
        for st in &handler.statements {
            let params = st.statement.params();
            let mut values: Vec<SqlValue<'_>> = Vec::with_capacity(params.len());
            for param in params {
                values.push(decoded.value(event, param, self.def.strict)?.into_sql());
            }
            match dialect {
                Dialect::Sqlite => cx.execute_labeled(&st.sqlite, &values, &st.label)?,
                Dialect::Postgres => {
                    let sql = st.statement.render(|n| {
                        values
                            .get(n - 1)
                            .map_or_else(|| dialect.plain_placeholder(n), |v| dialect.placeholder(n, v))
                    });
                    cx.execute_labeled(&sql, &values, &st.label)?;
                }
            }
        }
        Ok(())
    }

    /// Runs lifecycle statements one by one, each named in its error.
    fn run_script<C: SqlTx + ?Sized>(
        &self,
        cx: &C,
        step: &str,
        statements: &[String],
    ) -> Result<(), HandlerError> {
        let n = statements.len();
        for (k, sql) in statements.iter().enumerate() {
            let label = format!(
                "{step} statement {} of {n} failed\n    {}\n  error",
                k + 1,
                sql.trim().replace('\n', "\n    ")
            );
            cx.execute_script_labeled(sql, &label).map_err(|e| {
                if step == "setup" && e.to_string().contains("already exists") {
                    HandlerError::msg(format!(
                        "{e}; setup runs at every start, so write CREATE TABLE IF NOT EXISTS / \
                         CREATE INDEX IF NOT EXISTS"
                    ))
                } else {
                    e
                }
            })?;
        }
        Ok(())
    }

    /// Prepares every handler statement without running it, so that a SQL error shows at
    /// startup with the projection, the event type and the statement, rather than at the
    /// first event.
    fn check_handlers<C: SqlTx + ?Sized>(&self, cx: &C) -> Result<(), HandlerError> {
        let mut types: Vec<&String> = self.handlers.keys().collect();
        types.sort();
        for event_type in types {
            let Some(handler) = self.handlers.get(event_type) else {
                continue;
            };
            for st in &handler.statements {
                let show = st.statement.text().trim().replace('\n', "\n    ");
                let dialect = cx.dialect();
                let (typed, untyped) = match dialect {
                    Dialect::Sqlite => (st.sqlite.clone(), st.sqlite.clone()),
                    Dialect::Postgres => {
                        let params = st.statement.params();
                        let arithmetic = st.statement.arithmetic();
                        let typed = st.statement.render(|n| {
                            let sample = params.get(n - 1).and_then(ParamSource::sample);
                            let numeric = arithmetic.get(n - 1).copied().unwrap_or(false);
                            dialect.check_placeholder(n, sample.as_ref(), numeric)
                        });
                        (typed, st.statement.render_postgres())
                    }
                };
                let label = format!("{} does not prepare\n    {show}\n  error", st.which);
                cx.check_typed_statement(&typed, &untyped, st.statement.params().len(), &label)
                    .map_err(|e| {
                        if e.to_string().contains("not a named event parameter") {
                            HandlerError::msg(format!(
                                "{} uses a parameter that is not a named event parameter (such as ?, ?1, $1, \
                                 $x or @x)\n    {show}\n  use named parameters only: {}",
                                st.which,
                                PARAMETER_NAMES.join(", ")
                            ))
                        } else {
                            e
                        }
                    })?;
            }
        }
        Ok(())
    }
}

impl<C: SqlTx + ?Sized + 'static> Apply<C> for SqlBody {
    fn event_types(&self) -> Option<Vec<String>> {
        Some(self.def.event_types())
    }

    fn setup(&self, cx: &C) -> Result<(), HandlerError> {
        cx.reserve_statements(self.statement_count);
        self.run_script(cx, "setup", &self.def.setup)?;
        self.check_handlers(cx)
    }

    fn reset(&self, cx: &C) -> Result<(), HandlerError> {
        if self.def.reset.is_empty() && !self.def.setup.is_empty() {
            return Err(HandlerError::msg(
                "this projection has no reset statements and its setup creates no table, so a rebuild \
                 cannot empty its read model; add a `reset` key to its config",
            ));
        }
        self.run_script(cx, "reset", &self.def.reset)
    }

    /// Declarative statements only write.
    fn reads(&self) -> bool {
        false
    }

    fn declarative(&self) -> Option<&SqlBody> {
        Some(self)
    }

    fn apply(&self, cx: &C, events: &[Event]) -> Result<Applied, BatchFailure> {
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
/// priority, error policy), on any store whose context is a [`SqlTx`]: the store's type picks
/// the context.
pub fn projection<C: SqlTx + ?Sized + 'static>(def: &ProjectionDef) -> Projection<dyn Apply<C>> {
    let def = Arc::new(def.clone());
    let options = def.options();
    Projection::new(def.name.clone(), SqlBody::new(def)).with_options(options)
}
