"""mediatr's four exceptions and its registration checks, as `mediatr.exceptions` has them.

The classes, their attributes (`request`, `handler`, `behavior`) and which check raises which are
mediatr's; the messages are catga's (what failed, the offending value in backticks).
"""

import inspect
from typing import Any

__all__ = [
    "HandlerNotFoundError",
    "InvalidBehaviorError",
    "InvalidHandlerError",
    "InvalidRequest",
    "raise_if_behavior_is_invalid",
    "raise_if_handler_is_invalid",
    "raise_if_handler_not_found",
    "raise_if_request_none",
]


class HandlerNotFoundError(Exception):
    """No handler is registered for the request's class (nor for its class name).

    >>> HandlerNotFoundError("a request").request
    'a request'
    """

    def __init__(self, request: Any) -> None:
        self.request = request
        name = type(request).__qualname__
        super().__init__(
            f"no handler registered for `{name}` (request `{request!r}`): register one with "
            "`Mediator.register_handler` or `@Mediator.handler`, its first parameter annotated "
            f"with `{name}`"
        )


class InvalidRequest(Exception):
    """The request is `None` (mediatr's `Mediator.send(None)` called on the class)."""

    def __init__(self) -> None:
        super().__init__("the request must be an object of a request class, got `None`")


class InvalidHandlerError(Exception):
    """A handler that is neither a function of one parameter nor a class whose `handle` takes
    `(self, request)`; also a behaviour whose `handle` is not a plain function."""

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        super().__init__(
            f"invalid handler `{handler!r}`: a handler is a function `(request)` or a class with a "
            "method `handle(self, request)`, the request's type in the first parameter's annotation"
        )


class InvalidBehaviorError(Exception):
    """A behaviour that is neither a function `(request, next)` nor a class whose `handle` takes
    `(self, request, next)`."""

    def __init__(self, behavior: Any) -> None:
        self.behavior = behavior
        super().__init__(
            f"invalid behavior `{behavior!r}`: a behavior is a function `(request, next)` or a class "
            "with a method `handle(self, request, next)`, where `next()` takes no argument"
        )


def raise_if_handler_not_found(handler: Any, request: Any) -> None:
    if not handler:
        raise HandlerNotFoundError(request)


def raise_if_request_none(request: Any) -> None:
    if request is None:
        raise InvalidRequest()


def raise_if_handler_is_invalid(handler: Any) -> None:
    is_function = inspect.isfunction(handler)
    func = handler if is_function else handle_function(handler)
    if func is None:
        raise InvalidHandlerError(func)
    if len(inspect.signature(func).parameters) != (1 if is_function else 2):
        raise InvalidHandlerError(handler)


def raise_if_behavior_is_invalid(behavior: Any) -> None:
    is_function = inspect.isfunction(behavior)
    func = behavior if is_function else getattr(behavior, "handle", None)
    # As in mediatr: a behaviour object's bound `handle` is not a function, so only functions and
    # classes pass; the error for that case is `InvalidHandlerError`, also as in mediatr.
    if func is None or not inspect.isfunction(func):
        raise InvalidHandlerError(func)
    if len(inspect.signature(func).parameters) != (2 if is_function else 3):
        raise InvalidBehaviorError(behavior)


def handle_function(handler: Any) -> Any:
    """The plain function behind `handler.handle` (a class's function, or an instance's method's),
    or `None`."""
    handle = getattr(handler, "handle", None)
    if handle is None:
        return None
    if inspect.isfunction(handle):
        return handle
    if inspect.ismethod(handle):
        return type(handler).handle
    return None
