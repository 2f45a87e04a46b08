"""Observing one run through hooks: Logging, Tracing and Metrics, the outermost built-ins.

The pure core's twin of the observation half of `rust/py/src/hooks.rs`, also used by the paths the
mediator drives itself (`catga._hook_runner`: `send_sync`, the concurrent publish, a dead letter's
retry). The `Hooks` fields it reads (docs/internals.md, "Observation"):

- `logging=(logger, level, log)`: asked once at the start whether `logger` takes `level`; if so,
  `log(message, duration, error, from_cache)` is called at the end.
- `tracing=(switch, key, tracer, outer, inner)`: live when `switch` is `None` or
  `switch.get(key) is not None` (asked once at the start); then `tracer.start(message, outer)`
  opens a span around the whole run and `tracer.start(message, inner)` one around the target
  (either name may be `None`: no such span), each closed with `tracer.end(span, error, from_cache)`.
- `metrics=(type_metrics, role)`: `role == "message"` counts the run as a message (`enter` at the
  start, `leave(outcome, seconds)` at the end); `"handler"` as one event handler of a publish
  (`handler_done(outcome)`). Counters (`count`) are recorded in both roles.

Nothing here may break message handling: a tracer that fails to start a span is logged and skipped.
"""

import logging
from time import perf_counter
from typing import Any, Final

from catga._pure._metrics import (
    COUNTER_CONCURRENCY_REJECTED,
    COUNTER_IDEMPOTENCY_HITS,
    COUNTER_IDEMPOTENCY_MISSES,
    COUNTER_RATE_LIMIT_REJECTED,
    OUTCOME_CANCELLED,
    OUTCOME_FAILURE,
    OUTCOME_SUCCESS,
)

__all__ = [
    "COUNTER_CONCURRENCY_REJECTED",
    "COUNTER_IDEMPOTENCY_HITS",
    "COUNTER_IDEMPOTENCY_MISSES",
    "COUNTER_RATE_LIMIT_REJECTED",
    "Observation",
    "observe",
    "outcome_of",
]

_logger: Final = logging.getLogger("catga.observability")


def outcome_of(error: BaseException | None) -> int:
    """Success, failure (an `Exception`), or cancelled (any other `BaseException`)."""
    if error is None:
        return OUTCOME_SUCCESS
    return OUTCOME_FAILURE if isinstance(error, Exception) else OUTCOME_CANCELLED


class Observation:
    """What one run observes, from its start to its end (each part `None` when off)."""

    __slots__ = ("inner_span", "log", "message", "metrics", "outer_span", "role", "started", "tracer")

    def __init__(self, message: Any) -> None:
        self.message = message
        self.started = perf_counter()
        self.log: Any = None
        self.metrics: Any = None
        self.role = "message"
        self.tracer: Any = None
        self.outer_span: Any = None
        self.inner_span: Any = None

    def count(self, counter: int) -> None:
        if self.metrics is not None:
            self.metrics.count(counter)

    def start_inner(self, inner: str | None) -> None:
        """The span around the target, when tracing is live and the run has one."""
        if self.tracer is not None and inner is not None:
            self.inner_span = _start_span(self.tracer, self.message, inner)

    def end_inner(self, error: BaseException | None) -> None:
        span, self.inner_span = self.inner_span, None
        if span is not None:
            _end_span(self.tracer, span, error, False)

    def finish(self, error: BaseException | None, from_cache: bool) -> None:
        """The run ended: close the spans, record the metrics, write the log record."""
        self.end_inner(error)
        outcome = outcome_of(error)
        duration = perf_counter() - self.started
        span, self.outer_span = self.outer_span, None
        if span is not None:
            _end_span(self.tracer, span, error, from_cache)
        metrics = self.metrics
        if metrics is not None:
            if self.role == "message":
                metrics.leave(outcome, duration)
            else:
                metrics.handler_done(outcome)
        if self.log is not None:
            try:
                self.log(self.message, duration, error, from_cache)
            except Exception:
                _logger.warning("could not write the log record of a message", exc_info=True)


def observe(hooks: Any, message: Any) -> tuple[Observation | None, str | None]:
    """Start observing a run: `(observation, the target span's name)`; `(None, None)` when the
    hooks observe nothing (or nothing is live: logging off at its level, no tracer provider)."""
    logging_, tracing, metrics = hooks.logging, hooks.tracing, hooks.metrics
    if logging_ is None and tracing is None and metrics is None:
        return None, None
    observation = Observation(message)
    if logging_ is not None:
        logger, level, log = logging_
        if logger.isEnabledFor(level):
            observation.log = log
    inner = None
    if tracing is not None:
        switch, key, tracer, outer, inner = tracing
        if switch is None or switch.get(key) is not None:
            observation.tracer = tracer
            if outer is not None:
                observation.outer_span = _start_span(tracer, message, outer)
        else:
            inner = None
    if metrics is not None:
        observation.metrics, observation.role = metrics
        if observation.role == "message":
            observation.metrics.enter()
    if observation.log is None and observation.tracer is None and observation.metrics is None:
        return None, None
    return observation, inner


def _end_span(tracer: Any, span: Any, error: BaseException | None, from_cache: bool) -> None:
    try:
        tracer.end(span, error, from_cache)
    except Exception:
        _logger.warning("could not end a span", exc_info=True)


def _start_span(tracer: Any, message: Any, operation: str) -> Any:
    try:
        return tracer.start(message, operation)
    except Exception:
        _logger.warning("could not start the `%s` span of a message: tracing skips it", operation, exc_info=True)
        return None
