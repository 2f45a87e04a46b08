"""Registration in catga.compat.mediatr: the keys mediatr derives from annotations, first-wins,
de-duplication, the shape checks and their exceptions, and the registries as plain dicts."""

import __future__

import inspect
from typing import Any

import pytest

from catga.compat import mediatr
from catga.compat.mediatr import InvalidBehaviorError, InvalidHandlerError, Mediator


class Ping:
    pass


class Pong:
    pass


def test_a_function_handler_is_keyed_by_its_first_parameters_annotation() -> None:
    async def handle(request: Ping) -> str:
        return "pong"

    Mediator.register_handler(handle)
    assert mediatr.__handlers__ == {Ping: handle}


def test_a_class_handler_is_keyed_by_the_parameter_after_self() -> None:
    class PingHandler:
        def handle(self, request: Ping) -> str:
            return "pong"

    instance = PingHandler()
    Mediator.register_handler(PingHandler)
    assert mediatr.__handlers__ == {Ping: PingHandler}
    assert mediatr.extract_request_type(instance) is Ping


def test_an_unannotated_handler_is_keyed_by_parameter_empty() -> None:
    def handle(request):  # type: ignore[no-untyped-def]
        return 1

    Mediator.register_handler(handle)
    assert list(mediatr.__handlers__) == [inspect.Parameter.empty]


def test_a_postponed_annotation_is_kept_as_its_string() -> None:
    namespace: dict[str, Any] = {}
    source = "class Later: ...\nasync def handle(request: Later) -> int:\n    return 1\n"
    exec(compile(source, "<postponed>", "exec", flags=__future__.annotations.compiler_flag), namespace)
    Mediator.register_handler(namespace["handle"])
    assert list(mediatr.__handlers__) == ["Later"]


def test_the_first_handler_of_a_type_wins() -> None:
    def first(request: Ping) -> str:
        return "first"

    async def second(request: Ping) -> str:
        return "second"

    Mediator.register_handler(first)
    Mediator.register_handler(second)
    assert mediatr.__handlers__[Ping] is first
    assert Mediator.send(Ping()) == "first"


def test_behaviours_group_by_key_and_ignore_repeats() -> None:
    def for_ping(request: Ping, next: Any) -> Any:
        return next()

    def for_all(request: object, next: Any) -> Any:
        return next()

    def also_for_ping(request: Ping, next: Any) -> Any:
        return next()

    for behavior in (for_ping, for_all, for_ping, also_for_ping):
        Mediator.register_behavior(behavior)
    assert mediatr.__behaviors__ == {Ping: [for_ping, also_for_ping], object: [for_all]}
    assert mediatr.find_behaviors(Ping()) == [for_ping, also_for_ping, for_all]
    assert mediatr.find_behaviors(Pong()) == [for_all]


def test_decorators_register_and_return_what_they_decorate() -> None:
    @Mediator.handler
    async def handle(request: Ping) -> str:
        return "pong"

    @Mediator.behavior
    async def around(request: Ping, next: Any) -> Any:
        return await next()

    @Mediator.event_handler
    async def on_ping(event: Ping) -> None:
        pass

    assert inspect.iscoroutinefunction(handle)
    assert mediatr.__handlers__[Ping] is handle
    assert mediatr.__behaviors__[Ping] == [around]
    assert mediatr.__event_handlers__[Ping] == [on_ping]


def test_registration_functions_are_plain_functions_on_the_class() -> None:
    # mediatr's own suite checks this: they are static methods.
    for name in ("register_handler", "register_behavior", "register_event_handler", "handler", "behavior"):
        assert inspect.isfunction(getattr(Mediator, name)), name


@pytest.mark.parametrize(
    "handler",
    [
        pytest.param(lambda request, extra: None, id="function-with-two-parameters"),
        pytest.param(lambda: None, id="function-without-parameters"),
    ],
)
def test_a_handler_function_of_the_wrong_arity_is_refused(handler: Any) -> None:
    with pytest.raises(InvalidHandlerError) as caught:
        Mediator.register_handler(handler)
    assert caught.value.handler is handler
    assert "invalid handler" in str(caught.value)
    assert mediatr.__handlers__ == {}


def test_a_handler_class_whose_handle_has_the_wrong_arity_is_refused() -> None:
    class TooMany:
        def handle(self, request: Ping, extra: int) -> None:
            pass

    with pytest.raises(InvalidHandlerError) as caught:
        Mediator.register_handler(TooMany)
    assert caught.value.handler is TooMany


def test_something_without_a_handle_method_is_refused_naming_none() -> None:
    # mediatr reports the missing function (None), not the object.
    with pytest.raises(InvalidHandlerError) as caught:
        Mediator.register_handler(object())
    assert caught.value.handler is None
    assert "`None`" in str(caught.value)


def test_a_behaviour_of_the_wrong_arity_is_refused_with_invalid_behavior_error() -> None:
    def one_parameter(request: Ping) -> None:
        pass

    with pytest.raises(InvalidBehaviorError) as caught:
        Mediator.register_behavior(one_parameter)
    assert caught.value.behavior is one_parameter
    assert "next()" in str(caught.value)


def test_a_behaviour_instance_is_refused_as_mediatr_does() -> None:
    class Around:
        def handle(self, request: Ping, next: Any) -> Any:
            return next()

    instance = Around()
    with pytest.raises(InvalidHandlerError) as caught:
        Mediator.register_behavior(instance)
    assert caught.value.handler == instance.handle
    Mediator.register_behavior(Around)  # the class is fine
    assert mediatr.__behaviors__ == {Ping: [Around]}


def test_the_registries_are_dicts_that_programs_may_edit() -> None:
    def handle(request: Ping) -> str:
        return "edited"

    mediatr.__handlers__[Ping] = handle
    assert isinstance(mediatr.__handlers__, dict)
    assert Mediator.send(Ping()) == "edited"
    del mediatr.__handlers__[Ping]
    with pytest.raises(mediatr.HandlerNotFoundError):
        Mediator.send(Ping())


def test_the_module_mirrors_mediatrs_layout() -> None:
    from catga.compat.mediatr import exceptions, mediator

    assert mediatr.__version__ == "1.3.2"
    assert mediator.Mediator is Mediator
    assert exceptions.HandlerNotFoundError is mediatr.HandlerNotFoundError
    assert mediator.__handlers__ is mediatr.__handlers__
    for name in mediatr.__all__:
        assert hasattr(mediatr, name), name
