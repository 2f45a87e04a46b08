"""Snowflake message ids: the pure-Python twin of the id generator in `rust/core`.

The generator state is one int, `(last_ms << s) | seq` (`s` = sequence bits), so "next sequence
number, or borrow the next millisecond when the sequence is full" is a plain `state + 1`: the carry
out of the sequence bits lands in the millisecond. Rust advances the same word by compare-and-swap;
Python has no CAS, so one `threading.Lock` guards it and the id math runs outside the lock.
"""

import contextlib
import datetime as _dt
import operator
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Final, NoReturn, final

__all__ = ["DEFAULT_EPOCH_MS", "IdGenerator", "IdParts", "default_generator", "new_id", "parse_id"]

DEFAULT_EPOCH_MS: Final[int] = 1704067200000
"""2024-01-01T00:00:00Z in Unix milliseconds, the default epoch of message ids."""

_DEFAULT_LAYOUT: Final[tuple[int, int, int]] = (44, 8, 11)
_ID_BITS: Final = 63
_UTC: Final = _dt.UTC

_Clock = Callable[[], int]
_DECIMAL: Final = re.compile(r"[+-]?[0-9]+")


@final
class IdParts:
    """The fields of a message id, see `IdGenerator.parse`.

    >>> parts = parse_id(new_id())
    >>> parts.datetime.tzinfo is not None
    True
    """

    __slots__ = ("_sequence", "_timestamp_ms", "_worker_id")

    _timestamp_ms: int
    _worker_id: int
    _sequence: int

    def __new__(cls) -> "IdParts":
        # Like the native class: only `parse` makes them, so the fields always come from a real id.
        raise TypeError("cannot create `IdParts` instances: use `IdGenerator.parse` or `parse_id`")

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `IdParts` is not an acceptable base type")

    @property
    def timestamp_ms(self) -> int:
        """Unix milliseconds at which the id was made."""
        return self._timestamp_ms

    @property
    def worker_id(self) -> int:
        """The worker id of the process that made the id."""
        return self._worker_id

    @property
    def sequence(self) -> int:
        """The sequence number within the millisecond."""
        return self._sequence

    @property
    def datetime(self) -> _dt.datetime:
        """`timestamp_ms` as a timezone-aware UTC datetime."""
        return _dt.datetime.fromtimestamp(self._timestamp_ms / 1000, tz=_UTC)

    def __repr__(self) -> str:
        return f"IdParts(timestamp_ms={self._timestamp_ms}, worker_id={self._worker_id}, sequence={self._sequence})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IdParts):
            return NotImplemented
        return (self._timestamp_ms, self._worker_id, self._sequence) == (
            other._timestamp_ms,
            other._worker_id,
            other._sequence,
        )

    def __hash__(self) -> int:
        return hash((self._timestamp_ms, self._worker_id, self._sequence))


def _make_parts(timestamp_ms: int, worker_id: int, sequence: int) -> IdParts:
    parts = object.__new__(IdParts)
    parts._timestamp_ms = timestamp_ms
    parts._worker_id = worker_id
    parts._sequence = sequence
    return parts


def _int_arg(what: str, value: object) -> int:
    # Whatever has `__index__`, as the native core's integer conversion takes; and, as there, a
    # value that is no int is a `ValueError` naming it (internals.md lists "layout not 3 ints").
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{what} `{value}` must be an int") from None


def _check_layout(layout: object) -> tuple[int, int, int]:
    parts = None
    if isinstance(layout, tuple) and len(layout) == 3:
        with contextlib.suppress(TypeError):
            parts = [operator.index(part) for part in layout]
    if parts is None:
        raise ValueError(f"id layout `{layout}` must be a tuple of 3 ints (timestamp, worker, sequence)")
    t, w, s = parts
    normalized = (t, w, s)
    if t < 1 or s < 1 or w < 0:
        raise ValueError(
            f"id layout `{normalized}` needs at least 1 timestamp bit, 1 sequence bit and no negative part"
        )
    if t + w + s != _ID_BITS:
        raise ValueError(f"id layout `{normalized}` must sum to {_ID_BITS} bits, not `{t + w + s}`")
    return normalized


