//! Typed per-event handlers on PostgreSQL, a batch's statements in one call.
//!
//! Typed handlers queue statements with bound parameters ([`PgBatch::execute`]); sent one by
//! one, each costs the server a Bind, an Execute and a Sync, and the client a round of protocol
//! work. Instead, once a projection's statement texts are known (from its first batch, which is
//! pipelined as before), the store generates a PL/pgSQL function over them: each placeholder
//! `$n` becomes an element of a typed array argument, and a batch becomes one call whose first
//! argument lists, in queue order, which statement runs next. The function runs them in that
//! exact order, as static SQL (plans cached per connection), inside the batch's transaction.
//!
//! The loop runs in one `BEGIN … EXCEPTION` block: when a statement fails, its subtransaction
//! undoes the call's statements and the function returns the failing statement's number
//! instead of raising (the server logs nothing). The flusher then sends the same statements
//! again the ordinary way (pipelined up to the failing one, then one at a time), so that the
//! failure is the driver's own error, mapped to its event exactly as on the pipelined path:
//! the runner commits the events before it, applies the projection's policy to it and goes on.
//!
//! A statement runs in a function only when it is a plain `INSERT`, `UPDATE`, `DELETE` or
//! `MERGE` without `RETURNING`, whose parameters have array types; others (and store
//! statements) are pipelined between calls, in order. A function whose call fails, or that
//! reports a failure the statements do not reproduce, is not used again by the process.

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{BufMut, BytesMut};
use deadpool_postgres::GenericClient;
use tokio_postgres::types::{IsNull, Kind, ToSql, Type};

use super::batch::{Origin, Queued, Sql};
use super::error::{self, db};
use super::quote;
use super::server_batch::create_once;
use crate::core::error::Error;
use crate::declarative::replace_positional;

/// The function body's dollar quote (a statement holding it is not run in a function).
const QUOTE: &str = "$projectionist_typed$";
/// The most statements one function holds; more go on being pipelined.
const MAX_STATEMENTS: usize = 64;
/// The most arguments of a function in PostgreSQL (`FUNC_MAX_ARGS`).
const MAX_ARGUMENTS: usize = 100;
/// The fewest statements in a row worth a call (fewer are pipelined).
pub(crate) const MIN_RUN: usize = 8;

/// One statement of a function: its text as queued and its parameters' types.
#[derive(Clone)]
struct Known {
    sql: String,
    types: Vec<Type>,
}

/// A generated function, ready to call.
pub(crate) struct Dispatcher {
    /// `SELECT "schema"."name"($1, …)`.
    call: String,
    /// Statement text → its number (0-based) in `statements`.
    index: HashMap<String, usize>,
    statements: Vec<Known>,
}

/// What the store knows of one projection's statements.
#[derive(Default)]
struct Entry {
    current: Option<Arc<Dispatcher>>,
    /// Texts that cannot run in a function.
    rejected: Arc<HashSet<String>>,
    /// No function for this projection any more (one failed where its statements did not).
    off: bool,
}

/// The store's functions, by projection.
#[derive(Default)]
pub(crate) struct Dispatchers {
    by_projection: Mutex<HashMap<Arc<str>, Entry>>,
}

/// One commit's view of its projection's function, and what it learns.
pub(crate) struct BatchDispatch {
    current: Option<Arc<Dispatcher>>,
    rejected: Arc<HashSet<String>>,
    /// Statement texts queued by events that no function holds yet.
    misses: Mutex<HashSet<String>>,
    /// The function failed where its statements did not, or its call failed.
    broken: AtomicBool,
}

/// How the flusher sends a run of queued statements.
pub(crate) enum Step {
    /// Pipelined, one statement at a time on the wire.
    Pipeline(Range<usize>),
    /// In one call of the function.
    Call(Range<usize>),
}

