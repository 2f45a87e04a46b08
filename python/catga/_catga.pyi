"""The native core of catga (Rust, PyO3). Private: import the public names from `catga`.

`catga._pure` implements exactly this interface in Python; `catga._core` picks one of the two.
"""

from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, Final, final

from typing_extensions import disjoint_base

__version__: Final[str]

CURRENT_MESSAGE: Final[ContextVar[object | None]]
"""The message whose handler is running, set by every pipeline that has behaviours."""

DEFAULT_EPOCH_MS: Final[int]
"""2024-01-01T00:00:00Z in Unix milliseconds, the default epoch of message ids."""

@final
class IdParts:
    """The fields of a message id, see `IdGenerator.parse`."""

    @property
    def timestamp_ms(self) -> int:
        """Unix milliseconds at which the id was made."""
    @property
    def worker_id(self) -> int:
        """The worker id of the process that made the id."""
    @property
    def sequence(self) -> int:
        """The sequence number within the millisecond."""
    @property
    def datetime(self) -> datetime:
        """`timestamp_ms` as a timezone-aware UTC datetime."""

@final
class IdGenerator:
    """A lock-free snowflake id generator: 63-bit ids, strictly increasing within the process.

    The layout is `(timestamp_bits, worker_bits, sequence_bits)`, summing to 63. A sequence overflow
    borrows the next millisecond instead of spinning.

    >>> gen = IdGenerator(worker_id=7)
    >>> a, b = gen.next(), gen.next()
    >>> a < b and gen.parse(a).worker_id == 7
    True
    """

    def __new__(
        cls,
        worker_id: int = 0,
        epoch_ms: int = 1704067200000,
        layout: tuple[int, int, int] = (44, 8, 11),
    ) -> IdGenerator: ...
    @property
    def worker_id(self) -> int:
        """The worker id stamped into every id."""
    @property
    def epoch_ms(self) -> int:
        """The epoch in Unix milliseconds."""
    @property
    def layout(self) -> tuple[int, int, int]:
        """`(timestamp_bits, worker_bits, sequence_bits)`."""
    def set_worker_id(self, worker_id: int) -> None:
        """Stamp a new worker id into the ids from now on (a leased id, a forked child).

        The current millisecond is marked spent first, so ids stay increasing across the change;
        call it before other threads make ids.
        """
    def next(self) -> int:
        """A new id, greater than every id this generator returned before."""
    def next_many(self, n: int) -> list[int]:
        """`n` new ids in increasing order (`n >= 1`)."""
    def parse(self, id: int) -> IdParts:
        """Split an id made with this generator's layout and epoch into its fields."""

def new_id() -> int:
    """A new message id from the process-wide generator (worker id from `CATGA_WORKER_ID`)."""

def parse_id(id: int) -> IdParts:
    """Split an id of the default layout and epoch into its fields."""

def default_generator() -> IdGenerator:
    """The process-wide generator that `new_id()` uses."""

Route = tuple[bool, tuple[tuple[Callable[[Any], Any], bool, bool], ...]]
"""A compiled route: `(is_event, ((target, is_async, with_context), ...))`.

`target(message)` runs the handler with its user behaviours and returns a coroutine when `is_async`,
else the result. `with_context` sets `CURRENT_MESSAGE` while it runs. A handler entry may carry a
fourth item, its `Hooks` (or `None`), see docs/internals.md.
"""

@final
class Hooks:
    """The bookkeeping behaviours of one route handler, run by the core around its target.

    Each argument is `None` when that behaviour is off for the route (docs/internals.md, "Built-in
    behaviours"): `idempotency=(table, handler_key)`, `rate_limit=(bucket, wait, max_wait)`,
    `concurrency=(limiter, permits_or_None)`, `breaker=breaker`, `cache=(table, group, key, ttl)`;
    `errors` makes the errors they raise and is required when any is set.
    """

    def __new__(
        cls,
        *,
        idempotency: tuple[Any, int] | None = None,
        rate_limit: tuple[Any, bool, float | None] | None = None,
        concurrency: tuple[Any, Any] | None = None,
        breaker: Any = None,
        cache: tuple[Any, int, Callable[[Any], bytes], float] | None = None,
        errors: Any = None,
    ) -> Hooks: ...
    @property
    def idempotency(self) -> tuple[Any, int] | None: ...
    @property
    def rate_limit(self) -> tuple[Any, bool, float | None] | None: ...
    @property
    def concurrency(self) -> tuple[Any, Any] | None: ...
    @property
    def breaker(self) -> Any: ...
    @property
    def cache(self) -> tuple[Any, int, Callable[[Any], bytes], float] | None: ...
    @property
    def errors(self) -> Any: ...

@disjoint_base
class Dispatcher:
    """The dispatch table and pipeline executor that `catga.Mediator` subclasses.

    Routes are compiled once per message type by calling `self._compile_route(message_type)`, which
    the subclass implements (returning a `Route` or raising `HandlerNotFound`), on the first send or
    publish of that type, and then looked up by the type's identity. The subclass calls
    `_invalidate()` whenever a registration changes a route.
    """

    def __new__(cls, *args: Any, **kwargs: Any) -> Dispatcher: ...
    def send(self, message: Any, /) -> Awaitable[Any]:
        """Run the handler of a request through its pipeline. Errors are raised on await."""
    def send_meta(self, message: Any, /) -> Awaitable[tuple[Any, bool]]:
        """`send`, resolving to `(result, from_cache)`: whether the result was stored, not computed."""
    def publish(self, event: Any, /) -> Awaitable[None]:
        """Run every handler of an event, in order; failures are raised together as `PublishError`."""
    def _route(self, message_type: type, /) -> Route:
        """The compiled route of a type (compiling it on a miss)."""
    def _invalidate(self) -> None:
        """Forget every compiled route."""