@final
class IdGenerator:
    """A snowflake id generator: 63-bit ids, strictly increasing within the process.

    The layout is `(timestamp_bits, worker_bits, sequence_bits)`, summing to 63. A sequence overflow
    borrows the next millisecond instead of spinning. (The native core is lock-free; this twin takes
    one lock per call.)

    >>> gen = IdGenerator(worker_id=7)
    >>> a, b = gen.next(), gen.next()
    >>> a < b and gen.parse(a).worker_id == 7
    True
    """

    __slots__ = (
        "_epoch_ms",
        "_layout",
        "_limit",
        "_lock",
        "_ms_shift",
        "_seq_bits",
        "_seq_mask",
        "_state",
        "_time_ns",
        "_worker_bits",
        "_worker_id",
        "_worker_mask",
    )

    _worker_id: int
    _epoch_ms: int
    _layout: tuple[int, int, int]
    _seq_bits: int
    _seq_mask: int
    _ms_shift: int
    _worker_bits: int
    _worker_mask: int
    _limit: int
    _state: int
    _lock: threading.Lock
    # The clock, in Unix nanoseconds. An instance slot (not a parameter, so the signature matches the
    # native class) that tests may replace to step time by hand; `time.time_ns` is a builtin, so
    # looking it up here costs no extra Python frame.
    _time_ns: _Clock

    def __new__(
        cls,
        worker_id: int = 0,
        epoch_ms: int = DEFAULT_EPOCH_MS,
        layout: tuple[int, int, int] = _DEFAULT_LAYOUT,
    ) -> "IdGenerator":
        t, w, s = _check_layout(layout)
        worker_id = _int_arg("worker id", worker_id)
        if not 0 <= worker_id < 1 << w:
            raise ValueError(f"worker id `{worker_id}` does not fit in `{w}` bits (0..={(1 << w) - 1})")
        epoch_ms = _int_arg("epoch", epoch_ms)
        if not 0 <= epoch_ms <= time.time_ns() // 1_000_000:
            raise ValueError(f"epoch `{epoch_ms}` must be Unix milliseconds between 0 and now")

        self = object.__new__(cls)
        self._worker_id = worker_id
        self._epoch_ms = epoch_ms
        self._layout = (t, w, s)
        self._seq_bits = s
        self._seq_mask = (1 << s) - 1
        self._ms_shift = w + s
        self._worker_bits = worker_id << s
        self._worker_mask = (1 << w) - 1
        # The state must stay below this, else its millisecond does not fit in `t` bits.
        self._limit = 1 << (t + s)
        # -1 so that the first id is (ms, 0) even at millisecond 0 (a clock at or before the epoch).
        self._state = -1
        self._lock = threading.Lock()
        self._time_ns = time.time_ns
        return self

    def __init_subclass__(cls, **kwargs: object) -> None:
        raise TypeError("type `IdGenerator` is not an acceptable base type")

    @property
    def worker_id(self) -> int:
        """The worker id stamped into every id."""
        return self._worker_id

    @property
    def epoch_ms(self) -> int:
        """The epoch in Unix milliseconds."""
        return self._epoch_ms

    @property
    def layout(self) -> tuple[int, int, int]:
        """`(timestamp_bits, worker_bits, sequence_bits)`."""
        return self._layout

    def __repr__(self) -> str:
        return f"IdGenerator(worker_id={self._worker_id}, epoch_ms={self._epoch_ms}, layout={self._layout})"

    def set_worker_id(self, worker_id: int) -> None:
        """Stamp a new worker id into the ids from now on (a leased id, a forked child).

        The current millisecond is marked spent first, so ids stay increasing across the change;
        call it before other threads make ids.
        """
        worker_id = _int_arg("worker id", worker_id)
        w = self._layout[1]
        if not 0 <= worker_id < 1 << w:
            raise ValueError(f"worker id `{worker_id}` does not fit in `{w}` bits (0..={(1 << w) - 1})")
        with self._lock:
            if self._state >= 0:
                self._state |= self._seq_mask
            self._worker_id = worker_id
            self._worker_bits = worker_id << self._seq_bits

    def next(self) -> int:
        """A new id, greater than every id this generator returned before."""
        # A clock before the epoch gives a negative `now`, which never beats the state: it counts as
        # millisecond 0 (or as the last millisecond used, when the clock stepped back).
        now = self._time_ns() // 1_000_000 - self._epoch_ms
        s = self._seq_bits
        lock = self._lock
        # NOTE: acquire/release in try/finally costs ~490 ns per id against ~630 ns with `with lock:`.
        lock.acquire()
        try:
            state = self._state
            # Past the last millisecond: (now, 0). Else the next sequence number, whose carry borrows
            # the next millisecond when the sequence is full.
            state = now << s if now > state >> s else state + 1
            if state >= self._limit:
                self._overflow(state)
            self._state = state
        finally:
            lock.release()
        return (state >> s << self._ms_shift) | self._worker_bits | (state & self._seq_mask)

    def next_many(self, n: int) -> list[int]:
        """`n` new ids in increasing order (`n >= 1`)."""
        n = _int_arg("number of ids", n)
        if n < 1:
            raise ValueError(f"number of ids `{n}` must be at least 1")
        now = self._time_ns() // 1_000_000 - self._epoch_ms
        s = self._seq_bits
        # One clock reading and one lock for the batch: the same ids as `n` calls to `next` made
        # within one millisecond, overflow borrowing included.
        with self._lock:
            state = self._state
            first = now << s if now > state >> s else state + 1
            last = first + n - 1
            if last >= self._limit:
                self._overflow(last)
            self._state = last
        shift, worker_bits, mask = self._ms_shift, self._worker_bits, self._seq_mask
        return [(st >> s << shift) | worker_bits | (st & mask) for st in range(first, last + 1)]

    def parse(self, id: int) -> IdParts:
        """Split an id made with this generator's layout and epoch into its fields."""
        id = _int_arg("message id", id)
        if not 0 <= id < 1 << _ID_BITS:
            raise ValueError(f"message id `{id}` is not a 63-bit non-negative integer")
        s = self._seq_bits
        return _make_parts(
            (id >> self._ms_shift) + self._epoch_ms,
            (id >> s) & self._worker_mask,
            id & self._seq_mask,
        )

    def _overflow(self, state: int) -> NoReturn:
        t = self._layout[0]
        raise OverflowError(
            f"`{state >> self._seq_bits}` ms since the epoch do not fit in the {t} timestamp bits "
            f"of id layout `{self._layout}`"
        )