impl BatchDispatch {
    /// How to send `queued`: `None` when it holds a statement no function knows yet (it is
    /// then pipelined whole, and the statement noted for the next function).
    pub(crate) fn plan(&self, queued: &[Queued]) -> Option<Vec<Step>> {
        let mut runs: Vec<(bool, Range<usize>)> = Vec::new();
        let mut missing = false;
        for (i, q) in queued.iter().enumerate() {
            let callable = match (&q.sql, q.origin) {
                (Sql::Prepared(sql, params), Origin::Event(_)) => {
                    let known = self.current.as_ref().and_then(|d| {
                        d.index
                            .get(sql.as_ref())
                            .and_then(|&k| d.statements.get(k))
                            .map(|k| k.types.len() == params.len())
                    });
                    match known {
                        Some(fits) => fits,
                        None => {
                            if !self.rejected.contains(sql.as_ref()) {
                                missing = true;
                                let mut m = self.misses.lock().unwrap_or_else(|p| p.into_inner());
                                if !m.contains(sql.as_ref()) {
                                    m.insert(sql.to_string());
                                }
                            }
                            false
                        }
                    }
                }
                _ => false,
            };
            match runs.last_mut() {
                Some((c, r)) if *c == callable => r.end = i + 1,
                _ => runs.push((callable, i..i + 1)),
            }
        }
        if missing || self.current.is_none() {
            return None;
        }
        let mut steps: Vec<Step> = Vec::new();
        for (callable, r) in runs {
            if callable && r.len() >= MIN_RUN {
                steps.push(Step::Call(r));
            } else if let Some(Step::Pipeline(last)) = steps.last_mut() {
                last.end = r.end;
            } else {
                steps.push(Step::Pipeline(r));
            }
        }
        Some(steps)
    }

    pub(crate) fn dispatcher(&self) -> Option<&Dispatcher> {
        self.current.as_deref()
    }

    pub(crate) fn set_broken(&self) {
        self.broken.store(true, Ordering::Relaxed);
    }

    fn take_misses(&self) -> Vec<String> {
        let mut m = self.misses.lock().unwrap_or_else(|p| p.into_inner());
        let mut v: Vec<String> = m.drain().collect();
        v.sort();
        v
    }
}

/// Why a call did not run: a value does not encode (nothing was sent: pipeline the
/// statements instead, which reports it for its event), or the call failed.
pub(crate) enum CallError {
    Encode,
    Call(tokio_postgres::Error),
}

/// A typed array argument, already encoded (PostgreSQL's binary array format).
#[derive(Debug)]
struct Encoded(BytesMut);

impl ToSql for Encoded {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut BytesMut,
    ) -> Result<IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        matches!(ty.kind(), Kind::Array(_))
    }

    postgres_types::to_sql_checked!();
}

/// One array argument being encoded: a one-dimensional array of `member`.
struct Column {
    buf: BytesMut,
    len: i32,
    nulls: bool,
}

impl Column {
    fn new(member: &Type) -> Self {
        let mut buf = BytesMut::with_capacity(256);
        buf.put_i32(1); // dimensions
        buf.put_i32(0); // has nulls, set at the end
        buf.put_u32(member.oid());
        buf.put_i32(0); // length, set at the end
        buf.put_i32(1); // lower bound
        Column {
            buf,
            len: 0,
            nulls: false,
        }
    }

    fn push(&mut self, value: &(dyn ToSql + Sync), member: &Type) -> Result<(), ()> {
        // A value sent in text format (the Python binding's) has no binary form for the array.
        if !matches!(value.encode_format(member), postgres_types::Format::Binary) {
            return Err(());
        }
        let at = self.buf.len();
        self.buf.put_i32(0);
        match value.to_sql_checked(member, &mut self.buf) {
            Ok(IsNull::No) => {
                let n = i32::try_from(self.buf.len() - at - 4).map_err(|_| ())?;
                self.buf[at..at + 4].copy_from_slice(&n.to_be_bytes());
            }
            Ok(IsNull::Yes) => {
                self.buf.truncate(at + 4);
                self.buf[at..at + 4].copy_from_slice(&(-1_i32).to_be_bytes());
                self.nulls = true;
            }
            Err(_) => return Err(()),
        }
        self.len += 1;
        Ok(())
    }

    fn finish(mut self) -> Encoded {
        self.buf[4..8].copy_from_slice(&i32::from(self.nulls).to_be_bytes());
        self.buf[12..16].copy_from_slice(&self.len.to_be_bytes());
        Encoded(self.buf)
    }
}

