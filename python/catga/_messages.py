"""Message base classes, wire names and the context of the message being handled.

Messages are `msgspec.Struct`s: fast to build, typed, and serialisable by msgspec. A metaclass gives
each message class its own wire name (API.md section 1) and enters it in the process-wide registry
that stores and transports decode with.
"""

import threading
import weakref
from typing import Any, Final, Generic, TypeAlias, TypeVar, final

import msgspec

from catga._core import CURRENT_MESSAGE, new_id

__all__ = [
    "Command",
    "Event",
    "Message",
    "MessageContext",
    "MessageId",
    "Query",
    "Request",
    "current_context",
    "wire_name",
]

MessageId: TypeAlias = int
"""A message id: a 63-bit snowflake from `catga.new_id()`."""

T_co = TypeVar("T_co", covariant=True)

# The key of the tag in encoded bodies. Not msgspec's default `"type"`, which would forbid a message
# field called `type`; `$type` can never be a field name, and is what .NET (the original Catga's
# home) uses for the same purpose.
TAG_FIELD: Final = "$type"

_get_current = CURRENT_MESSAGE.get


def _parent_correlation_id() -> int | None:
    """The default `correlation_id`: the effective correlation id of the message being handled."""
    parent = _get_current(None)
    if parent is None:
        return None
    return _effective_correlation_id(parent)


def _effective_correlation_id(message: object) -> int | None:
    if isinstance(message, Message):
        return message.correlation_id or message.message_id
    # A plain request object (a dataclass, say) may carry ids of its own; anything that is not an
    # int is not one of ours and is not propagated.
    value = getattr(message, "correlation_id", None) or getattr(message, "message_id", None)
    return value if isinstance(value, int) else None


def message_ids(message: object) -> tuple[int | None, int | None]:
    """`(message_id, effective correlation id)` of a message, as logs and spans report them;
    `None` where it has none (a plain object without int ids)."""
    message_id = getattr(message, "message_id", None)
    if not isinstance(message_id, int):
        message_id = None
    correlation_id = getattr(message, "correlation_id", None)
    if not isinstance(correlation_id, int):
        correlation_id = None
    return message_id, correlation_id or message_id


# ---------------------------------------------------------------------------------- the registry

_registry_lock = threading.Lock()
# wire name -> (module.QualName of the class, the class). Weak: a class defined in a function (or a
# test) goes away with it instead of living in the registry forever.
_registry: dict[str, tuple[str, "weakref.ref[type]"]] = {}


def _register(cls: type, name: str) -> None:
    origin = f"{cls.__module__}.{cls.__qualname__}"
    with _registry_lock:
        entry = _registry.get(name)
        if entry is not None:
            existing = entry[1]()
            # The same module.QualName defined again (a reloaded module, a class made in a function
            # that runs twice) replaces the entry; a different class is a real clash.
            if existing is not None and existing is not cls and entry[0] != origin:
                raise ValueError(
                    f"wire name `{name}` is used by two classes: `{entry[0]}` and `{origin}`; "
                    f'give one of them its own tag, e.g. `class {cls.__name__}(..., tag="...")`'
                )
        _registry[name] = (origin, weakref.ref(cls))


def _lookup_wire_name(name: str) -> type:
    """The message class registered under a wire name (`KeyError` if none is)."""
    entry = _registry.get(name)
    cls = entry[1]() if entry is not None else None
    if cls is None:
        raise KeyError(f"no message class has the wire name `{name}`")
    return cls


def wire_name(cls: type) -> str:
    """The name a message type travels under: its own msgspec `tag`, else `module.QualName`.

    >>> class PlaceOrder(Command[str], tag="orders.place"):
    ...     customer: str
    >>> wire_name(PlaceOrder)
    'orders.place'
    >>> class CancelOrder(PlaceOrder):  # a subclass does not inherit the tag
    ...     pass
    >>> wire_name(CancelOrder).endswith(".CancelOrder")
    True
    """
    try:
        # Looked up in the class's own namespace: a subclass must not answer with its parent's.
        name: str | None = cls.__dict__.get("__catga_wire_name__")
    except AttributeError:
        name = None
    if name is not None:
        return name
    if not isinstance(cls, type):
        raise TypeError(f"`wire_name` takes a class, got `{cls!r}`")
    return f"{cls.__module__}.{cls.__qualname__}"


