"""The Validation behaviour (API.md section 6): validators, `validate()`, msgspec constraints."""

import dataclasses
from typing import Annotated, Any

import msgspec
import pytest

import catga
from catga import Config
from catga.behaviors import DeadLetter, Retry, Validation
from catga.behaviors._validation import ValidationPlan, has_constraints

Amount = Annotated[int, msgspec.Meta(gt=0)]


class Deposit(catga.Command[str]):
    account: str
    amount: int


class Transfer(catga.Command[str]):
    source: Annotated[str, msgspec.Meta(min_length=1)]
    amount: Amount = 1


class CheckedDeposit(catga.Command[str]):
    amount: int

    def validate(self) -> list[str]:
        return [] if self.amount < 1000 else [f"`amount` must be below 1000, got `{self.amount}`"]


class AllSources(catga.Command[str]):
    amount: Amount

    def validate(self) -> list[str]:
        return ["from validate()"]


class DepositPlaced(catga.Event):
    amount: Amount


def minimal_with_validation(**changes: Any) -> Config:
    return Config.minimal().with_(validation=Validation(), **changes)


def no_sleep_retry(**kwargs: Any) -> Retry:
    retry = Retry(**{"jitter": 0.0, **kwargs})

    async def sleep(delay: float) -> None:
        pass

    retry._sleep = sleep
    retry._sleep_sync = lambda delay: None
    return retry


# ----------------------------------------------------------------------------------- validators


async def test_a_sync_validator_fails_the_send_before_the_handler() -> None:
    mediator = catga.Mediator()
    calls: list[Deposit] = []

    @mediator.handler
    async def deposit(cmd: Deposit) -> str:
        calls.append(cmd)
        return "ok"

    @mediator.validator(Deposit)
    def positive(cmd: Deposit) -> list[str]:
        return [] if cmd.amount > 0 else [f"`amount` must be positive, got `{cmd.amount}`"]

    assert await mediator.send(Deposit("a", 5)) == "ok"
    with pytest.raises(catga.ValidationError) as caught:
        await mediator.send(Deposit("a", 0))
    assert caught.value.errors == ["`amount` must be positive, got `0`"]
    assert caught.value.code is catga.ErrorCode.VALIDATION_FAILED
    assert caught.value.details["message_type"] == catga.wire_name(Deposit)
    assert len(calls) == 1
    result = await mediator.send_result(Deposit("a", -1))
    assert isinstance(result.error, catga.ValidationError)


async def test_async_validators_and_raised_validation_errors() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")

    @mediator.validator(Deposit)
    async def account_known(cmd: Deposit) -> list[str]:
        return [] if cmd.account == "a" else [f"unknown account `{cmd.account}`"]

    @mediator.validator(Deposit)
    def raises(cmd: Deposit) -> None:
        if cmd.amount < 0:
            raise catga.ValidationError(["negative", "really negative"])

    assert await mediator.send(Deposit("a", 1)) == "ok"
    with pytest.raises(catga.ValidationError) as caught:
        await mediator.send(Deposit("b", -1))
    assert caught.value.errors == ["unknown account `b`", "negative", "really negative"]


async def test_validator_decorator_forms() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")

    @mediator.validator
    def by_annotation(cmd: Deposit) -> str | None:
        return "one string is one error" if cmd.amount == 1 else None

    def explicit(cmd: Deposit) -> tuple[str, ...]:
        return ("tuple error",) if cmd.amount == 2 else ()

    assert mediator.validator(Deposit, explicit) is explicit
    with pytest.raises(catga.ValidationError, match="one string is one error"):
        await mediator.send(Deposit("a", 1))
    with pytest.raises(catga.ValidationError, match="tuple error"):
        await mediator.send(Deposit("a", 2))
    with pytest.raises(TypeError, match="not callable"):
        mediator.validator(Deposit, 5)
    with pytest.raises(TypeError, match="annotation"):

        @mediator.validator
        def unannotated(cmd):  # type: ignore[no-untyped-def]
            return None


async def test_a_validator_returning_something_else_is_a_type_error() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")
    mediator.validator(Deposit, lambda cmd: 42)
    with pytest.raises(TypeError, match="must return a list of error strings"):
        await mediator.send(Deposit("a", 1))


async def test_a_validator_that_crashes_propagates_its_error() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")

    def broken(cmd: Deposit) -> list[str]:
        raise KeyError("oops")

    mediator.validator(Deposit, broken)
    with pytest.raises(KeyError):
        await mediator.send(Deposit("a", 1))


async def test_validators_of_a_base_type_apply_to_subclasses() -> None:
    class BigDeposit(Deposit):
        pass

    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")
    mediator.validator(catga.Command, lambda cmd: ["every command is invalid"])
    with pytest.raises(catga.ValidationError, match="every command is invalid"):
        await mediator.send(BigDeposit("a", 1))


