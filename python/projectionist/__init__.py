"""Projectionist for Python: projections written as Python handlers, run on Projectionist's
engine with its guarantees (exactly-once effect, no skipped events, error policies and dead
letters, resumable rebuilds, inline projections, wait-for, partitions).

    store = Store.open("sqlite:///app.db")
    orders = Projection("orders", error_policy="dead_letter")

    @orders.setup
    def create(tx):
        tx.execute_script("CREATE TABLE IF NOT EXISTS orders (id TEXT PRIMARY KEY, total BIGINT)")

    @orders.on("OrderCreated")
    def created(tx, event):
        tx.execute("INSERT INTO orders (id, total) VALUES (:id, 0)", id=event.stream_id)

    engine = Engine(store, [orders])
    engine.catch_up()

A handler gets `(tx, event)`: what it does through `tx` happens in the batch's transaction,
exactly once per event. Anything else it does (an HTTP call, a message) is at-least-once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import signal
import threading
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Type, TypeVar, Union

from . import _projectionist
from ._projectionist import (
    BrokerError,
    ConfigError,
    ConflictError,
    DatabaseError,
    DecodeError,
    DuplicateEventError,
    Event,
    InlineProjectionError,
    InternalError,
    InvalidInputError,
    IoError,
    LifecycleError,
    ProjectionistError,
    RebuildFailedError,
    RetryFailedError,
    ShutdownError,
    StatementError,
    Token,
    Tx,
    TxClosedError,
    UnknownDeadLetterError,
    UnknownProjectionError,
    UnsupportedError,
    WaitTimeoutError,
)

__all__ = [
    "Store", "Engine", "Projection", "Event", "Tx", "Token", "EventTypeRegistry", "NewEvent",
    "ProjectionistError", "ConflictError", "DuplicateEventError", "UnknownProjectionError",
    "UnknownDeadLetterError", "LifecycleError", "RebuildFailedError", "InlineProjectionError",
    "RetryFailedError", "WaitTimeoutError", "InvalidInputError", "ConfigError", "UnsupportedError",
    "DatabaseError", "BrokerError", "IoError", "InternalError", "ShutdownError", "StatementError",
    "TxClosedError", "DecodeError",
]

ERROR_POLICIES = ("skip", "retry", "dead_letter", "retry_then_dead_letter", "stop")

T = TypeVar("T")
Handler = Callable[[Tx, Event], Any]


class EventTypeRegistry:
    """Maps event classes to type names and back, as seed 004's `EventTypeRegistry` does.

    A class's type name is what it was registered under, else its `event_type` class attribute,
    else its class name."""

    def __init__(self) -> None:
        self._by_class: Dict[type, str] = {}
        self._by_name: Dict[str, type] = {}

    def register(self, cls: Optional[type] = None, *, name: Optional[str] = None) -> Any:
        def add(c: type) -> type:
            n = name or _class_type_name(c)
            self._by_class[c] = n
            self._by_name[n] = c
            return c

        return add(cls) if cls is not None else add

    def type_name(self, cls: type) -> str:
        return self._by_class.get(cls) or _class_type_name(cls)

    def class_of(self, name: str) -> Optional[type]:
        return self._by_name.get(name)


DEFAULT_REGISTRY = EventTypeRegistry()


def _class_type_name(cls: type) -> str:
    name = getattr(cls, "event_type", None)
    return name if isinstance(name, str) and name else cls.__name__


def _is_model(obj: Any) -> bool:
    return hasattr(obj, "model_dump") and hasattr(type(obj), "model_validate")


def _payload(obj: Any) -> Any:
    if isinstance(obj, dict):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if _is_model(obj):
        return obj.model_dump(mode="json")
    raise InvalidInputError(
        f"cannot use a {type(obj).__name__} as an event payload: pass a dict, a dataclass instance or a pydantic model"
    )


class NewEvent:
    """An event to append: a type name and a payload (a dict, a dataclass or a pydantic model),
    with optional metadata and event id (a UUID string; set it to make an append idempotent)."""

    __slots__ = ("event_type", "data", "metadata", "event_id")

    def __init__(self, event_type: str, data: Any, metadata: Optional[dict] = None, event_id: Optional[str] = None):
        self.event_type = event_type
        self.data = data
        self.metadata = metadata
        self.event_id = event_id


EventLike = Union[NewEvent, Tuple[str, Any], Any]


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def _event_tuple(e: EventLike, registry: EventTypeRegistry) -> Tuple[str, str, Optional[str], Optional[str]]:
    if isinstance(e, NewEvent):
        meta = None if e.metadata is None else _dumps(e.metadata)
        return (e.event_type, _dumps(_payload(e.data)), meta, e.event_id)
    if isinstance(e, tuple) and len(e) == 2 and isinstance(e[0], str):
        return (e[0], _dumps(_payload(e[1])), None, None)
    if isinstance(e, (str, bytes, dict)):
        raise InvalidInputError(
            "an event is a NewEvent, a (type, data) tuple, or a dataclass / pydantic instance whose class names its type"
        )
    return (registry.type_name(type(e)), _dumps(_payload(e)), None, None)


def _events(events: Union[EventLike, Sequence[EventLike]], registry: EventTypeRegistry) -> list:
    if isinstance(events, (NewEvent, tuple)) or dataclasses.is_dataclass(events) or _is_model(events):
        events = [events]
    return [_event_tuple(e, registry) for e in events]


def _decoder(cls: type) -> Callable[[Any], Any]:
    if hasattr(cls, "model_validate"):
        return cls.model_validate
    if dataclasses.is_dataclass(cls):
        names = {f.name for f in dataclasses.fields(cls)}

        def decode(data: Any) -> Any:
            if not isinstance(data, dict):
                raise TypeError(f"expected a JSON object, got {type(data).__name__}")
            return cls(**{k: v for k, v in data.items() if k in names})

        return decode
    raise ConfigError(f"@on({cls.__name__}): a class handler needs a dataclass or a pydantic model")


class Projection:
    """A projection: a name, handlers registered with decorators, and options.

    - `error_policy`: "skip", "retry", "dead_letter", "retry_then_dead_letter" (the default),
      "stop", or a callable `(failure) -> "skip" | "dead_letter" | "stop" | "retry" |
      ("retry", seconds)` where `failure` has `projection`, `event`, `error` and `attempt`;
    - `max_retries` (for the retry policies), `priority`;
    - `batch_size`: events per batch and transaction; unset, the store's default (1,000 on
      PostgreSQL, 5,000 on SQLite);
    - `partitions` (PostgreSQL: runners share them through leases);
    - `inline`: `Engine.append` applies it in the append's own transaction."""

    def __init__(
        self,
        name: str,
        *,
        error_policy: Union[str, Callable[[dict], Any]] = "retry_then_dead_letter",
        max_retries: int = 3,
        batch_size: Optional[int] = None,
        priority: int = 0,
        partitions: int = 1,
        inline: bool = False,
        rebuild_fail_fast: bool = True,
        registry: Optional[EventTypeRegistry] = None,
    ) -> None:
        if not callable(error_policy) and error_policy not in ERROR_POLICIES:
            raise ConfigError(
                f"projection {name}: unknown error policy {error_policy!r}; use one of {', '.join(ERROR_POLICIES)} or a callable"
            )
        self.name = name
        self.error_policy = error_policy
        self.max_retries = max_retries
        self.batch_size = batch_size
        self.priority = priority
        self.partitions = partitions
        self.inline = inline
        self.rebuild_fail_fast = rebuild_fail_fast
        self.registry = registry or DEFAULT_REGISTRY
        self.handlers: Dict[str, List[Handler]] = {}
        self.setup_functions: List[Callable[[Tx], Any]] = []
        self.reset_functions: List[Callable[[Tx], Any]] = []

    def on(self, event_type: Union[str, type]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Registers a handler `(tx, event)` for an event type, given by name or by class (a
        dataclass or pydantic model): then `event.data` is an instance of it, and a payload that
        does not decode goes through the error policy."""

        def register(f: Callable[..., Any]) -> Callable[..., Any]:
            if isinstance(event_type, str):
                self.handlers.setdefault(event_type, []).append(f)
                return f
            decode = _decoder(event_type)
            cls_name = event_type.__name__

            def typed(tx: Tx, event: Event) -> Any:
                try:
                    obj = decode(event.data)
                except Exception as e:
                    raise DecodeError(f"{event.event_type} does not decode into {cls_name}: {e}") from e
                return f(tx, event.with_data(obj))

            typed.__name__ = getattr(f, "__name__", "handler")
            typed.__qualname__ = getattr(f, "__qualname__", typed.__name__)
            self.handlers.setdefault(self.registry.type_name(event_type), []).append(typed)
            return f

        return register

    def setup(self, f: Callable[[Tx], Any]) -> Callable[[Tx], Any]:
        """Registers a function `(tx)` that creates the read model's tables; it runs at every
        start, so it must be idempotent (CREATE TABLE IF NOT EXISTS)."""
        self.setup_functions.append(f)
        return f

    def reset(self, f: Callable[[Tx], Any]) -> Callable[[Tx], Any]:
        """Registers a function `(tx)` that empties the read model for a rebuild (seed 004's
        `on_drop`). A rebuild refuses to run without one."""
        self.reset_functions.append(f)
        return f

    def __repr__(self) -> str:
        return f"Projection({self.name!r}, types={sorted(self.handlers)})"


class Store:
    """An event store and its read models: `sqlite:///path` (or a bare path) or
    `postgresql://user@host/db[?schema=NAME]`, the same URLs as the CLI."""

    def __init__(self, inner: _projectionist.Store, registry: Optional[EventTypeRegistry] = None) -> None:
        self._inner = inner
        self.registry = registry or DEFAULT_REGISTRY

    @classmethod
    def open(cls, url: str, *, registry: Optional[EventTypeRegistry] = None) -> "Store":
        return cls(_projectionist.Store.open(str(url)), registry)

    @property
    def dialect(self) -> str:
        return self._inner.dialect

    def append(self, stream_id: str, events: Union[EventLike, Sequence[EventLike]], expected_version: Optional[int] = None) -> Token:
        """Appends to one stream; `expected_version` (0: the stream must not exist) raises
        `ConflictError` (with `stream`, `expected`, `actual`) when it does not match. Inline
        projections are not applied: use `Engine.append` for those."""
        return self._inner.append(stream_id, _events(events, self.registry), expected_version)

    def append_many(self, appends: Iterable[Tuple[str, Sequence[EventLike], Optional[int]]]) -> List[Token]:
        """Appends to several streams in one transaction: `(stream_id, events, expected_version)`."""
        return self._inner.append_many([(s, x, _events(ev, self.registry)) for s, ev, x in appends])

    def import_(self, appends: Iterable[Tuple[str, Sequence[EventLike], Optional[int]]]) -> int:
        """Imports an iterable of `(stream_id, events, expected_version)` in one transaction:
        all or nothing. Returns the number of events."""
        return self._inner.import_((s, x, _events(ev, self.registry)) for s, ev, x in appends)

    # `import` is a keyword; `store.import_` is the spelling, this the alias.
    locals()["import"] = import_

    def head(self) -> int:
        return self._inner.head()

    def query(self, sql: str) -> Tuple[List[str], List[List[str]]]:
        """Runs a read-only query on the read models, outside any batch: (columns, rows as text)."""
        return self._inner.query_text(sql)


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


class Engine:
    """A store's projections, run by Projectionist's engine."""

    def __init__(self, store: Store, projections: Sequence[Projection]) -> None:
        self.store = store
        self.projections = list(projections)
        self._inner = _projectionist.Engine(store._inner, self.projections)

    def catch_up(self, progress: Optional[Callable[[dict], Any]] = None) -> List[dict]:
        """Runs every projection up to the head, then returns a report per projection."""
        return self._inner.catch_up(progress)

    def run(self) -> List[dict]:
        """Follows the log live until `stop()`, Ctrl-C (SIGINT) or SIGTERM; each batch is
        committed whole or not at all. Returns normally on a signal."""
        previous = None
        on_main = threading.current_thread() is threading.main_thread()
        if on_main:
            previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return self._inner.run()
        finally:
            if on_main and previous is not None:
                signal.signal(signal.SIGTERM, previous)

    def stop(self) -> None:
        """Makes a running `run()` (in another thread or task) stop after its current batches."""
        self._inner.stop()

    async def run_async(self) -> List[dict]:
        """`run()` for asyncio: runs in a worker thread; cancelling the task stops it cleanly."""
        loop = asyncio.get_running_loop()
        task = loop.run_in_executor(None, self._inner.run)
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            self._inner.stop()
            await task
            raise

    async def catch_up_async(self, progress: Optional[Callable[[dict], Any]] = None) -> List[dict]:
        return await asyncio.get_running_loop().run_in_executor(None, self._inner.catch_up, progress)

    def rebuild(self, name: str, progress: Optional[Callable[[dict], Any]] = None, blue_green: bool = False) -> dict:
        """Resets the projection and replays it from the start (resuming an interrupted
        rebuild); with `blue_green=True`, builds it in a shadow and swaps it in."""
        return self._inner.rebuild(name, progress, blue_green)

    def wait_for(self, name: str, token: Union[Token, str, int], timeout: float = 5.0) -> float:
        """Waits until `name` has applied `token`; raises `WaitTimeoutError` after `timeout` s."""
        return self._inner.wait_for(name, token, timeout)

    def status(self) -> List[dict]:
        return self._inner.status()

    def pause(self, name: str) -> None:
        self._inner.pause(name)

    def resume(self, name: str) -> None:
        self._inner.resume(name)

    def dead_letters(self, projection: Optional[str] = None) -> List[dict]:
        return self._inner.dead_letters(projection)

    def retry_dead_letter(self, id: int) -> None:
        self._inner.retry_dead_letter(id)

    def discard_dead_letter(self, id: int) -> None:
        self._inner.discard_dead_letter(id)

    def append(self, stream_id: str, events: Union[EventLike, Sequence[EventLike]], expected_version: Optional[int] = None) -> Token:
        """Appends and applies every inline projection in the same transaction: when it
        returns, inline read models show the events; a failing inline handler raises
        `InlineProjectionError` and nothing is written."""
        return self._inner.append(stream_id, _events(events, self.store.registry), expected_version)

    def append_many(self, appends: Iterable[Tuple[str, Sequence[EventLike], Optional[int]]]) -> List[Token]:
        return self._inner.append_many([(s, x, _events(ev, self.store.registry)) for s, ev, x in appends])
