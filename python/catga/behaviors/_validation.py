"""The Validation behaviour's checks for one message type, decided when its route is compiled.

Three sources, whose errors are collected together (API.md section 6): msgspec `Meta` constraints
on the type's fields, the message's own `validate(self)` method, and the validators registered with
`@mediator.validator(T)` for the type or a base of it, in registration order.

msgspec checks constraints only when it decodes; a message built by its constructor is checked by
encoding it to msgpack and decoding it again (about 0.4 us for a small message, the cheapest of
the round trips measured: `msgspec.convert(to_builtins(m))` takes twice as long, and
`convert(m, from_attributes=True)` passes a struct through unchecked). Whether a type has any
constraint at all is read once from `msgspec.inspect`, so types without one pay nothing.
"""

import inspect
from collections.abc import Callable, Iterable
from typing import Any, Final

import msgspec
import msgspec.inspect as mi

from catga._errors import ValidationError

__all__ = ["ValidationPlan", "has_constraints"]

Validator = Callable[[Any], Any]
"""`(message) -> list[str] | None`, or a coroutine of it; may raise `ValidationError`."""

_encoder: Final = msgspec.msgpack.Encoder()

# The attributes of `msgspec.inspect` types that hold a constraint when not `None`.
_CONSTRAINTS: Final = ("gt", "ge", "lt", "le", "multiple_of", "pattern", "min_length", "max_length", "tz")
# The attributes that hold nested types (or tuples of types / fields).
_NESTED: Final = ("item_type", "key_type", "value_type", "item_types", "types", "fields", "type")


def has_constraints(message_type: type) -> bool:
    """Whether msgspec knows a constraint on any field of `message_type` (nested types included)."""
    try:
        info = mi.type_info(message_type)
    except Exception:  # not a type msgspec understands (a pydantic model, say)
        return False
    return _constrained(info, set())


def _constrained(node: object, seen: set[int]) -> bool:
    if id(node) in seen:  # recursive types refer back to themselves
        return False
    seen.add(id(node))
    for name in _CONSTRAINTS:
        if getattr(node, name, None) is not None:
            return True
    for name in _NESTED:
        child = getattr(node, name, None)
        if child is None:
            continue
        children = child if isinstance(child, tuple) else (child,)
        for item in children:
            if isinstance(item, mi.Field):
                item = item.type
            if isinstance(item, mi.Type) and _constrained(item, seen):
                return True
    return False


def _is_async(function: object) -> bool:
    return inspect.iscoroutinefunction(function) or inspect.iscoroutinefunction(getattr(function, "__call__", None))  # noqa: B004


def _own_validate(message_type: type) -> Callable[[Any], Any] | None:
    """The type's `validate(self)` method: a plain function on the class, callable with `self` alone.

    Class and static methods named `validate` (pydantic's deprecated `BaseModel.validate`, say) are
    something else and are left alone.
    """
    try:
        member = inspect.getattr_static(message_type, "validate")
    except AttributeError:
        return None
    if not inspect.isfunction(member):
        return None
    try:
        inspect.signature(member).bind(None)
    except TypeError:
        return None
    except ValueError:  # no signature: trust it
        pass
    return member


class ValidationPlan:
    """The checks of one message type. `empty` when there is nothing to check."""

    __slots__ = ("_decoder", "_message_type", "_validate", "_validators", "is_async", "wire_name")

    def __init__(self, message_type: type, wire_name: str, validators: Iterable[Validator]) -> None:
        self._message_type = message_type
        self.wire_name = wire_name
        self._decoder: msgspec.msgpack.Decoder[Any] | None = (
            msgspec.msgpack.Decoder(message_type) if has_constraints(message_type) else None
        )
        self._validate = _own_validate(message_type)
        self._validators = tuple(validators)
        self.is_async = any(_is_async(v) for v in self._validators) or (
            self._validate is not None and _is_async(self._validate)
        )

    @property
    def empty(self) -> bool:
        return self._decoder is None and self._validate is None and not self._validators

    @property
    def has_constraints(self) -> bool:
        return self._decoder is not None

    def _constraint_errors(self, message: object, errors: list[str]) -> None:
        decoder = self._decoder
        if decoder is None:
            return
        try:
            body = _encoder.encode(message)
        except Exception:  # a field msgspec cannot encode: its constraints cannot be checked
            return
        try:
            decoder.decode(body)
        except msgspec.ValidationError as exc:
            errors.append(str(exc))

    def check_sync(self, message: object) -> list[str]:
        """Every error of `message` (for a plan whose checks are all sync)."""
        errors: list[str] = []
        self._constraint_errors(message, errors)
        if self._validate is not None:
            _run_sync(self._validate, message, errors, "validate")
        for validator in self._validators:
            _run_sync(validator, message, errors, _name(validator))
        return errors

    async def check(self, message: object) -> list[str]:
        """Every error of `message`, awaiting the async checks."""
        errors: list[str] = []
        self._constraint_errors(message, errors)
        checks: tuple[Validator, ...] = self._validators
        if self._validate is not None:
            checks = (self._validate, *checks)
        for check in checks:
            try:
                result = check(message)
                if inspect.isawaitable(result):
                    result = await result
            except ValidationError as exc:
                errors.extend(exc.errors)
                continue
            _collect(result, errors, _name(check))
        return errors

    def error(self, errors: list[str]) -> ValidationError:
        return ValidationError(errors, message_type=self.wire_name)

    def __repr__(self) -> str:
        sources = [
            name
            for name, on in (
                ("constraints", self._decoder is not None),
                ("validate", self._validate is not None),
                (f"{len(self._validators)} validators", bool(self._validators)),
            )
            if on
        ]
        return f"<ValidationPlan {self.wire_name}: {', '.join(sources) or 'nothing'}>"


def _name(function: object) -> str:
    name = getattr(function, "__qualname__", None)
    return name if isinstance(name, str) else type(function).__qualname__


def _run_sync(check: Validator, message: object, errors: list[str], name: str) -> None:
    try:
        result = check(message)
    except ValidationError as exc:
        errors.extend(exc.errors)
        return
    if inspect.isawaitable(result):
        close = getattr(result, "close", None)
        if close is not None:
            close()
        raise TypeError(f"validator `{name}` is async: use `await mediator.send(...)`, not `send_sync`")
    _collect(result, errors, name)


def _collect(result: object, errors: list[str], name: str) -> None:
    """Add what a validator returned: `None` or an empty list (valid), a string, or strings."""
    if result is None:
        return
    if isinstance(result, str):
        errors.append(result)
        return
    if isinstance(result, Iterable):
        errors.extend(str(item) for item in result)
        return
    raise TypeError(f"validator `{name}` must return a list of error strings or `None`, got `{result!r}`")
