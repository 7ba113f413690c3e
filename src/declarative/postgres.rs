//! Declarative SQL projections on PostgreSQL.
//!
//! Handler statements are rendered with `$N` placeholders and queued in the batch's
//! [`PgBatch`]; the store pipelines them inside the batch's transaction. PostgreSQL types each
//! parameter when it prepares a statement, and tokio-postgres checks bound values against those
//! types strictly. So each placeholder carries a cast chosen from the JSON type of the value it
//! binds, and every value is sent in PostgreSQL's text format:
//!
//! | value | placeholder | example |
//! |---|---|---|
//! | JSON integer (and `:stream_version`, `:position`) | `$N::bigint` | `42` |
//! | other JSON number | `$N::double precision` | `39.99` |
//! | JSON boolean | `$N::boolean` | `true` |
//! | JSON object or array, `:data`, `:metadata` | `$N::jsonb` | `{"a":1}` |
//! | JSON string, `:stream_id`, `:event_type`, `:event_id`, `:recorded_at` | `$N` (typed by its context) | `ORDER-1` |
//! | JSON `null`, a missing path | `$N` (typed by its context), bound NULL | |
//!
//! Strings are left to their context, so that `:recorded_at` fills a `timestamptz` column and
//! `:event_id` a `uuid` column. A statement is prepared once per connection and per
//! combination of casts (a parameter whose JSON type varies between events gives a few).
//!
//! At setup each `setup` statement runs on its own (a failing one is named in the error), and
//! each handler statement is prepared, so that SQL the database rejects shows before any event.

use std::collections::HashMap;
use std::error::Error as StdError;
use std::sync::Arc;

use bytes::BytesMut;
use postgres_types::{Format, IsNull, ToSql, Type};

use super::{Decoded, ParamSource, ParamValue, ProjectionDef, Statement};
use crate::core::error::{BatchFailure, HandlerError};
use crate::core::event::Event;
use crate::core::projection::{Applied, Apply, Projection};
use crate::postgres::{PgBatch, PgParam, PgProjection};

/// A parameter's value in PostgreSQL's text format (`None`: NULL). It accepts any parameter
/// type: the server parses the text as the type it inferred or the placeholder's cast names.
#[derive(Clone, Debug, PartialEq)]
pub struct TextParam(pub Option<String>);

impl ToSql for TextParam {
    fn to_sql(&self, _ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match &self.0 {
            None => Ok(IsNull::Yes),
            Some(s) => {
                out.extend_from_slice(s.as_bytes());
                Ok(IsNull::No)
            }
        }
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }

    fn encode_format(&self, _ty: &Type) -> Format {
        Format::Text
    }

    postgres_types::to_sql_checked!();
}

/// The cast a placeholder gets for `value`, and the value in text format.
pub fn bind(value: &ParamValue<'_>) -> (&'static str, TextParam) {
    match value {
        ParamValue::Null | ParamValue::Missing => ("", TextParam(None)),
        ParamValue::Integer(i) => ("::bigint", TextParam(Some(i.to_string()))),
        ParamValue::Real(x) => {
            let text = if x.is_nan() {
                "NaN".to_owned()
            } else if x.is_infinite() {
                if *x > 0.0 { "Infinity" } else { "-Infinity" }.to_owned()
            } else {
                x.to_string()
            };
            ("::double precision", TextParam(Some(text)))
        }
        ParamValue::Bool(b) => ("::boolean", TextParam(Some(b.to_string()))),
        ParamValue::Json(s) => ("::jsonb", TextParam(Some(s.to_string()))),
        ParamValue::Text(s) => ("", TextParam(Some(s.to_string()))),
    }
}

struct Compiled {
    statement: Statement,
    /// The statement as written in the config, for error messages.
    text: String,
    label: String,
}

struct Handler {
    statements: Vec<Compiled>,
    needs_data: bool,
    needs_metadata: bool,
}

/// A declarative projection's body on PostgreSQL.
pub struct PgSqlBody {
    def: Arc<ProjectionDef>,
    handlers: HashMap<String, Handler>,
}

impl std::fmt::Debug for PgSqlBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSqlBody")
            .field("projection", &self.def.name)
            .finish()
    }
}

impl PgSqlBody {
    pub fn new(def: Arc<ProjectionDef>) -> Self {
        let handlers = def
            .handlers
            .iter()
            .map(|(event_type, statements)| {
                let n = statements.len();
                let handler = Handler {
                    needs_data: statements.iter().any(Statement::needs_data),
                    needs_metadata: statements.iter().any(Statement::needs_metadata),
                    statements: statements
                        .iter()
                        .enumerate()
                        .map(|(k, st)| Compiled {
                            statement: st.clone(),
                            text: st.text().trim().to_owned(),
                            label: if n == 1 {
                                format!("{event_type} handler")
                            } else {
                                format!("{event_type} handler, statement {} of {n}", k + 1)
                            },
                        })
                        .collect(),
                };
                (event_type.clone(), handler)
            })
            .collect();
        PgSqlBody { def, handlers }
    }

