"""Sagas (issue 6): a sequence of async steps, each with a compensation, run by a `SagaExecutor`.

A `Saga` is a definition: named steps in order, each an `async def step(ctx: SagaContext)` with
an optional compensation (another such function), its attempts and its timeout. A `SagaExecutor`
runs it against a `catga.stores.SagaStore`: the saga's `SagaState` is written before and after
every step and compensation, under a lease renewed by a heartbeat, so that when the owner dies
another process (`recover()`) takes the saga over where it stood.

Semantics: steps run in order, each retried up to its `max_attempts` with the Retry behaviour's
backoff and `retryable` rules. A step that finally fails is not compensated (its action is assumed
not to have happened); the completed steps are compensated in reverse order, each compensation
retried (`compensation_retry`, 5 attempts by default). If a compensation still fails, the saga ends
`FAILED` and is dead-lettered with its state; `executor.retry(saga_id)` resumes compensating it.

>>> import asyncio, catga
>>> saga = catga.Saga("greet")
>>> @saga.step
... async def hello(ctx: catga.SagaContext) -> None:
...     ctx.data["greeting"] = f"hello {ctx.data['name']}"
>>> executor = catga.SagaExecutor(catga.Mediator())
>>> result = asyncio.run(executor.run(saga, data={"name": "ada"}))
>>> result.status, result.data["greeting"], result.completed_steps
(<SagaStatus.COMPLETED: 'completed'>, 'hello ada', ('hello',))
"""

import asyncio
import contextlib
import inspect
import logging
import os
import re
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast, overload

import msgspec

from catga._core import __version__, new_id
from catga._dead_letters import make_record
from catga._errors import CatgaError, Conflict, SagaFailed, Timeout, ValidationError
from catga._saga_state import (
    HistoryEntry,
    SagaState,
    SagaStatus,
    StepRecord,
    StepStatus,
    encode_state,
    utcnow,
)
from catga.behaviors._builtins import Retry

if TYPE_CHECKING:
    from catga._mediator import Mediator
    from catga.observability import MetricsRegistry
    from catga.stores import SagaStore

__all__ = ["Saga", "SagaContext", "SagaExecutor", "SagaResult", "SagaStep", "send_step"]

_logger = logging.getLogger("catga")

StepFunction = Callable[["SagaContext"], Awaitable[Any]]
"""What a step and a compensation are: `async def f(ctx: SagaContext) -> None`."""

DEFAULT_MAX_ATTEMPTS: Final = 3
_json: Final = msgspec.json.Encoder()


# ------------------------------------------------------------------------------------ definition


def _is_async(function: object) -> bool:
    if inspect.iscoroutinefunction(function):
        return True
    call = getattr(function, "__call__", None)  # noqa: B004 - an object whose __call__ is async
    return call is not None and inspect.iscoroutinefunction(call)


def _check_function(what: str, function: object) -> None:
    if not callable(function):
        raise TypeError(f"{what} must be an async function taking a `SagaContext`, got `{function!r}`")
    if not _is_async(function):
        raise TypeError(f"{what} must be an `async def` function taking a `SagaContext`, got `{_qualname(function)}`")


def _check_name(what: str, value: object) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty string, got `{value!r}`")
    return value


def _qualname(function: object) -> str:
    return getattr(function, "__qualname__", None) or repr(function)


@dataclass(frozen=True, slots=True)
class SagaStep:
    """One step of a `Saga`: its `name`, `action`, `compensate` (or `None`), `max_attempts`,
    `timeout` (seconds per attempt, or `None`) and `retry_on` (exception types retried on top of
    retryable `CatgaError`s). Made by `Saga.step`, `Saga.add_step` and `send_step`."""

    name: str
    action: StepFunction
    compensate: StepFunction | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    timeout: float | None = None
    retry_on: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        _check_name("a saga step name", self.name)
        _check_function(f"step `{self.name}`", self.action)
        if self.compensate is not None:
            _check_function(f"the compensation of step `{self.name}`", self.compensate)
        if isinstance(self.max_attempts, bool) or not isinstance(self.max_attempts, int):
            raise TypeError(f"`max_attempts` of step `{self.name}` must be an int, got `{self.max_attempts!r}`")
        if self.max_attempts < 1:
            raise ValueError(f"`max_attempts` of step `{self.name}` must be at least 1, got `{self.max_attempts!r}`")
        if self.timeout is not None:
            if isinstance(self.timeout, bool) or not isinstance(self.timeout, int | float):
                raise TypeError(f"`timeout` of step `{self.name}` must be a number, got `{self.timeout!r}`")
            if not self.timeout > 0:
                raise ValueError(f"`timeout` of step `{self.name}` must be positive, got `{self.timeout!r}`")
        # Validated and normalised by Retry's own check (a class, or a tuple of them).
        object.__setattr__(self, "retry_on", Retry(retry_on=self.retry_on).retry_on)


