//! Projections: a name, options, and a body that applies events inside a store's transaction.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::error::{BatchFailure, HandlerError};
use super::event::{Event, Upcasters};
use super::policy::{ErrorHandler, ErrorPolicy, Policy};

/// A projection body: what a projection does to its read model, given a store context `C`
/// (for SQLite, the connection that holds the open transaction).
///
/// [`Handlers`] is the per-event implementation; document and declarative-SQL projections are
/// others. Every method runs inside the transaction that also moves the checkpoint.
pub trait Apply<C: ?Sized>: Send + Sync + 'static {
    /// The event types this body handles, so that sources can filter before decoding.
    /// `None` means every type.
    fn event_types(&self) -> Option<Vec<String>>;

    /// Creates the read model's tables. Must be idempotent.
    fn setup(&self, cx: &C) -> Result<(), HandlerError>;

    /// Empties the read model, for a rebuild.
    fn reset(&self, cx: &C) -> Result<(), HandlerError>;

    /// Applies `events` in order. On failure, says which event failed; the store rolls the
    /// whole batch back, and the runner re-applies the events before it.
    fn apply(&self, cx: &C, events: &[Event]) -> Result<Applied, BatchFailure>;

    /// The rows `apply` will read for `events`, so that a store whose context cannot read
    /// synchronously (PostgreSQL queues statements) can load them first, in the batch's
    /// transaction, and hand them to the context. Default: none.
    fn prefetch(&self, events: &[Event]) -> Vec<Prefetch> {
        let _ = events;
        Vec::new()
    }

    /// Whether `apply` must see the whole batch in one call (a fold by key does; per-event
    /// handlers do not, and a store may then call it event by event). Default: `false`.
    fn batch_wide(&self) -> bool {
        false
    }

    /// Whether `apply` may query its context (read rows back) beyond its `prefetch`. A store
    /// whose context reads through a hand-over to another thread (PostgreSQL) runs a body that
    /// says `false` in place, without one; a query from it then fails. Default: `true`.
    fn reads(&self) -> bool {
        true
    }

    /// Runs `run`, in which the store calls `apply` (possibly once per event) on the current
    /// thread, for one batch. A body may set up per-thread state once for all those calls
    /// (the Python body keeps the interpreter's thread state for the whole batch instead of
    /// making one per event). Default: runs it.
    fn around(&self, run: &mut dyn FnMut()) {
        run()
    }

    /// The body as declarative SQL statements per event type, when it is exactly that, so
    /// that a store may run them its own way (PostgreSQL: a batch in one call of a function
    /// generated from them). Default: `None`.
    fn declarative(&self) -> Option<&crate::declarative::SqlBody> {
        None
    }
}

/// Rows of `table` whose `key_column` is one of `keys`, to load before a batch is applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Prefetch {
    pub table: String,
    pub key_column: String,
    pub keys: Vec<String>,
}

/// What applying a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Events that reached a handler.
    pub handled: u64,
    /// Events of types with no handler: ignored and counted.
    pub ignored: u64,
}

impl Applied {
    pub fn add(&mut self, other: Applied) {
        self.handled += other.handled;
        self.ignored += other.ignored;
    }
}

type HandlerFn<C> = dyn Fn(&C, &Event, &Upcasters) -> Result<(), HandlerError> + Send + Sync;
type LifecycleFn<C> = dyn Fn(&C) -> Result<(), HandlerError> + Send + Sync;

/// Typed per-event handlers over a store context `C`.
///
/// ```ignore
/// let body = Handlers::<rusqlite::Connection>::new()
///     .setup(|db| { db.execute_batch("CREATE TABLE IF NOT EXISTS …")?; Ok(()) })
///     .on("OrderCreated", |db, ev, e: OrderCreated| { db.execute("INSERT …", (…))?; Ok(()) });
/// ```
pub struct Handlers<C: ?Sized> {
    by_type: HashMap<String, Vec<Box<HandlerFn<C>>>>,
    upcasters: Upcasters,
    setup: Vec<Box<LifecycleFn<C>>>,
    reset: Vec<Box<LifecycleFn<C>>>,
}

impl<C: ?Sized> Default for Handlers<C> {
    fn default() -> Self {
        Handlers {
            by_type: HashMap::new(),
            upcasters: Upcasters::default(),
            setup: Vec::new(),
            reset: Vec::new(),
        }
    }
}

impl<C: ?Sized> fmt::Debug for Handlers<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut types: Vec<_> = self.by_type.keys().collect();
        types.sort();
        f.debug_struct("Handlers")
            .field("types", &types)
            .field("upcasters", &self.upcasters)
            .finish()
    }
}

