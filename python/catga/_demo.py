"""The `catga demo` example: a short in-process order flow that says what it does, line by line.

It uses only the public API (API.md sections 1-5): a command, a query and an event, handlers
registered with `@mediator.handler`, one user behaviour, an event with two handlers, and
`send_result` of a failing command and of a command nobody handles. `catga.cli` imports it only
when the demo runs.
"""

import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import msgspec

import catga
import catga.observability

__all__ = ["run_demo"]

# The message types live at module level: handlers are matched by the annotation of their first
# parameter, and every message class enters catga's wire-name registry when it is created.


class Order(msgspec.Struct, frozen=True):
    order_id: str
    customer: str
    amount: int


class PlaceOrder(catga.Command[str]):
    customer: str
    amount: int


class GetOrder(catga.Query[Order]):
    order_id: str


class CancelOrder(catga.Command[None]):
    order_id: str


class OrderPlaced(catga.Event):
    order_id: str
    customer: str


def _show(message: object) -> str:
    """`Type(field=value, ...)` without the base fields every message carries."""
    if isinstance(message, msgspec.Struct):
        skip = {"message_id", "correlation_id"}
        fields = ", ".join(
            f"{name}={getattr(message, name)!r}" for name in message.__struct_fields__ if name not in skip
        )
        return f"{type(message).__name__}({fields})"
    return repr(message)


def _step(what: str, text: str) -> None:
    print(f"  {what:<10} {text}")


async def run_demo(*, trace: bool = False, metrics: bool = False) -> None:
    """Run the demo, printing to stdout; with `trace`, then its spans; with `metrics`, its metrics."""
    spans = _span_exporter() if trace else None
    registry = catga.observability.MetricsRegistry() if metrics else None
    config = catga.Config.default()
    if spans is not None:
        config = config.with_(tracing=catga.behaviors.Tracing(tracer_provider=spans[0]))
    if registry is not None:
        config = config.with_(metrics=catga.behaviors.Metrics(registry=registry))
    await _run(catga.Mediator(config=config))
    if spans is not None:
        print("\nspans (OpenTelemetry SDK, kept in memory; `--trace`):")
        _print_span_tree(spans[1].get_finished_spans())
    if registry is not None:
        print("\nmetrics (Prometheus text format; `--metrics`):")
        print(registry.prometheus_text(), end="")


async def _run(mediator: catga.Mediator) -> None:
    orders: dict[str, Order] = {}

    async def audit(message: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        name = type(message).__name__
        _step("behaviour", f"audit: -> {name}")
        start = time.perf_counter()
        try:
            result = await call_next(message)
        except Exception as exc:
            _step("behaviour", f"audit: <- {name} raised {type(exc).__name__} after {_elapsed(start)}")
            raise
        _step("behaviour", f"audit: <- {name} ok after {_elapsed(start)}")
        return result

    # Around the handlers of commands and queries (`catga.Request`), not of events.
    mediator.add_behavior(audit, for_type=catga.Request)

    @mediator.handler
    async def place_order(cmd: PlaceOrder) -> str:
        if cmd.amount <= 0:
            _step("handler", f"place_order: rejects amount {cmd.amount}")
            raise ValueError(f"`amount` must be positive, got `{cmd.amount}`")
        order_id = f"o-{len(orders) + 1}"
        orders[order_id] = Order(order_id, cmd.customer, cmd.amount)
        _step("handler", f"place_order: stored {order_id}, publishing OrderPlaced")
        await mediator.publish(OrderPlaced(order_id=order_id, customer=cmd.customer))
        return order_id

    @mediator.handler
    async def email_customer(evt: OrderPlaced) -> None:
        _step("handler", f"email_customer: mail {evt.customer} about {evt.order_id}")
        _step("", f"the event's correlation_id={evt.correlation_id}")

    @mediator.handler
    async def reserve_stock(evt: OrderPlaced) -> None:
        _step("handler", f"reserve_stock: reserve {orders[evt.order_id].amount} items for {evt.order_id}")

    @mediator.handler
    async def get_order(query: GetOrder) -> Order:
        return orders[query.order_id]

    core = "the pure-Python core" if catga.PURE_PYTHON else "the native (Rust) core"
    print(f"catga demo, on {core}")
    print("handlers: PlaceOrder -> place_order, GetOrder -> get_order, OrderPlaced -> email_customer, reserve_stock")
    print("behaviour: audit, around every command and query")

    place = PlaceOrder(customer="ada", amount=3)
    print(f"\nsend {_show(place)}, message_id={place.message_id}")
    order_id = await mediator.send(place)
    _step("returned", repr(order_id))

    query = GetOrder(order_id=order_id)
    print(f"\nsend {_show(query)}")
    order = await mediator.send(query)
    _step("returned", _show(order))

    bad = PlaceOrder(customer="bob", amount=0)
    print(f"\nsend_result {_show(bad)}")
    _show_result(await mediator.send_result(bad))

    orphan = CancelOrder(order_id="o-9")
    print(f"\nsend_result {_show(orphan)}, which has no handler")
    _show_result(await mediator.send_result(orphan))


def _show_result(result: "catga.Result[Any]") -> None:
    if result.ok:
        _step("result", f"ok=True value={result.value!r}")
        return
    _step("result", f"ok=False code={result.code.name if result.code is not None else None}")
    error = result.error
    if error is not None:
        _step("error", f"{type(error).__name__}: {error}")
        if error.__cause__ is not None:
            _step("cause", f"{type(error.__cause__).__name__} (the handler's exception, as error.__cause__)")


def _span_exporter() -> tuple[Any, Any]:
    """A tracer provider of the OpenTelemetry SDK that keeps its spans in memory, and its exporter."""
    try:
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    except ImportError:
        from catga.cli._common import CliError

        raise CliError("`--trace` needs the OpenTelemetry SDK: pip install opentelemetry-sdk") from None
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return provider, exporter


def _print_span_tree(spans: "Sequence[Any]") -> None:
    """Each span under its parent, in start order: name, duration, outcome."""
    children: dict[int | None, list[Any]] = {}
    ids = {span.context.span_id for span in spans}
    for span in sorted(spans, key=lambda span: span.start_time):
        parent = span.parent.span_id if span.parent is not None and span.parent.span_id in ids else None
        children.setdefault(parent, []).append(span)

    def show(parent: int | None, depth: int) -> None:
        for span in children.get(parent, ()):
            attributes = span.attributes or {}
            duration = (span.end_time - span.start_time) / 1e6
            outcome = attributes.get("catga.outcome", "")
            cached = " (stored result)" if attributes.get("catga.from_cache") else ""
            print(f"  {'  ' * depth}{span.name}  {duration:.3f} ms  {outcome}{cached}")
            show(span.context.span_id, depth + 1)

    show(None, 0)


def _elapsed(start: float) -> str:
    return f"{(time.perf_counter() - start) * 1e6:.0f} us"