class Saga:
    """A saga definition: a name and its steps, in the order they run.

    Add steps with the `step` decorator or with `add_step` (which also takes a ready `SagaStep`,
    such as `send_step(...)` returns). Step names (the function's `__name__` by default) must be
    unique; they name the steps in the stored state and in the idempotency keys, so renaming a step
    while sagas are in flight orphans them.

    >>> saga = Saga("place-order")
    >>> async def release_stock(ctx): ...
    >>> @saga.step(compensate=release_stock, max_attempts=3, timeout=5.0)
    ... async def reserve_stock(ctx: "SagaContext") -> None: ...
    >>> async def charge_card(ctx): ...
    >>> saga.add_step(charge_card).name
    'charge_card'
    >>> [step.name for step in saga.steps]
    ['reserve_stock', 'charge_card']
    """

    __slots__ = ("_steps", "name")

    name: str

    def __init__(self, name: str) -> None:
        self.name = _check_name("a saga name", name)
        self._steps: list[SagaStep] = []

    @property
    def steps(self) -> tuple[SagaStep, ...]:
        """The steps, in the order they run."""
        return tuple(self._steps)

    def __repr__(self) -> str:
        return f"<catga.Saga {self.name!r} steps={[step.name for step in self._steps]}>"

    def add_step(
        self,
        action: StepFunction | SagaStep,
        *,
        compensate: StepFunction | None = None,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> SagaStep:
        """Append a step running `action` (an `async def` taking a `SagaContext`); returns it.

        `action` may also be a `SagaStep` (from `send_step`); the keyword arguments given then
        replace its settings. `max_attempts` defaults to 3 (API.md section 9).
        """
        if isinstance(action, SagaStep):
            step = SagaStep(
                name=name if name is not None else action.name,
                action=action.action,
                compensate=compensate if compensate is not None else action.compensate,
                max_attempts=max_attempts if max_attempts is not None else action.max_attempts,
                timeout=timeout if timeout is not None else action.timeout,
                retry_on=(*action.retry_on, *Retry(retry_on=retry_on).retry_on),
            )
        else:
            if name is None:
                name = getattr(action, "__name__", None)
                if not isinstance(name, str) or name == "<lambda>":
                    raise ValueError(f"step `{action!r}` has no usable `__name__`: pass `name=`")
            step = SagaStep(
                name=name,
                action=action,
                compensate=compensate,
                max_attempts=max_attempts if max_attempts is not None else DEFAULT_MAX_ATTEMPTS,
                timeout=timeout,
                retry_on=Retry(retry_on=retry_on).retry_on,
            )
        if any(existing.name == step.name for existing in self._steps):
            raise ValueError(f"saga `{self.name}` already has a step named `{step.name}`")
        self._steps.append(step)
        return step

    @overload
    def step(self, action: StepFunction, /) -> StepFunction: ...
    @overload
    def step(
        self,
        action: None = None,
        /,
        *,
        compensate: StepFunction | None = None,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> Callable[[StepFunction], StepFunction]: ...
    def step(
        self,
        action: StepFunction | None = None,
        /,
        *,
        compensate: StepFunction | None = None,
        name: str | None = None,
        max_attempts: int | None = None,
        timeout: float | None = None,
        retry_on: type[BaseException] | tuple[type[BaseException], ...] = (),
    ) -> StepFunction | Callable[[StepFunction], StepFunction]:
        """Decorator form of `add_step`: `@saga.step` or `@saga.step(compensate=..., ...)`.

        Returns the function unchanged, so it can still be called (and tested) on its own.
        """

        def register(function: StepFunction) -> StepFunction:
            self.add_step(
                function,
                compensate=compensate,
                name=name,
                max_attempts=max_attempts,
                timeout=timeout,
                retry_on=retry_on,
            )
            return function

        return register if action is None else register(action)

    def _check(self) -> None:
        if not self._steps:
            raise ValueError(f"saga `{self.name}` has no steps")


_CAMEL: Final = re.compile(r"(?<=[a-z0-9])(?=[A-Z])|(?<=[A-Z])(?=[A-Z][a-z])")


def _snake(name: str) -> str:
    return _CAMEL.sub("_", name).lower()


def send_step(
    make_message: Callable[[dict[str, Any]], object],
    *,
    compensate: Callable[[dict[str, Any]], object] | StepFunction | None = None,
    name: str | None = None,
    max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    timeout: float | None = None,
) -> SagaStep:
    """A step that sends `make_message(ctx.data)` through `ctx.mediator` and stores the reply in
    `ctx.data[name]` (so it must be msgspec-encodable; after a recovery it is read back as JSON).

    `name` defaults to the message type's name in snake case (`ShipOrder` → `ship_order`), which
    needs one call of `make_message` on an empty dict at definition time; pass `name=` when
    `make_message` cannot build a message from `{}`. `compensate` is a step function, or like
    `make_message` a function of the data returning a message to send. Add the step with
    `saga.add_step(send_step(...))`.

    >>> import catga
    >>> class ShipOrder(catga.Command[None]):
    ...     order_id: str
    >>> step = send_step(lambda d: ShipOrder(order_id=d.get("order_id", "")))
    >>> step.name
    'ship_order'
    """
    if not callable(make_message):
        raise TypeError(f"`make_message` must be a function of the saga data, got `{make_message!r}`")
    if name is None:
        try:
            probe = make_message({})
        except Exception as exc:
            raise ValueError(
                f"cannot name the step of `{_qualname(make_message)}` from its message type "
                f"(calling it with `{{}}` raised `{exc!r}`): pass `name=`"
            ) from exc
        name = _snake(type(probe).__name__)
    key = name

    async def action(ctx: SagaContext) -> None:
        ctx.data[key] = await ctx.mediator.send(make_message(ctx.data))

    action.__name__ = action.__qualname__ = name
    compensation: StepFunction | None = None
    if compensate is not None and not _is_async(compensate):
        make_undo = cast(Callable[[dict[str, Any]], object], compensate)

        async def undo(ctx: SagaContext) -> None:
            await ctx.mediator.send(make_undo(ctx.data))

        compensation = undo
    elif compensate is not None:
        compensation = compensate  # type: ignore[assignment]
    return SagaStep(name=name, action=action, compensate=compensation, max_attempts=max_attempts, timeout=timeout)


# ------------------------------------------------------------------------------ context and result


class SagaContext:
    """What a step (or compensation) gets: the saga's `saga_id`, the `step`'s name, the `attempt`
    (1-based, counted across retries and takeovers), the saga's `data` (a dict, persisted after
    every step: keep it msgspec-encodable) and the `mediator` to send through.

    `idempotency_key` (`"{saga_id}:{step}"`) is the same for every attempt of a step, in every
    process, recovery included: pass it on (as a message id or a request key) so that a step
    re-run after a crash does not act twice.

    >>> ctx = SagaContext("s-1", "charge_card", 1, {}, None)
    >>> ctx.idempotency_key
    's-1:charge_card'
    """

    __slots__ = ("attempt", "data", "mediator", "saga_id", "step")

    def __init__(self, saga_id: str, step: str, attempt: int, data: dict[str, Any], mediator: Any) -> None:
        self.saga_id = saga_id
        self.step = step
        self.attempt = attempt
        self.data = data
        self.mediator: Mediator = mediator

    @property
    def idempotency_key(self) -> str:
        return f"{self.saga_id}:{self.step}"

    def __repr__(self) -> str:
        return f"SagaContext(saga_id={self.saga_id!r}, step={self.step!r}, attempt={self.attempt})"


@dataclass(frozen=True, slots=True)
class SagaResult:
    """How a saga run ended: `status` (`COMPLETED`, `COMPENSATED` or `FAILED`), its final `data`,
    `error` (the failing step's error; for a result read back from the store, a `SagaFailed`
    carrying its stored text), `completed_steps` (the steps whose action completed, in order) and
    `compensated_steps` (those whose compensation ran, in the order it ran)."""

    saga_id: str
    status: SagaStatus
    data: dict[str, Any] = field(default_factory=dict)
    error: BaseException | None = None
    completed_steps: tuple[str, ...] = ()
    compensated_steps: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """Whether the saga completed."""
        return self.status is SagaStatus.COMPLETED


_DONE: Final = frozenset(
    {StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATED, StepStatus.COMPENSATION_FAILED}
)


def _result(state: SagaState, error: BaseException | None = None) -> SagaResult:
    if error is None and state.error is not None:
        error = SagaFailed(state.error, saga_id=state.saga_id, error_type=state.error_type)
    compensated = [
        (record.compensated_at, -index, record)
        for index, record in enumerate(state.steps)
        if record.status is StepStatus.COMPENSATED and record.compensation_attempts and record.compensated_at
    ]
    # In the order the compensations ran: by time, and on a tie (a coarse clock) last step first.
    compensated.sort(key=lambda item: (item[0], item[1]))
    return SagaResult(
        saga_id=state.saga_id,
        status=state.status,
        data=state.data,
        error=error,
        completed_steps=tuple(record.name for record in state.steps if record.status in _DONE),
        compensated_steps=tuple(record.name for _, _, record in compensated),
    )


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def check_encodable(saga: str, data: object) -> dict[str, Any]:
    """`data` as a saga keeps it: a dict msgspec can encode; else `TypeError` naming the value."""
    if not isinstance(data, dict):
        raise TypeError(f"the data of saga `{saga}` must be a dict, got `{data!r}`")
    try:
        _json.encode(data)
    except (TypeError, msgspec.EncodeError, ValueError) as exc:
        for key, value in data.items():
            try:
                _json.encode({key: value})
            except (TypeError, msgspec.EncodeError, ValueError):
                raise TypeError(
                    f"the data of saga `{saga}` must be msgspec-encodable: `data[{key!r}]` is `{value!r}` ({exc})"
                ) from exc
        raise TypeError(f"the data of saga `{saga}` must be msgspec-encodable: `{data!r}` ({exc})") from exc
    return data


# ------------------------------------------------------------------------------------- executor


class _Run:
    """One saga this executor owns right now: its state (the last one written) and its lease."""

    __slots__ = ("heartbeat", "lock", "lost", "saga", "started", "state")

    def __init__(self, saga: Saga, state: SagaState) -> None:
        self.saga = saga
        self.state = state
        self.lock = asyncio.Lock()  # the heartbeat and the steps both write: one write at a time
        self.lost: Conflict | None = None
        self.heartbeat: asyncio.Task[None] | None = None
        self.started = time.perf_counter()


class SagaExecutor:
    """Runs sagas against a `SagaStore`, owning each under a lease while it runs.

    `store` defaults to a `catga.memory.MemorySagaStore`. `lease` (seconds, default 30) is how long
    the executor's claim on a running saga lasts without renewal; a heartbeat renews it every
    `lease / 3`, and when it lapses (the process died) `recover()` in another process takes the
    saga over. `clock` (UNIX seconds, `time.time`) dates the leases, injectable for tests. `retry`
    gives the steps' backoff and extra `retry_on` types (its `max_attempts` is ignored: each step
    has its own); `compensation_retry` (default `Retry(max_attempts=5)`) how often and how patiently
    a compensation is retried (on any exception: there is nothing else to fall back on).
    `tracer_provider` (`None`: the global one) gets a span per saga and per step; `metrics` (`None`:
    `catga.observability.default_registry()`) the saga counters.

    >>> import asyncio, catga
    >>> executor = catga.SagaExecutor(catga.Mediator(), lease=10.0)
    >>> asyncio.run(executor.get("no-such-saga")) is None
    True
    """

    __slots__ = (
        "_clock",
        "_compensation_retry",
        "_lease",
        "_mediator",
        "_metrics",
        "_owner",
        "_retry",
        "_runs",
        "_sagas",
        "_store",
        "_tracer",
    )

    def __init__(
        self,
        mediator: "Mediator",
        *,
        store: "SagaStore | None" = None,
        lease: float = 30.0,
        clock: Callable[[], float] = time.time,
        retry: Retry | None = None,
        compensation_retry: Retry | None = None,
        tracer_provider: object | None = None,
        metrics: "MetricsRegistry | None" = None,
    ) -> None:
        lease_: object = lease  # checked at run time, whatever the annotation says
        if isinstance(lease_, bool) or not isinstance(lease_, int | float) or not lease_ > 0:
            raise ValueError(f"`lease` must be a positive number of seconds, got `{lease!r}`")
        if not callable(clock):
            raise TypeError(f"`clock` must be a callable returning UNIX seconds, got `{clock!r}`")
        for label, value in (("retry", retry), ("compensation_retry", compensation_retry)):
            if value is not None and not isinstance(value, Retry):
                raise TypeError(f"`{label}` must be a `catga.behaviors.Retry`, got `{value!r}`")
        if tracer_provider is not None and not callable(getattr(tracer_provider, "get_tracer", None)):
            raise TypeError(f"`tracer_provider` must be an OpenTelemetry `TracerProvider`, got `{tracer_provider!r}`")
        if store is None:
            from catga.memory import MemorySagaStore

            store = MemorySagaStore()
        if metrics is None:
            from catga.observability import default_registry

            metrics = default_registry()
        self._mediator = mediator
        self._store: SagaStore = store
        self._lease = float(lease)
        self._clock = clock
        self._retry = retry if retry is not None else Retry()
        self._compensation_retry = compensation_retry if compensation_retry is not None else Retry(max_attempts=5)
        self._tracer = _Tracer(tracer_provider)
        self._metrics = metrics.sagas
        self._sagas: dict[str, Saga] = {}
        self._runs: dict[str, _Run] = {}
        # host:pid:token: the token tells apart two executors of one process (and a restarted pid).
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"

    def __repr__(self) -> str:
        return f"<catga.SagaExecutor owner={self._owner!r} sagas={sorted(self._sagas)} store={self._store!r}>"

    @property
    def mediator(self) -> "Mediator":
        """The mediator the steps send through (`ctx.mediator`)."""
        return self._mediator

    @property
    def owner(self) -> str:
        """This executor's lease owner name, `host:pid:token`."""
        return self._owner

    @property
    def store(self) -> "SagaStore":
        """The saga store."""
        return self._store

    @property
    def sagas(self) -> dict[str, Saga]:
        """The registered sagas, by name (a copy)."""
        return dict(self._sagas)

    def register(self, saga: Saga) -> Saga:
        """Make `saga` known by its name, so that `recover` and `retry` can resume it; returns it."""
        if not isinstance(saga, Saga):
            raise TypeError(f"`saga` must be a `catga.Saga`, got `{saga!r}`")
        saga._check()
        known = self._sagas.get(saga.name)
        # A new definition of the same steps replaces the old one (a reload, a test); different
        # steps under one name would make stored states of the name ambiguous.
        if known is not None and [s.name for s in known.steps] != [s.name for s in saga.steps]:
            raise ValueError(
                f"another saga named `{saga.name}` is registered, with steps `{[s.name for s in known.steps]}`"
            )
        self._sagas[saga.name] = saga
        return saga

    async def get(self, saga_id: str) -> SagaState | None:
        """The stored state of a saga, or `None` (a corrupt record: `PersistenceError`)."""
        return await self._store.get(saga_id)

    # ----------------------------------------------------------------------------- entry points

    async def run(self, saga: Saga, data: dict[str, Any] | None = None, saga_id: str | None = None) -> SagaResult:
        """Run `saga` on `data` to its end and return how it ended (registering it if needed).

        `saga_id=None` makes a new id. For a saga id that already finished, returns its stored
        result without running anything; for one running elsewhere under a live lease, raises
        `catga.Conflict`; for one whose owner's lease expired, takes it over as `recover` does.
        Bad input (no steps, data msgspec cannot encode) raises before any step runs.
        """
        self.register(saga)
        data = check_encodable(saga.name, {} if data is None else data)
        if saga_id is None:
            saga_id = str(new_id())
        else:
            _check_name("`saga_id`", saga_id)
        now = self._clock()
        state = SagaState(
            saga_id=saga_id,
            name=saga.name,
            status=SagaStatus.RUNNING,
            data=data,
            steps=[StepRecord(name=step.name) for step in saga.steps],
            owner=self._owner,
            lease_expires=now + self._lease,
            history=[HistoryEntry(at=utcnow(), event="saga_started")],
        )
        if await self._store.create(state):
            return await self._drive(_Run(saga, state))
        existing = await self._store.get(saga_id)
        if existing is None:  # deleted between `create` and `get`: someone else is at work on it
            raise Conflict(f"saga `{saga_id}` is being created or deleted concurrently", saga_id=saga_id)
        if existing.name != saga.name:
            raise Conflict(f"saga id `{saga_id}` belongs to saga `{existing.name}`, not `{saga.name}`", saga_id=saga_id)
        if existing.status.finished:
            return _result(existing)
        if existing.lease_expires is not None and existing.lease_expires >= now:
            raise Conflict(
                f"saga `{saga_id}` is running in `{existing.owner}` (lease until `{existing.lease_expires}`)",
                saga_id=saga_id,
            )
        return await self._drive(await self._take_over(saga, existing))

    async def recover(self, limit: int | None = 100, *, failed: bool = False) -> list[SagaResult]:
        """Take over the in-progress sagas whose owner's lease expired and finish them; with
        `failed=True`, also resume compensating the `FAILED` ones (as `retry` does; one that fails
        again is dead-lettered again, so that is for after the compensation was fixed).

        A `RUNNING` saga re-runs its in-flight step (same idempotency key) and goes on; a
        `COMPENSATING` one goes on compensating. Sagas of a name not registered here are left for
        an executor that knows them (logged); one taken over meanwhile by another process is
        skipped. Returns the results of the sagas this call finished.
        """
        results: list[SagaResult] = []
        for state in await self._store.expired(self._clock(), limit):
            saga = self._sagas.get(state.name)
            if saga is None:
                _logger.warning("saga `%s` (`%s`) is not registered here: not recovered", state.saga_id, state.name)
                continue
            try:
                run = await self._take_over(saga, state)
            except Conflict:
                continue  # another process took it first
            results.append(await self._drive(run))
        if failed:
            for state in await self._store.list(SagaStatus.FAILED, limit):
                if state.name not in self._sagas:
                    continue
                try:
                    results.append(await self.retry(state.saga_id))
                except (Conflict, ValueError):
                    continue  # retried meanwhile by another process
        return results

    async def retry(self, saga_id: str) -> SagaResult:
        """Resume compensating a `FAILED` saga (after its compensation was fixed); its result.

        Raises `ValueError` for an unknown saga id, a saga that is not `FAILED`, or one whose saga
        is not registered here.
        """
        state = await self._store.get(saga_id)
        if state is None:
            raise ValueError(f"no saga `{saga_id}` in the store")
        if state.status is not SagaStatus.FAILED:
            raise ValueError(f"saga `{saga_id}` is `{state.status}`: only a `failed` saga can be retried")
        saga = self._sagas.get(state.name)
        if saga is None:
            raise ValueError(f"saga `{state.name}` of `{saga_id}` is not registered with this executor")
        state.status = SagaStatus.COMPENSATING
        return await self._drive(await self._take_over(saga, state, event="retried"))

    # ------------------------------------------------------------------------------ the engine

    async def _take_over(self, saga: Saga, state: SagaState, event: str = "taken_over") -> _Run:
        """CAS the lease of `state` to this executor (a `taken_over` entry naming the previous owner)."""
        if len(state.steps) != len(saga.steps) or any(
            record.name != step.name for record, step in zip(state.steps, saga.steps, strict=False)
        ):
            raise ValueError(
                f"saga `{state.saga_id}` was stored with steps `{[r.name for r in state.steps]}`, "
                f"but saga `{saga.name}` has `{[s.name for s in saga.steps]}`"
            )
        previous = state.version
        state.history.append(HistoryEntry(at=utcnow(), event=event, step=state.step, detail=state.owner))
        state.owner = self._owner
        state.lease_expires = self._clock() + self._lease
        state.version = previous + 1
        state.updated_at = utcnow()
        if not await self._store.save(state, previous):
            raise Conflict(f"saga `{state.saga_id}` was taken over by another process first", saga_id=state.saga_id)
        return _Run(saga, state)

    async def _write(
        self,
        run: _Run,
        event: str | None,
        step: str | None = None,
        attempt: int | None = None,
        detail: str | None = None,
        final: bool = False,
    ) -> None:
        """Write `run.state` (changed in place by the caller) with the next version and a renewed
        lease; a failed compare-and-set means another process took the saga over: `Conflict`."""
        async with run.lock:
            if run.lost is not None:
                raise run.lost
            state = run.state
            previous = state.version
            if event is not None:
                state.history.append(HistoryEntry(at=utcnow(), event=event, step=step, attempt=attempt, detail=detail))
            state.version = previous + 1
            state.updated_at = utcnow()
            state.lease_expires = None if final else self._clock() + self._lease
            if not await self._store.save(state, previous):
                run.lost = Conflict(
                    f"saga `{state.saga_id}` was taken over by another process (lease lost)", saga_id=state.saga_id
                )
                raise run.lost

    async def _heartbeat(self, run: _Run) -> None:
        # Renews the lease every third of it, so that two missed beats still leave it alive.
        with contextlib.suppress(Conflict):
            while True:
                await asyncio.sleep(self._lease / 3)
                await self._write(run, None)

    async def _drive(self, run: _Run) -> SagaResult:
        """Run (or resume) a saga this executor owns to its end."""
        state, saga = run.state, run.saga
        if state.saga_id in self._runs:
            raise Conflict(f"saga `{state.saga_id}` is already running in this executor", saga_id=state.saga_id)
        self._runs[state.saga_id] = run
        run.heartbeat = asyncio.create_task(self._heartbeat(run), name=f"catga saga heartbeat {state.saga_id}")
        self._metrics.started(saga.name)
        status = "interrupted"  # cancelled, or the lease was lost
        try:
            with self._tracer.span(f"saga {saga.name}", saga.name, state.saga_id) as span:
                result = await self._steps_then_compensations(run)
                status = str(result.status)
                span.set_attribute("catga.saga.status", status)
                if result.error is not None:
                    _span_error(span, result.error)
                return result
        finally:
            run.heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await run.heartbeat
            del self._runs[state.saga_id]
            self._metrics.finished(saga.name, status, time.perf_counter() - run.started)

    async def _steps_then_compensations(self, run: _Run) -> SagaResult:
        state, saga = run.state, run.saga
        error: BaseException | None = None
        if state.status is SagaStatus.RUNNING:
            for index, step in enumerate(saga.steps):
                record = state.steps[index]
                if record.status is StepStatus.COMPLETED:
                    continue
                if record.status is not StepStatus.FAILED:  # FAILED: the owner died right after it
                    error = await self._run_step(run, step, record)
                    if error is None:
                        continue
                state.status = SagaStatus.COMPENSATING
                state.error = record.error
                state.error_type = type(error).__qualname__ if error is not None else state.error_type
                await self._write(run, "saga_compensating", step.name, detail=record.error)
                break
            else:
                state.status = SagaStatus.COMPLETED
                state.step = None
                await self._write(run, "saga_completed", final=True)
                return _result(state)
        return await self._compensate(run, error)

    async def _run_step(self, run: _Run, step: SagaStep, record: StepRecord) -> BaseException | None:
        """Run a step to success (`None`) or to its final failure (the error)."""
        state, saga = run.state, run.saga
        retry = self._retry
        retry_on = (*retry.retry_on, *step.retry_on)
        for tries in range(1, step.max_attempts + 1):  # attempts in this process: the budget
            record.attempts += 1  # ...counted across processes in the record and `ctx.attempt`
            attempt = record.attempts
            record.status = StepStatus.RUNNING
            record.started_at = record.started_at or utcnow()
            state.step = step.name
            await self._write(run, "step_started", step.name, attempt)
            ctx = SagaContext(state.saga_id, step.name, attempt, state.data, self._mediator)
            # A failed attempt did not happen: its changes to the data are undone (top-level keys),
            # which also keeps a value msgspec cannot encode out of the stored state.
            before = dict(state.data)
            error: Exception | None = None
            with self._tracer.span(
                f"saga step {saga.name}.{step.name}", saga.name, state.saga_id, step, attempt
            ) as span:
                try:
                    await _call(step.action, ctx, step.timeout, f"step `{step.name}` of saga `{saga.name}`")
                    check_encodable(saga.name, state.data)
                except Exception as exc:  # CancelledError passes: the state stays RUNNING, to recover
                    error = exc
                    _span_error(span, exc)
            if error is None:
                record.status = StepStatus.COMPLETED
                record.finished_at = utcnow()
                record.error = None
                await self._write(run, "step_completed", step.name, attempt)
                return None
            state.data.clear()
            state.data.update(before)
            record.error = _describe(error)
            last = tries >= step.max_attempts or not _retryable(error, retry_on)
            if last:
                record.status = StepStatus.FAILED
                record.finished_at = utcnow()
                await self._write(run, "step_failed", step.name, attempt, record.error)
                return error
            await self._write(run, "step_attempt_failed", step.name, attempt, record.error)
            await retry._sleep(retry._delay(tries, error))  # looked up per wait: tests replace it
        raise AssertionError("unreachable")  # pragma: no cover

    async def _compensate(self, run: _Run, error: BaseException | None) -> SagaResult:
        """Compensate the completed steps in reverse order; `COMPENSATED`, or `FAILED` and dead-lettered."""
        state, saga = run.state, run.saga
        for step, record in reversed(list(zip(saga.steps, state.steps, strict=True))):
            if record.status not in (StepStatus.COMPLETED, StepStatus.COMPENSATING, StepStatus.COMPENSATION_FAILED):
                continue
            if step.compensate is None:  # nothing to undo
                record.status = StepStatus.COMPENSATED
                record.compensated_at = utcnow()
                await self._write(run, "compensated", step.name, detail="no compensation")
                continue
            failure = await self._compensate_step(run, step, record)
            if failure is not None:
                state.status = SagaStatus.FAILED
                await self._write(run, "saga_failed", step.name, detail=record.error, final=True)
                await self._dead_letter(state, step, record, failure)
                return _result(state, error)
        state.status = SagaStatus.COMPENSATED
        state.step = None
        await self._write(run, "saga_compensated", final=True)
        return _result(state, error)

    async def _compensate_step(self, run: _Run, step: SagaStep, record: StepRecord) -> Exception | None:
        state, saga = run.state, run.saga
        assert step.compensate is not None
        retry = self._compensation_retry
        for tries in range(1, retry.max_attempts + 1):
            record.compensation_attempts += 1
            attempt = record.compensation_attempts
            record.status = StepStatus.COMPENSATING
            state.step = step.name
            await self._write(run, "compensation_started", step.name, attempt)
            ctx = SagaContext(state.saga_id, step.name, attempt, state.data, self._mediator)
            before = dict(state.data)
            failure: Exception | None = None
            name = f"saga compensate {saga.name}.{step.name}"
            with self._tracer.span(name, saga.name, state.saga_id, step, attempt) as span:
                try:
                    await _call(step.compensate, ctx, step.timeout, f"compensation of step `{step.name}`")
                    check_encodable(saga.name, state.data)
                except Exception as exc:
                    failure = exc
                    _span_error(span, exc)
            if failure is None:
                record.status = StepStatus.COMPENSATED
                record.compensated_at = utcnow()
                await self._write(run, "compensated", step.name, attempt)
                self._metrics.compensated(saga.name)
                return None
            state.data.clear()
            state.data.update(before)
            record.error = _describe(failure)
            if tries >= retry.max_attempts or isinstance(failure, ValidationError):
                record.status = StepStatus.COMPENSATION_FAILED
                await self._write(run, "compensation_failed", step.name, attempt, record.error)
                return failure
            await self._write(run, "compensation_attempt_failed", step.name, attempt, record.error)
            await retry._sleep(retry._delay(tries, failure))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _dead_letter(self, state: SagaState, step: SagaStep, record: StepRecord, error: Exception) -> None:
        record_ = make_record(None, f"saga:{state.name}", error, record.compensation_attempts, None, None, None)
        record_ = msgspec.structs.replace(record_, body=encode_state(state))
        try:
            await self._mediator.dead_letters.store.add(record_)
        except Exception:  # the saga's state says FAILED whatever happens here: log, do not mask
            _logger.exception("could not dead-letter failed saga `%s`", state.saga_id)


def _retryable(error: Exception, retry_on: tuple[type[BaseException], ...]) -> bool:
    # The Retry behaviour's rules (catga.behaviors._chain._retryable), imported lazily there.
    from catga.behaviors._chain import _retryable as rule

    return rule(error, retry_on)


async def _call(function: StepFunction, ctx: SagaContext, timeout: float | None, what: str) -> None:
    deadline = asyncio.timeout(timeout)
    try:
        async with deadline:
            await function(ctx)
    except TimeoutError as exc:
        if not deadline.expired() or isinstance(exc, CatgaError):
            raise  # the step's own TimeoutError (or a catga.Timeout from a send), unchanged
        raise Timeout(f"{what} did not finish within `{timeout:g}` s", step=ctx.step) from exc


# ---------------------------------------------------------------------------------------- spans


class _Tracer:
    """The spans of sagas: `saga {name}`, `saga step {name}.{step}`, `saga compensate {name}.{step}`."""

    __slots__ = ("_provider",)

    def __init__(self, provider: object | None) -> None:
        self._provider = provider

    @contextlib.contextmanager
    def span(
        self, name: str, saga: str, saga_id: str, step: SagaStep | None = None, attempt: int | None = None
    ) -> Iterator[Any]:
        from opentelemetry import trace

        provider: Any = self._provider if self._provider is not None else trace.get_tracer_provider()
        tracer = provider.get_tracer("catga", __version__)
        attributes: dict[str, Any] = {"catga.saga.name": saga, "catga.saga.id": saga_id}
        if step is not None:
            attributes["catga.saga.step"] = step.name
        if attempt is not None:
            attributes["catga.saga.attempt"] = attempt
        with tracer.start_as_current_span(name, attributes=attributes) as span:
            yield span


def _span_error(span: Any, error: BaseException) -> None:
    from opentelemetry.trace import Status, StatusCode

    span.record_exception(error)
    span.set_status(Status(StatusCode.ERROR, _describe(error)))