impl<C: ?Sized + 'static> Handlers<C> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles `event_type`, decoding its payload into `T` (after upcasting). Several handlers
    /// may share a type; they run in registration order.
    pub fn on<T, F>(mut self, event_type: impl Into<String>, handler: F) -> Self
    where
        T: DeserializeOwned + 'static,
        F: Fn(&C, &Event, T) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.by_type.entry(event_type.into()).or_default().push(Box::new(
            move |cx: &C, ev: &Event, up: &Upcasters| {
                let payload: T = up.decode(ev)?;
                handler(cx, ev, payload)
            },
        ));
        self
    }

    /// Handles `event_type` with the raw JSON payload (after upcasting).
    pub fn on_json<F>(self, event_type: impl Into<String>, handler: F) -> Self
    where
        F: Fn(&C, &Event, Value) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.on::<Value, F>(event_type, handler)
    }

    /// Runs when the projection is set up: create its tables (idempotently).
    pub fn setup<F>(mut self, f: F) -> Self
    where
        F: Fn(&C) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.setup.push(Box::new(f));
        self
    }

    /// Runs when the projection is reset for a rebuild: empty its tables.
    pub fn reset<F>(mut self, f: F) -> Self
    where
        F: Fn(&C) -> Result<(), HandlerError> + Send + Sync + 'static,
    {
        self.reset.push(Box::new(f));
        self
    }

    /// Transforms the raw payload of `event_type` before decoding (schema evolution).
    pub fn upcast<F>(mut self, event_type: impl Into<String>, f: F) -> Self
    where
        F: Fn(Value) -> Result<Value, HandlerError> + Send + Sync + 'static,
    {
        self.upcasters.add(event_type, f);
        self
    }

    /// Delivers events recorded as `old` to the handlers of `new`.
    pub fn rename(mut self, old: impl Into<String>, new: impl Into<String>) -> Self {
        self.upcasters.rename(old, new);
        self
    }

    /// Runs the handlers of one event. Returns `false` when no handler takes its type.
    pub fn dispatch(&self, cx: &C, event: &Event) -> Result<bool, HandlerError> {
        match self.by_type.get(self.upcasters.resolve(&event.event_type)) {
            None => Ok(false),
            Some(handlers) => {
                for h in handlers {
                    h(cx, event, &self.upcasters)?;
                }
                Ok(true)
            }
        }
    }
}

impl<C: ?Sized + 'static> Apply<C> for Handlers<C> {
    fn event_types(&self) -> Option<Vec<String>> {
        let mut types: Vec<String> = self
            .by_type
            .keys()
            .flat_map(|t| self.upcasters.aliases_of(t).map(str::to_owned))
            .collect();
        types.sort();
        types.dedup();
        Some(types)
    }

    fn setup(&self, cx: &C) -> Result<(), HandlerError> {
        self.setup.iter().try_for_each(|f| f(cx))
    }

    fn reset(&self, cx: &C) -> Result<(), HandlerError> {
        if self.reset.is_empty() {
            return Err(HandlerError::msg(
                "this projection has no reset step, so a rebuild cannot empty its read model; \
                 register one with Handlers::reset",
            ));
        }
        self.reset.iter().try_for_each(|f| f(cx))
    }

    fn apply(&self, cx: &C, events: &[Event]) -> Result<Applied, BatchFailure> {
        let mut applied = Applied::default();
        for (index, event) in events.iter().enumerate() {
            match self.dispatch(cx, event) {
                Ok(true) => applied.handled += 1,
                Ok(false) => applied.ignored += 1,
                Err(error) => return Err(BatchFailure { index, error }),
            }
        }
        Ok(applied)
    }
}

/// Events per batch of a per-event body, measured with `projectionist bench`: per-event
/// statements cost the same at any batch size beyond this, and smaller batches keep
/// transactions and live latency short.
pub const DEFAULT_BATCH_SIZE: usize = 1000;

/// Events per batch of a batch-wide body (a fold by key): each batch costs one load and one
/// bulk write of every document it touched, so larger batches fold more events per document
/// and rewrite fewer documents still open from the batch before. Measured with `projectionist
/// bench` at 1,000,000 events (BENCHMARKS.md): against batches of 10,000, 30,000 gave 1.57x
/// the document rebuild's throughput on PostgreSQL and 1.20x on SQLite, for 46 and 21 MiB more
/// peak memory; 60,000 gained little more (1.05x on PostgreSQL) for almost twice the memory.
pub const DEFAULT_BATCH_WIDE_SIZE: usize = 30_000;

/// How a projection runs.
#[derive(Clone, Debug)]
pub struct ProjectionOptions {
    /// Events per batch (one transaction each).
    pub batch_size: usize,
    /// `batch_size` is the style's default, not set by the user: a per-event projection then
    /// takes its store's default instead
    /// ([`RunnerSettings::per_event_batch_size`](super::runner::RunnerSettings)).
    pub batch_size_is_default: bool,
    /// Higher priority backlogs are served first.
    pub priority: i32,
    /// What happens to an event whose handler fails.
    pub policy: Policy,
    /// Rebuilds stop at the first failing event instead of applying the policy.
    pub rebuild_fail_fast: bool,
    /// Applied inside the append transaction by the engine's `append` (read-your-writes),
    /// as well as by runners for events appended elsewhere.
    pub inline: bool,
    /// Partitions (1: not partitioned). A partitioned projection splits the streams by
    /// [`partition_of`](super::partition::partition_of); each partition has its own checkpoint,
    /// and `run` processes share the partitions through leases (PostgreSQL).
    pub partitions: u32,
}

