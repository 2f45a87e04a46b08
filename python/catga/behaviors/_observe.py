"""The observing built-ins of a route: Logging, Tracing and Metrics, as the core's `Hooks` fields.

They sit outermost (API.md section 5: Logging, then Tracing; Metrics beside them), so they see
what the bookkeeping hooks decide too: a refusal, an idempotency replay. The core runs them
(docs/internals.md, "Observation"): per message it asks the logger's cached answer for the level
and looks up whether a tracer provider is set, and records the metrics in Rust; Python is called
only for a record to write or a span to open.

Three roles: a request route's handler observes the whole send (`send` span, the message counted
and timed); each event handler observes its own run (`handle` span, a log record per handler,
counted as a publish handler); an event route's observer observes the whole publish (`publish`
span, the event counted and timed).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final, Literal

from catga._messages import Command, Event, Query, message_ids

__all__ = ["Role", "message_kind", "observation_hooks"]

Role = Literal["send", "handler", "publish"]

_logger: Final = logging.getLogger("catga")

# (outer span, inner span) of each role.
_SPANS: Final[dict[str, tuple[str | None, str | None]]] = {
    "send": ("send", "handle"),
    "handler": (None, "handle"),
    "publish": ("publish", None),
}


def message_kind(message_type: type, is_event: bool) -> str:
    """`command`, `query`, `event` or `request` (a plain type): the `kind` label of metrics and spans."""
    if issubclass(message_type, Command):
        return "command"
    if issubclass(message_type, Query):
        return "query"
    if is_event or issubclass(message_type, Event):
        return "event"
    return "request"


def observation_hooks(config: Any, message_type: type, wire: str, handler: str | None, role: Role) -> dict[str, Any]:
    """The `logging`, `tracing` and `metrics` arguments of a `Hooks` for one role of a route (only
    those that are on). `handler`: the event handler's qualified name (role `handler`)."""
    hooks: dict[str, Any] = {}
    kind = message_kind(message_type, role != "send")
    if config.logging is not None and role != "publish":
        level = config.logging.level
        hooks["logging"] = (_logger, level, _make_log(level, message_type.__qualname__, wire, handler))
    if config.tracing is not None:
        from catga.observability._tracing import SpanTracer, tracing_switch  # OpenTelemetry: on first use

        provider = config.tracing.tracer_provider
        switch = tracing_switch() if provider is None else None
        mapping, key = switch if switch is not None else (None, None)
        outer, inner = _SPANS[role]
        tracer = SpanTracer(wire, kind, handler, tracer_provider=provider)
        hooks["tracing"] = (mapping, key, tracer, outer, inner)
    if config.metrics is not None:
        registry = config.metrics.registry
        hooks["metrics"] = (registry.for_type(kind, wire), "handler" if role == "handler" else "message")
    return hooks


# -------------------------------------------------------------------------------------- Logging


def _make_log(level: int, name: str, wire: str, handler: str | None) -> Callable[[Any, float, Any, bool], None]:
    """The record writer of one route: `log(message, duration, error, from_cache)`."""
    where = f" by `{handler}`" if handler else ""

    def log(message: Any, duration: float, error: BaseException | None, from_cache: bool) -> None:
        message_id, correlation_id = message_ids(message)
        if error is None:
            outcome, text = "success", None
        elif isinstance(error, asyncio.CancelledError) or not isinstance(error, Exception):
            outcome, text = "cancelled", None
        else:
            outcome, text = (
                "failure",
                f"{type(error).__qualname__}: {error}" if str(error) else type(error).__qualname__,
            )
        extra = {
            "message_type": wire,
            "message_id": message_id,
            "correlation_id": correlation_id,
            "duration": duration,
            "outcome": outcome,
            "error": text,
            "handler": handler,
            "from_cache": from_cache,
        }
        replay = " (stored result)" if from_cache else ""
        if text is None:
            _logger.log(level, "`%s`%s: %s%s in %.3f ms", name, where, outcome, replay, duration * 1000.0, extra=extra)
        else:
            _logger.log(level, "`%s`%s: %s in %.3f ms: %s", name, where, outcome, duration * 1000.0, text, extra=extra)

    log.__qualname__ = f"log[{name}]"
    return log