async def test_registering_a_validator_recompiles_routes() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")
    assert await mediator.send(Deposit("a", 0)) == "ok"
    route = mediator._route(Deposit)
    mediator.validator(Deposit, lambda cmd: ["late"])
    assert mediator._route(Deposit) is not route
    with pytest.raises(catga.ValidationError, match="late"):
        await mediator.send(Deposit("a", 0))


async def test_validation_off_runs_no_validator() -> None:
    mediator = catga.Mediator(config=Config.default().with_(validation=None))
    mediator.register(Transfer, lambda cmd: "ok")
    mediator.validator(Transfer, lambda cmd: ["never asked"])
    assert await mediator.send(Transfer("", amount=0)) == "ok"


# ------------------------------------------------------------------------- validate() and Meta


async def test_the_messages_own_validate_method() -> None:
    mediator = catga.Mediator()
    mediator.register(CheckedDeposit, lambda cmd: "ok")
    assert await mediator.send(CheckedDeposit(5)) == "ok"
    with pytest.raises(catga.ValidationError) as caught:
        await mediator.send(CheckedDeposit(5000))
    assert caught.value.errors == ["`amount` must be below 1000, got `5000`"]


async def test_a_validate_method_may_raise_or_be_async() -> None:
    class Raising(catga.Command[str]):
        amount: int

        def validate(self) -> None:
            if self.amount < 0:
                raise catga.ValidationError([f"`amount` is `{self.amount}`"])

    class Async(catga.Command[str]):
        amount: int

        async def validate(self) -> list[str]:
            return ["async says no"] if self.amount < 0 else []

    mediator = catga.Mediator()
    mediator.register(Raising, lambda cmd: "ok")
    mediator.register(Async, lambda cmd: "ok")
    assert await mediator.send(Raising(1)) == "ok"
    with pytest.raises(catga.ValidationError, match="`amount` is `-1`"):
        await mediator.send(Raising(-1))
    assert await mediator.send(Async(1)) == "ok"
    with pytest.raises(catga.ValidationError, match="async says no"):
        await mediator.send(Async(-1))


async def test_msgspec_constraints_are_checked_for_constructed_messages() -> None:
    mediator = catga.Mediator()
    mediator.register(Transfer, lambda cmd: "ok")
    assert await mediator.send(Transfer("acct", amount=3)) == "ok"
    with pytest.raises(catga.ValidationError) as caught:
        await mediator.send(Transfer("acct", amount=0))
    [error] = caught.value.errors
    assert error == "Expected `int` >= 1 - at `$.amount`"  # msgspec's wording


async def test_errors_from_all_sources_are_collected() -> None:
    mediator = catga.Mediator()
    mediator.register(AllSources, lambda cmd: "ok")
    mediator.validator(AllSources, lambda cmd: ["from a validator"])

    async def async_one(cmd: AllSources) -> list[str]:
        return ["from an async validator"]

    mediator.validator(AllSources, async_one)
    with pytest.raises(catga.ValidationError) as caught:
        await mediator.send(AllSources(amount=-5))
    errors = caught.value.errors
    assert len(errors) == 4
    assert "$.amount" in errors[0]  # constraints, then validate(), then validators in order
    assert errors[1:] == ["from validate()", "from a validator", "from an async validator"]


def test_constraint_detection() -> None:
    class Plain(catga.Command[None]):
        name: str
        tags: list[str] = msgspec.field(default_factory=list)

    class Inner(msgspec.Struct):
        value: Annotated[float, msgspec.Meta(ge=0.0)]

    class Nested(catga.Command[None]):
        items: list[Inner]

    class Node(msgspec.Struct):
        children: "list[Node]"

    class Recursive(catga.Command[None]):
        root: Node

    class Sized(catga.Command[None]):
        items: Annotated[list[int], msgspec.Meta(max_length=3)]

    assert not has_constraints(Plain)
    assert not has_constraints(Recursive)
    assert has_constraints(Transfer)
    assert has_constraints(Nested)
    assert has_constraints(Sized)
    assert not has_constraints(int)
    assert not has_constraints(type("Opaque", (), {}))


async def test_nested_constraints_fail_validation() -> None:
    class Line(msgspec.Struct):
        quantity: Annotated[int, msgspec.Meta(ge=1)]

    class Order(catga.Command[str]):
        lines: list[Line]

    mediator = catga.Mediator()
    mediator.register(Order, lambda cmd: "ok")
    assert await mediator.send(Order([Line(1)])) == "ok"
    with pytest.raises(catga.ValidationError, match=r"\$\.lines\[1\]\.quantity"):
        await mediator.send(Order([Line(1), Line(0)]))