impl ProjectionOptions {
    /// The events per batch a runner reads: `batch_size`, or `per_event_default` (the store's)
    /// when `batch_size` is the per-event style's default.
    pub fn effective_batch_size(&self, per_event_default: usize) -> usize {
        if self.batch_size_is_default && self.batch_size == DEFAULT_BATCH_SIZE {
            per_event_default.max(1)
        } else {
            self.batch_size
        }
    }
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch_size: DEFAULT_BATCH_SIZE,
            batch_size_is_default: true,
            priority: 0,
            policy: Policy::default(),
            rebuild_fail_fast: true,
            inline: false,
            partitions: 1,
        }
    }
}

/// A named projection over a store whose bodies are `B` (for SQLite, `dyn Apply<Connection>`).
pub struct Projection<B: ?Sized> {
    name: Arc<str>,
    options: ProjectionOptions,
    event_types: Option<Arc<[String]>>,
    body: Arc<B>,
}

impl<B: ?Sized> Clone for Projection<B> {
    fn clone(&self) -> Self {
        Projection {
            name: self.name.clone(),
            options: self.options.clone(),
            event_types: self.event_types.clone(),
            body: self.body.clone(),
        }
    }
}

impl<B: ?Sized> fmt::Debug for Projection<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Projection")
            .field("name", &self.name)
            .field("options", &self.options)
            .field("event_types", &self.event_types)
            .finish()
    }
}

impl<C: ?Sized + 'static> Projection<dyn Apply<C>> {
    /// A projection named `name` whose body is `body`.
    pub fn new<A: Apply<C>>(name: impl Into<String>, body: A) -> Self {
        let event_types = body.event_types().map(Arc::from);
        let mut options = ProjectionOptions::default();
        if body.batch_wide() {
            options.batch_size = DEFAULT_BATCH_WIDE_SIZE;
        }
        Projection {
            name: Arc::from(name.into()),
            options,
            event_types,
            body: Arc::new(body),
        }
    }
}

impl<B: ?Sized> Projection<B> {
    /// A projection from an already shared body and its handled types.
    pub fn from_parts(name: impl Into<String>, body: Arc<B>, event_types: Option<Vec<String>>) -> Self {
        Projection {
            name: Arc::from(name.into()),
            options: ProjectionOptions::default(),
            event_types: event_types.map(Arc::from),
            body,
        }
    }

    /// The same projection (name, options, handled types) over another body: `body` must
    /// apply the same read model, as an adapter of this projection's body does.
    pub fn with_body<B2: ?Sized>(&self, body: Arc<B2>) -> Projection<B2> {
        Projection {
            name: self.name.clone(),
            options: self.options.clone(),
            event_types: self.event_types.clone(),
            body,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name.clone()
    }

    pub fn options(&self) -> &ProjectionOptions {
        &self.options
    }

    pub fn body(&self) -> &Arc<B> {
        &self.body
    }

    /// The handled event types (`None`: all).
    pub fn event_types(&self) -> Option<&[String]> {
        self.event_types.as_deref()
    }

    /// Events per batch (one transaction each). Unset, a per-event projection reads its
    /// store's default (1,000; 5,000 on SQLite) and a document projection 30,000.
    pub fn batch_size(mut self, n: usize) -> Self {
        self.options.batch_size = n.max(1);
        self.options.batch_size_is_default = false;
        self
    }

    pub fn priority(mut self, p: i32) -> Self {
        self.options.priority = p;
        self
    }

    pub fn error_policy(mut self, policy: ErrorPolicy) -> Self {
        self.options.policy = Policy::Builtin(policy);
        self
    }

    /// A custom error policy.
    pub fn error_handler(mut self, handler: impl ErrorHandler) -> Self {
        self.options.policy = Policy::Custom(Arc::new(handler));
        self
    }

    /// Whether a rebuild stops at the first failing event (the default) or applies the policy.
    pub fn rebuild_fail_fast(mut self, yes: bool) -> Self {
        self.options.rebuild_fail_fast = yes;
        self
    }

    /// Marks the projection inline: the engine's `append` applies it in the append's own
    /// transaction, so the writer reads its own write as soon as the append returns. Only
    /// where the events and the read model share a database.
    pub fn inline(mut self, yes: bool) -> Self {
        self.options.inline = yes;
        self
    }

    /// Splits the projection into `n` partitions (1 to
    /// [`MAX_PARTITIONS`](super::partition::MAX_PARTITIONS)), each with its own checkpoint,
    /// shared by every `run` process through leases. Needs PostgreSQL.
    pub fn partitions(mut self, n: u32) -> Self {
        self.options.partitions = n.clamp(1, super::partition::MAX_PARTITIONS);
        self
    }

    /// Whether the projection is split into partitions.
    pub fn is_partitioned(&self) -> bool {
        self.options.partitions > 1
    }

    pub fn with_options(mut self, options: ProjectionOptions) -> Self {
        self.options = options;
        self
    }
}