impl Dispatcher {
    /// Runs `queued` (statements this function holds) in one call inside `tx`: `Ok(None)`
    /// when every statement ran, `Ok(Some(k))` when the `k`-th (0-based) failed and the call's
    /// statements were undone.
    pub(crate) async fn call(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        queued: &[Queued],
    ) -> Result<Option<usize>, CallError> {
        let mut order: Vec<i32> = Vec::with_capacity(queued.len());
        let mut columns: Vec<Column> = self
            .statements
            .iter()
            .flat_map(|k| k.types.iter().map(Column::new))
            .collect();
        let offsets: Vec<usize> = self
            .statements
            .iter()
            .scan(0, |at, k| {
                let o = *at;
                *at += k.types.len();
                Some(o)
            })
            .collect();
        for q in queued {
            let Sql::Prepared(sql, params) = &q.sql else {
                return Err(CallError::Encode);
            };
            let Some(&k) = self.index.get(sql.as_ref()) else {
                return Err(CallError::Encode);
            };
            let (Some(known), Some(&offset)) = (self.statements.get(k), offsets.get(k)) else {
                return Err(CallError::Encode);
            };
            if known.types.len() != params.len() {
                return Err(CallError::Encode);
            }
            order.push(i32::try_from(k + 1).map_err(|_| CallError::Encode)?);
            for (j, (p, ty)) in params.iter().zip(&known.types).enumerate() {
                let column = columns.get_mut(offset + j).ok_or(CallError::Encode)?;
                column
                    .push(&**p as &(dyn ToSql + Sync), ty)
                    .map_err(|()| CallError::Encode)?;
            }
        }
        let encoded: Vec<Encoded> = columns.into_iter().map(Column::finish).collect();
        let mut args: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(encoded.len() + 1);
        args.push(&order);
        args.extend(encoded.iter().map(|e| e as &(dyn ToSql + Sync)));
        let st = tx.prepare_cached(&self.call).await.map_err(CallError::Call)?;
        let row = tx.query_one(&st, &args).await.map_err(CallError::Call)?;
        let failed: i32 = row.try_get(0).map_err(CallError::Call)?;
        Ok(usize::try_from(failed).ok().filter(|&k| k > 0).map(|k| k - 1))
    }
}

/// The words that keep a statement out of a function.
fn eligible(words: &[String]) -> bool {
    let verb = words
        .first()
        .is_some_and(|w| ["insert", "update", "delete", "merge"].contains(&w.as_str()));
    verb && !words.iter().any(|w| w == "returning")
}

/// The expression a placeholder becomes inside the function: element `counter` of argument
/// `arg` (1-based).
fn element(arg: usize, counter: usize) -> String {
    format!("(${arg}[projectionist_c{counter}])")
}

/// The function's source for `statements` (with their array types' names), and its name.
fn source(schema: &str, statements: &[(Known, Vec<String>)]) -> Option<(String, String, usize)> {
    let mut arrays = vec!["integer[]".to_owned()];
    let mut declare = String::new();
    let mut cases = String::new();
    for (s, (known, array_types)) in statements.iter().enumerate() {
        let first = arrays.len() + 1;
        let counter = s + 1;
        let n = known.types.len();
        let replaced = replace_positional(&known.sql, |p| {
            if p <= n {
                element(first + p - 1, counter)
            } else {
                // No such parameter: the pipeline rejects it the same way.
                "NULL".to_owned()
            }
        })?;
        arrays.extend(array_types.iter().cloned());
        declare.push_str(&format!("  projectionist_c{counter} integer := 0;\n"));
        cases.push_str(&format!(
            "      WHEN {counter} THEN\n        projectionist_c{counter} := projectionist_c{counter} + 1;\n        {}\n        ;\n",
            replaced.text
        ));
    }
    let body = format!(
        "DECLARE
  projectionist_i integer := 0;
  projectionist_n integer := coalesce(array_length($1, 1), 0);
{declare}BEGIN
  BEGIN
    WHILE projectionist_i < projectionist_n LOOP
      projectionist_i := projectionist_i + 1;
      CASE $1[projectionist_i]
{cases}      END CASE;
    END LOOP;
  EXCEPTION WHEN OTHERS THEN
    RETURN projectionist_i;
  END;
  RETURN 0;
END
"
    );
    let signature = arrays.join(", ");
    use md5::{Digest, Md5};
    let digest = format!("{:x}", Md5::digest(format!("{signature}\n{body}").as_bytes()));
    let name = format!("projectionist_typed_{}", &digest[..20]);
    let create = format!(
        "CREATE FUNCTION {}.{}({signature}) RETURNS integer LANGUAGE plpgsql AS {QUOTE}\n{body}{QUOTE}",
        quote(schema),
        quote(&name)
    );
    Some((name, create, arrays.len()))
}