class _MessageMeta(msgspec.StructMeta):
    """Gives every message class its own tag and wire name, and registers it.

    msgspec lets a subclass inherit its parent's tag; catga does not, so that an encoded body
    always names its own class.
    """

    def __new__(
        mcls,
        name: str,
        bases: tuple[type, ...],
        namespace: dict[str, Any],
        /,
        **kwargs: Any,
    ) -> "_MessageMeta":
        if kwargs.get("tag") is None:  # msgspec reads `tag=None` as "inherit the parent's"
            kwargs["tag"] = f"{namespace['__module__']}.{namespace['__qualname__']}"
        cls = super().__new__(mcls, name, bases, namespace, **kwargs)
        tag = cls.__struct_config__.tag
        # An explicit `tag=False` keeps the class untagged for msgspec; its wire name is still
        # module.QualName.
        wire = f"{cls.__module__}.{cls.__qualname__}" if tag is None else str(tag)
        _register(cls, wire)
        type.__setattr__(cls, "__catga_wire_name__", wire)
        return cls


# --------------------------------------------------------------------------------- the messages


class Message(msgspec.Struct, metaclass=_MessageMeta, kw_only=True, tag="catga.Message", tag_field=TAG_FIELD):
    """The base of every catga message: a `msgspec.Struct` with a message id and a correlation id.

    `message_id` is a fresh snowflake id unless given. `correlation_id` defaults to the effective
    correlation id of the message being handled when this one is created (so a command sent from
    an event handler joins its conversation), and is `None` for a top-level message. The base
    fields are keyword-only, so subclasses may declare positional fields.

    Subclass `Command`, `Query` or `Event` rather than `Message` itself.
    """

    message_id: MessageId = msgspec.field(default_factory=new_id)
    correlation_id: MessageId | None = msgspec.field(default_factory=_parent_correlation_id)


class Request(Message, Generic[T_co], tag="catga.Request"):
    """A message with exactly one handler, whose return value `T_co` the sender gets back.

    The common base of `Command` and `Query`.
    """


class Command(Request[T_co], Generic[T_co], tag="catga.Command"):
    """A request to change something; `T_co` is what its handler returns.

    >>> class PlaceOrder(Command[str]):
    ...     customer: str
    ...     amount: int
    >>> cmd = PlaceOrder("ada", 3)
    >>> cmd.customer, cmd.amount, cmd.correlation_id
    ('ada', 3, None)
    """


class Query(Request[T_co], Generic[T_co], tag="catga.Query"):
    """A request to read something without changing it; `T_co` is the answer's type.

    >>> class GetOrder(Query[dict]):
    ...     order_id: str
    >>> GetOrder("o-1").order_id
    'o-1'
    """


class Event(Message, tag="catga.Event"):
    """A fact that happened; `publish` runs every handler of its type (and of its base types).

    >>> class OrderPlaced(Event):
    ...     order_id: str
    >>> OrderPlaced("o-1").order_id
    'o-1'
    """


# ---------------------------------------------------------------------------------- the context


@final
class MessageContext:
    """The message whose handler is running, with its ids; see `current_context()`.

    `correlation_id` is the effective one: the message's own `correlation_id`, else its
    `message_id`. For a plain (non-`Message`) object without ids both are `None`.
    """

    __slots__ = ("_message",)

    def __init__(self, message: object) -> None:
        self._message = message

    @property
    def message(self) -> object:
        """The message being handled (as it was sent, before any behaviour replaced it)."""
        return self._message

    @property
    def message_id(self) -> MessageId | None:
        """Its `message_id`, or `None` for an object without one."""
        value = getattr(self._message, "message_id", None)
        return value if isinstance(value, int) else None

    @property
    def correlation_id(self) -> MessageId | None:
        """The effective correlation id: `correlation_id or message_id`."""
        return _effective_correlation_id(self._message)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, MessageContext):
            return NotImplemented
        return self._message is other._message

    def __hash__(self) -> int:
        return id(self._message)

    def __repr__(self) -> str:
        return (
            f"MessageContext(message={type(self._message).__qualname__}, "
            f"message_id={self.message_id}, correlation_id={self.correlation_id})"
        )


def current_context() -> MessageContext | None:
    """The context of the message whose handler is running, or `None` outside a handler.

    Set while a handler runs under a pipeline with behaviours (`Config.minimal()` with no user
    behaviour sets none). Built on demand: the hot path stores only the message itself.

    >>> current_context() is None
    True
    """
    message = _get_current(None)
    return None if message is None else MessageContext(message)