    pub fn def(&self) -> &ProjectionDef {
        &self.def
    }

    fn run_event(&self, cx: &PgBatch, handler: &Handler, event: &Event) -> Result<(), HandlerError> {
        let decoded = Decoded::of(event, handler.needs_data, handler.needs_metadata)?;
        for st in &handler.statements {
            let params: &[ParamSource] = st.statement.params();
            let mut casts = Vec::with_capacity(params.len());
            let mut values: Vec<PgParam> = Vec::with_capacity(params.len());
            for param in params {
                let value = decoded.value(event, param, self.def.strict)?;
                let (cast, text) = bind(&value);
                casts.push(cast);
                values.push(Box::new(text));
            }
            let sql = st
                .statement
                .render(|n| format!("${n}{}", casts.get(n - 1).copied().unwrap_or("")));
            cx.execute_labeled(sql, values, st.label.clone());
        }
        Ok(())
    }

    fn queue_script(&self, cx: &PgBatch, step: &str, statements: &[String]) {
        let n = statements.len();
        for (k, sql) in statements.iter().enumerate() {
            cx.batch_execute_labeled(
                sql.clone(),
                format!(
                    "{step} statement {} of {n} failed\n    {}\n  error",
                    k + 1,
                    sql.trim().replace('\n', "\n    ")
                ),
            );
        }
    }
}

impl Apply<PgBatch> for PgSqlBody {
    fn event_types(&self) -> Option<Vec<String>> {
        Some(self.def.event_types())
    }

    fn setup(&self, cx: &PgBatch) -> Result<(), HandlerError> {
        self.queue_script(cx, "setup", &self.def.setup);
        for (event_type, handler) in &self.handlers {
            let n = handler.statements.len();
            for (k, st) in handler.statements.iter().enumerate() {
                let which = if n == 1 {
                    format!("handler for {event_type}")
                } else {
                    format!("handler for {event_type}, statement {} of {n}", k + 1)
                };
                cx.check(
                    st.statement.render_postgres(),
                    st.statement.params().len(),
                    format!(
                        "{which} does not prepare\n    {}\n  error",
                        st.text.replace('\n', "\n    ")
                    ),
                );
            }
        }
        Ok(())
    }

    fn reset(&self, cx: &PgBatch) -> Result<(), HandlerError> {
        if self.def.reset.is_empty() && !self.def.setup.is_empty() {
            return Err(HandlerError::msg(
                "this projection has no reset statements and its setup creates no table, so a rebuild \
                 cannot empty its read model; add a `reset` key to its config",
            ));
        }
        self.queue_script(cx, "reset", &self.def.reset);
        Ok(())
    }

    fn apply(&self, cx: &PgBatch, events: &[Event]) -> Result<Applied, BatchFailure> {
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

/// The engine projection for a declarative definition on PostgreSQL, with its options
/// (batch size, priority, error policy).
pub fn projection(def: &ProjectionDef) -> PgProjection {
    let def = Arc::new(def.clone());
    let options = def.options();
    Projection::new(def.name.clone(), PgSqlBody::new(def)).with_options(options)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::borrow::Cow;

    #[test]
    fn values_bind_by_json_type() {
        assert_eq!(
            bind(&ParamValue::Integer(7)),
            ("::bigint", TextParam(Some("7".into())))
        );
        assert_eq!(
            bind(&ParamValue::Real(2.5)),
            ("::double precision", TextParam(Some("2.5".into())))
        );
        assert_eq!(
            bind(&ParamValue::Bool(true)),
            ("::boolean", TextParam(Some("true".into())))
        );
        assert_eq!(
            bind(&ParamValue::Json(Cow::Borrowed("{\"a\":1}"))),
            ("::jsonb", TextParam(Some("{\"a\":1}".into())))
        );
        assert_eq!(
            bind(&ParamValue::Text(Cow::Borrowed("x"))),
            ("", TextParam(Some("x".into())))
        );
        assert_eq!(bind(&ParamValue::Missing), ("", TextParam(None)));
        assert_eq!(bind(&ParamValue::Null), ("", TextParam(None)));
        assert_eq!(
            bind(&ParamValue::Real(f64::INFINITY)).1,
            TextParam(Some("Infinity".into()))
        );
    }

    #[test]
    fn placeholders_carry_casts() {
        let st = Statement::parse(
            "UPDATE t SET n = n + :data.q * :data.p WHERE id = :stream_id AND v < :stream_version",
        )
        .expect("parses");
        let casts = ["::bigint", "::double precision", "", "::bigint"];
        let sql = st.render(|n| format!("${n}{}", casts[n - 1]));
        assert_eq!(
            sql,
            "UPDATE t SET n = n + $1::bigint * $2::double precision WHERE id = $3 AND v < $4::bigint"
        );
    }
}