impl Dispatchers {
    /// The commit's view of `projection`'s function; `None` when the projection no longer
    /// uses one.
    pub(crate) fn for_batch(&self, projection: &Arc<str>) -> Option<Arc<BatchDispatch>> {
        let map = self.by_projection.lock().unwrap_or_else(|p| p.into_inner());
        let entry = map.get(projection);
        if entry.is_some_and(|e| e.off) {
            return None;
        }
        Some(Arc::new(BatchDispatch {
            current: entry.and_then(|e| e.current.clone()),
            rejected: entry.map(|e| e.rejected.clone()).unwrap_or_default(),
            misses: Mutex::new(HashSet::new()),
            broken: AtomicBool::new(false),
        }))
    }

    /// After a commit: stops using the projection's function if it broke, or makes a new one
    /// holding the statements the batch queued that the current one does not (on `client`,
    /// outside the batch's transaction, which has ended).
    pub(crate) async fn learn(
        &self,
        client: &mut deadpool_postgres::Object,
        schema: &str,
        projection: &Arc<str>,
        batch: &BatchDispatch,
    ) {
        if batch.broken.load(Ordering::Relaxed) {
            tracing::warn!(
                projection = %projection,
                "the batch function of this projection failed where its statements did not; \
                 its batches are pipelined from now on in this process"
            );
            self.entry(projection, |e| {
                e.off = true;
                e.current = None;
            });
            return;
        }
        let misses = batch.take_misses();
        if misses.is_empty() {
            return;
        }
        match self.extend(client, schema, projection, batch, misses).await {
            Ok(()) => {}
            Err(e) => {
                // Retryable trouble (a lost connection): the statements are noted again by a
                // later batch. Anything else: stay pipelined.
                tracing::info!(projection = %projection, error = %e, "no batch function for this projection's statements");
                if !e.is_retryable() {
                    self.entry(projection, |e| e.off = true);
                }
            }
        }
    }

    fn entry(&self, projection: &Arc<str>, f: impl FnOnce(&mut Entry)) {
        let mut map = self.by_projection.lock().unwrap_or_else(|p| p.into_inner());
        f(map.entry(projection.clone()).or_default());
    }

