"""catga: CQRS and an event-driven mediator for Python services, with a Rust hot core.

>>> import asyncio, catga
>>> class PlaceOrder(catga.Command[str]):
...     customer: str
>>> mediator = catga.Mediator()
>>> @mediator.handler
... async def place_order(cmd: PlaceOrder) -> str:
...     return f"order for {cmd.customer}"
>>> asyncio.run(mediator.send(PlaceOrder("ada")))
'order for ada'

The public names are listed in `__all__` (API.md sections 1-5, the sagas of section 9 and
the event sourcing of issue 7). Submodules such as
`catga.behaviors` are loaded on first attribute access.
"""

import importlib
from types import ModuleType
from typing import TYPE_CHECKING

from catga._aggregate import Aggregate, AggregateRepository, applies
from catga._config import Config
from catga._core import PURE_PYTHON, IdGenerator, IdParts, __version__, new_id, parse_id
from catga._dead_letters import DeadLetterRecord, DeadLetters
from catga._errors import (
    CatgaError,
    CircuitOpen,
    ConcurrencyConflict,
    ConcurrencyLimited,
    Conflict,
    DuplicateHandler,
    ErrorCode,
    HandlerFailed,
    HandlerNotFound,
    PersistenceError,
    PublishError,
    RateLimited,
    SagaFailed,
    SerializationError,
    Timeout,
    TransportError,
    ValidationError,
)
from catga._event_records import StoredEvent, upcaster
from catga._mediator import Mediator
from catga._messages import (
    Command,
    Event,
    Message,
    MessageContext,
    MessageId,
    Query,
    Request,
    current_context,
    wire_name,
)
from catga._projection import Projection, ProjectionRunner, current_transaction
from catga._result import Result
from catga._saga import Saga, SagaContext, SagaExecutor, SagaResult, SagaStep, send_step
from catga._saga_state import SagaState, SagaStatus

if TYPE_CHECKING:
    from catga import behaviors
    from catga import memory as memory
    from catga import stores as stores

__all__ = [
    "PURE_PYTHON",
    "Aggregate",
    "AggregateRepository",
    "CatgaError",
    "CircuitOpen",
    "Command",
    "ConcurrencyConflict",
    "ConcurrencyLimited",
    "Config",
    "Conflict",
    "DeadLetterRecord",
    "DeadLetters",
    "DuplicateHandler",
    "ErrorCode",
    "Event",
    "HandlerFailed",
    "HandlerNotFound",
    "IdGenerator",
    "IdParts",
    "Mediator",
    "Message",
    "MessageContext",
    "MessageId",
    "PersistenceError",
    "Projection",
    "ProjectionRunner",
    "PublishError",
    "Query",
    "RateLimited",
    "Request",
    "Result",
    "Saga",
    "SagaContext",
    "SagaExecutor",
    "SagaFailed",
    "SagaResult",
    "SagaState",
    "SagaStatus",
    "SagaStep",
    "SerializationError",
    "StoredEvent",
    "Timeout",
    "TransportError",
    "ValidationError",
    "__version__",
    "applies",
    "behaviors",
    "current_context",
    "current_transaction",
    "memory",
    "new_id",
    "parse_id",
    "send_step",
    "stores",
    "upcaster",
    "wire_name",
]

# Submodules reachable as `catga.<name>` after a plain `import catga`, and the extra (pip install
# catga[<extra>]) each needs beyond the core dependencies, if any. `asgi` has no dependencies of
# its own (`catga[server]` only adds uvicorn to run it).
_SUBMODULES: dict[str, str | None] = {
    "asgi": None,
    "behaviors": None,
    "compat": None,
    "health": None,
    "memory": None,
    "nats": "nats",
    "observability": None,
    "postgres": "postgres",
    "redis": "redis",
    "stores": None,
    "transports": None,
}

# Classes and functions defined in catga's private modules show up as `catga.X` (anyio does the
# same): reprs, tracebacks and docs then name the public path. The core's names are left alone
# (native types cannot be changed, and both cores must stay alike).
for _value in (
    Aggregate,
    AggregateRepository,
    CatgaError,
    CircuitOpen,
    Command,
    ConcurrencyConflict,
    ConcurrencyLimited,
    Config,
    Conflict,
    DeadLetterRecord,
    DeadLetters,
    DuplicateHandler,
    ErrorCode,
    Event,
    HandlerFailed,
    HandlerNotFound,
    Mediator,
    Message,
    MessageContext,
    PersistenceError,
    Projection,
    ProjectionRunner,
    PublishError,
    Query,
    RateLimited,
    Request,
    Result,
    Saga,
    SagaContext,
    SagaExecutor,
    SagaFailed,
    SagaResult,
    SagaState,
    SagaStatus,
    SagaStep,
    SerializationError,
    StoredEvent,
    Timeout,
    TransportError,
    ValidationError,
    applies,
    current_context,
    current_transaction,
    send_step,
    upcaster,
    wire_name,
):
    _value.__module__ = __name__
del _value


def __getattr__(name: str) -> ModuleType:
    extra = _SUBMODULES.get(name, "")
    if extra == "":
        raise AttributeError(f"module `catga` has no attribute `{name}`")
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            raise AttributeError(f"module `catga` has no attribute `{name}`") from None
        if extra is not None:
            raise ImportError(f"`catga.{name}` needs the `{extra}` extra: pip install catga[{extra}]") from exc
        raise
    globals()[name] = module
    return module


def __dir__() -> list[str]:
    return sorted({*globals(), *_SUBMODULES})