def _worker_id_from_env() -> int | None:
    value = os.environ.get("CATGA_WORKER_ID", "")
    text = value.strip()
    if not text:
        return None
    # The native core's parse: an optional sign and ASCII digits (`int()` would also take "1_0").
    if _DECIMAL.fullmatch(text) is None or not 0 <= int(text) <= 255:
        raise ValueError(f"CATGA_WORKER_ID `{value}` must be an int from 0 to 255")
    return int(text)


def _random_worker_id() -> int:
    # Random ids collide (20 processes share one with ~50 % probability); processes that use a
    # transport or a shared store lease theirs instead (API.md section 2).
    return os.urandom(1)[0]


_env_worker_id = _worker_id_from_env()
_DEFAULT_GENERATOR: Final = IdGenerator(worker_id=_random_worker_id() if _env_worker_id is None else _env_worker_id)


def _after_fork_in_child() -> None:
    # A forked child must not make its parent's ids: unless CATGA_WORKER_ID pins the worker id, it
    # picks a new random one. (The lock is fresh in the child: fork copies it unlocked only if it
    # was, so replace it before use.)
    _DEFAULT_GENERATOR._lock = threading.Lock()
    if _worker_id_from_env() is None:
        _DEFAULT_GENERATOR.set_worker_id(_random_worker_id())


os.register_at_fork(after_in_child=_after_fork_in_child)


def new_id() -> int:
    """A new message id from the process-wide generator (worker id from `CATGA_WORKER_ID`)."""
    return _DEFAULT_GENERATOR.next()


def parse_id(id: int) -> IdParts:
    """Split an id of the default layout and epoch into its fields."""
    return _DEFAULT_GENERATOR.parse(id)


def default_generator() -> IdGenerator:
    """The process-wide generator that `new_id()` uses."""
    return _DEFAULT_GENERATOR