    async fn extend(
        &self,
        client: &mut deadpool_postgres::Object,
        schema: &str,
        projection: &Arc<str>,
        batch: &BatchDispatch,
        misses: Vec<String>,
    ) -> Result<(), Error> {
        let op = "creating a batch function";
        let mut statements: Vec<Known> = batch
            .current
            .as_ref()
            .map(|d| d.statements.clone())
            .unwrap_or_default();
        let mut arguments: usize = 1 + statements.iter().map(|k| k.types.len()).sum::<usize>();
        let mut rejected: Vec<String> = Vec::new();
        for sql in misses {
            let fits = replace_positional(&sql, |_| String::new()).is_some_and(|p| eligible(&p.words))
                && !sql.contains(QUOTE);
            if !fits || statements.len() >= MAX_STATEMENTS {
                rejected.push(sql);
                continue;
            }
            let types = match client.prepare(&sql).await {
                Ok(st) => st.params().to_vec(),
                Err(e) if error::retryable(&e) => return Err(db(op, e)),
                Err(_) => {
                    rejected.push(sql);
                    continue;
                }
            };
            let scalar = types
                .iter()
                .all(|t| !matches!(t.kind(), Kind::Array(_) | Kind::Pseudo));
            if !scalar || arguments + types.len() > MAX_ARGUMENTS {
                rejected.push(sql);
                continue;
            }
            arguments += types.len();
            statements.push(Known { sql, types });
        }
        if !rejected.is_empty() {
            self.entry(projection, |e| {
                let mut r = (*e.rejected).clone();
                r.extend(rejected);
                e.rejected = Arc::new(r);
            });
        }
        if statements.len() == batch.current.as_ref().map_or(0, |d| d.statements.len()) {
            return Ok(());
        }
        // Each parameter type's array type, by name.
        let mut arrays: HashMap<u32, Option<String>> = HashMap::new();
        for k in &statements {
            for t in &k.types {
                if arrays.contains_key(&t.oid()) {
                    continue;
                }
                let row = client
                    .query_opt(
                        "SELECT format_type(typarray, NULL) FROM pg_type WHERE oid = $1 AND typarray <> 0",
                        &[&t.oid()],
                    )
                    .await
                    .map_err(|e| db(op, e))?;
                let name: Option<String> = match row {
                    Some(r) => r.try_get(0).map_err(|e| db(op, e))?,
                    None => None,
                };
                arrays.insert(t.oid(), name);
            }
        }
        let (usable, without): (Vec<Known>, Vec<Known>) = statements.into_iter().partition(|k| {
            k.types
                .iter()
                .all(|t| arrays.get(&t.oid()).is_some_and(Option::is_some))
        });
        if !without.is_empty() {
            self.entry(projection, |e| {
                let mut r = (*e.rejected).clone();
                r.extend(without.into_iter().map(|k| k.sql));
                e.rejected = Arc::new(r);
            });
        }
        let with_arrays: Vec<(Known, Vec<String>)> = usable
            .into_iter()
            .map(|k| {
                let names = k
                    .types
                    .iter()
                    .filter_map(|t| arrays.get(&t.oid()).cloned().flatten())
                    .collect();
                (k, names)
            })
            .collect();
        if with_arrays.is_empty() {
            return Ok(());
        }
        let Some((name, create, args)) = source(schema, &with_arrays) else {
            return Err(Error::Internal(
                "a batch function's statement did not lex twice the same".into(),
            ));
        };
        if let Err(e) = create_once(client, schema, &name, &create, op).await? {
            return Err(db(op, e));
        }
        let placeholders: Vec<String> = (1..=args).map(|i| format!("${i}")).collect();
        let call = format!(
            "SELECT {}.{}({})",
            quote(schema),
            quote(&name),
            placeholders.join(", ")
        );
        let statements: Vec<Known> = with_arrays.into_iter().map(|(k, _)| k).collect();
        let index = statements
            .iter()
            .enumerate()
            .map(|(i, k)| (k.sql.clone(), i))
            .collect();
        let made = Arc::new(Dispatcher {
            call,
            index,
            statements,
        });
        tracing::debug!(projection = %projection, function = %name, "batches run in one call of a generated function");
        self.entry(projection, |e| e.current = Some(made));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_become_array_elements_and_quotes_stay() {
        let p = replace_positional(
            "UPDATE t SET a = $2, b = '$1', c = a$1 WHERE id = $1::text -- $3\n;",
            |n| element(n + 1, 4),
        )
        .expect("lexes");
        assert_eq!(
            p.text,
            "UPDATE t SET a = ($3[projectionist_c4]), b = '$1', c = a$1 WHERE id = ($2[projectionist_c4])::text -- $3"
        );
        assert!(eligible(&p.words));
    }

    #[test]
    fn only_plain_writes_are_eligible() {
        let words = |s: &str| replace_positional(s, |_| String::new()).map(|p| p.words);
        assert!(words("INSERT INTO t VALUES ($1)").is_some_and(|w| eligible(&w)));
        assert!(words("insert into t values ($1) returning id").is_some_and(|w| !eligible(&w)));
        assert!(words("SELECT pg_notify($1, '')").is_some_and(|w| !eligible(&w)));
        assert!(words("WITH x AS (SELECT 1) DELETE FROM t").is_some_and(|w| !eligible(&w)));
        assert_eq!(words("DELETE FROM t; DELETE FROM u"), None);
        assert_eq!(words("UPDATE t SET a = $$x$$"), None);
    }
}