async def test_plain_types_classmethods_named_validate_are_left_alone() -> None:
    @dataclasses.dataclass
    class PydanticLike:
        amount: int

        @classmethod
        def validate(cls, value: object) -> "PydanticLike":  # pydantic's deprecated classmethod
            raise AssertionError("never called")

    mediator = catga.Mediator()
    mediator.register(PydanticLike, lambda cmd: "ok")
    assert await mediator.send(PydanticLike(1)) == "ok"


async def test_dataclass_constraints_are_checked() -> None:
    @dataclasses.dataclass
    class PlainTransfer:
        amount: Amount

    mediator = catga.Mediator()
    mediator.register(PlainTransfer, lambda cmd: "ok")
    with pytest.raises(catga.ValidationError, match=r"\$\.amount"):
        await mediator.send(PlainTransfer(0))


# ------------------------------------------------------------------------ cost and interplay


def test_a_type_with_nothing_to_check_has_no_validation_step() -> None:
    async def handle(cmd: Deposit) -> str:
        return "ok"

    mediator = catga.Mediator(config=minimal_with_validation())
    mediator.register(Deposit, handle)
    target, is_async, with_context = mediator._route(Deposit)[1][0]
    assert target is handle  # no layer at all
    assert (is_async, with_context) == (True, True)  # a built-in is on: the context is set
    assert ValidationPlan(Deposit, "d", []).empty
    assert not ValidationPlan(Transfer, "t", []).empty
    assert ValidationPlan(Transfer, "t", []).has_constraints


async def test_sync_validation_adds_no_coroutine() -> None:
    # A sync check is a plain function in front of the handler's coroutine.
    async def handle(cmd: Transfer) -> str:
        return "ok"

    mediator = catga.Mediator(config=minimal_with_validation())
    mediator.register(Transfer, handle)
    target, is_async, _ = mediator._route(Transfer)[1][0]
    assert is_async
    coroutine = target(Transfer("a"))
    assert coroutine.cr_code is handle.__code__
    coroutine.close()
    assert await mediator.send(Transfer("a")) == "ok"


async def test_validation_errors_are_never_retried_nor_dead_lettered() -> None:
    retry = no_sleep_retry(max_attempts=5, retry_on=(Exception,))
    mediator = catga.Mediator(config=Config.default().with_(retry=retry, dead_letter=DeadLetter()))
    calls: list[object] = []

    async def behaviour(message: Any, call_next: Any) -> Any:
        calls.append(message)
        raise catga.ValidationError(["raised inside"])  # by a user behaviour, inside Retry

    mediator.add_behavior(behaviour)
    mediator.register(Transfer, lambda cmd: "ok")
    with pytest.raises(catga.ValidationError):
        await mediator.send(Transfer(""))  # fails validation: nothing inside runs
    assert calls == []
    with pytest.raises(catga.ValidationError, match="raised inside"):
        await mediator.send(Transfer("a"))
    assert len(calls) == 1  # not retried
    assert await mediator.dead_letters.list() == []


async def test_event_handlers_are_validated_each() -> None:
    mediator = catga.Mediator()
    calls: list[str] = []
    mediator.register(DepositPlaced, lambda evt: calls.append("a"))
    mediator.register(DepositPlaced, lambda evt: calls.append("b"))
    await mediator.publish(DepositPlaced(5))
    assert calls == ["a", "b"]
    with pytest.raises(catga.PublishError) as caught:
        await mediator.publish(DepositPlaced(0))
    assert [type(e) for e in caught.value.exceptions] == [catga.ValidationError, catga.ValidationError]
    assert calls == ["a", "b"]


def test_send_sync_validates() -> None:
    mediator = catga.Mediator()
    mediator.register(Transfer, lambda cmd: "ok")
    assert mediator.send_sync(Transfer("a")) == "ok"
    with pytest.raises(catga.ValidationError):
        mediator.send_sync(Transfer("a", amount=0))

    async def async_check(cmd: Transfer) -> list[str]:
        return []

    mediator.validator(Transfer, async_check)
    with pytest.raises(TypeError, match="async validator"):
        mediator.send_sync(Transfer("a"))


def test_send_sync_rejects_a_sync_validator_that_returns_an_awaitable() -> None:
    mediator = catga.Mediator()
    mediator.register(Deposit, lambda cmd: "ok")

    async def check(cmd: Deposit) -> list[str]:
        return []

    mediator.validator(Deposit, lambda cmd: check(cmd))
    with pytest.raises(TypeError, match="is async"):
        mediator.send_sync(Deposit("a", 1))
