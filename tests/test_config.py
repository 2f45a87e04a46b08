"""`catga.Config` and the settings of the built-in behaviours (API.md section 5)."""

import dataclasses
import logging
import math
from typing import Any, cast

import pytest

import catga
from catga import Config, behaviors
from catga.behaviors import (
    Cache,
    CircuitBreaker,
    ConcurrencyLimit,
    DeadLetter,
    Idempotency,
    Logging,
    Metrics,
    RateLimit,
    Retry,
    Timeout,
    Tracing,
    Validation,
)
from catga.behaviors._builtins import BuiltinBehavior

FIELDS = [
    "logging",
    "tracing",
    "metrics",
    "rate_limit",
    "concurrency_limit",
    "circuit_breaker",
    "validation",
    "dead_letter",
    "retry",
    "timeout",
    "idempotency",
    "cache",
]
BUILTINS: list[type[BuiltinBehavior]] = [
    Logging,
    Tracing,
    Metrics,
    RateLimit,
    ConcurrencyLimit,
    CircuitBreaker,
    Validation,
    DeadLetter,
    Retry,
    Timeout,
]
BUILTINS += [Idempotency, Cache]
BUILTINS_IN_FIELD_ORDER: list[type[BuiltinBehavior]] = [
    Logging,
    Tracing,
    Metrics,
    RateLimit,
    ConcurrencyLimit,
    CircuitBreaker,
    Validation,
    DeadLetter,
    Retry,
    Timeout,
    Idempotency,
    Cache,
]
DEFAULT_ON = {"logging", "tracing", "metrics", "validation", "retry", "idempotency", "cache"}


def clock() -> float:
    return 0.0


# ---------------------------------------------------------------------------------------- Config


def test_fields_in_order() -> None:
    assert [field.name for field in dataclasses.fields(Config)] == FIELDS


def test_presets() -> None:
    assert Config.minimal() == Config(**dict.fromkeys(FIELDS))
    assert all(getattr(Config.minimal(), name) is None for name in FIELDS)
    default = Config.default()
    assert default == Config()
    for name, cls in zip(FIELDS, BUILTINS_IN_FIELD_ORDER, strict=True):
        value = getattr(default, name)
        if name in DEFAULT_ON:
            assert type(value) is cls, name
        else:
            assert value is None, name
    assert default.retry == Retry()  # the documented defaults
    assert default.logging == Logging(level=logging.DEBUG)


def test_presets_return_fresh_instances() -> None:
    first, second = Config.default(), Config()
    assert first.retry is not second.retry  # no shared state
    assert first.idempotency is not second.idempotency
    assert first == second  # equal settings
    assert Config.minimal().retry is None


def test_behaviours_compare_by_settings() -> None:
    assert Retry(max_attempts=5) == Retry(max_attempts=5)
    assert Retry(max_attempts=5) != Retry(max_attempts=4)
    assert Timeout(1.0) != Retry()
    assert hash(Timeout(2.0)) == hash(Timeout(2.0))
    assert RateLimit(1, 1, clock=clock) != RateLimit(1, 1)


def test_resilient_turns_everything_on_with_fresh_instances() -> None:
    first, second = Config.resilient(), Config.resilient()
    for name, cls in zip(FIELDS, BUILTINS_IN_FIELD_ORDER, strict=True):
        assert isinstance(getattr(first, name), cls)
        assert getattr(first, name) is not getattr(second, name)
    assert first.rate_limit == RateLimit(rate=1000.0, burst=1000.0)
    assert first.concurrency_limit == ConcurrencyLimit(max_concurrent=100, wait_timeout=5.0)
    assert first.circuit_breaker == CircuitBreaker(failure_threshold=5, reset_timeout=30.0)
    assert first.timeout == Timeout(30.0)
    assert first.dead_letter == DeadLetter()


def test_config_is_frozen() -> None:
    config = Config.minimal()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.retry = Retry()  # type: ignore[misc]


def test_with_returns_a_changed_copy() -> None:
    config = Config.minimal()
    retry = Retry(max_attempts=5)
    changed = config.with_(retry=retry, timeout=Timeout(2.0))
    assert changed.retry is retry
    assert changed.timeout is not None
    assert changed.timeout.seconds == 2.0
    assert config.retry is None
    assert changed.with_(retry=None).retry is None


def test_with_rejects_unknown_fields() -> None:
    with pytest.raises(TypeError, match="`retries`"):
        Config.minimal().with_(retries=None)


def test_fields_must_hold_their_behaviour() -> None:
    with pytest.raises(TypeError, match=r"`retry` must be a `catga\.behaviors\.Retry`"):
        Config(retry=Timeout(1.0))  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="`timeout`"):
        Config.minimal().with_(timeout=5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        cast(Any, Config)(Retry())  # keyword-only


def test_mediator_builds_with_every_builtin() -> None:
    config = Config.resilient()
    assert catga.Mediator(config=config).config is config


def test_mediator_always_builds_with_the_presets() -> None:
    assert catga.Mediator().config == Config.default()
    assert catga.Mediator(config=Config.minimal()).config == Config.minimal()
    with pytest.raises(TypeError, match="`config`"):
        catga.Mediator(config={"retry": None})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- behaviours


def test_behaviors_module_lists_every_builtin() -> None:
    assert sorted(behaviors.__all__) == sorted(cls.__name__ for cls in BUILTINS)
    for cls in BUILTINS:
        assert cls.__module__ == "catga.behaviors"
        assert cls.__doc__


def test_constructor_defaults() -> None:
    retry = Retry()
    assert (retry.max_attempts, retry.base_delay, retry.max_delay, retry.jitter, retry.retry_on) == (
        3,
        0.1,
        10.0,
        0.15,
        (),
    )
    assert Idempotency().store is None
    assert Idempotency().ttl == 86400.0
    assert Cache().store is None
    rate = RateLimit(10, 5)
    assert (rate.rate, rate.burst, rate.wait, rate.max_wait, rate.per_type) == (10, 5, False, None, False)
    assert (ConcurrencyLimit(4).max_concurrent, ConcurrencyLimit(4).wait_timeout) == (4, 5.0)
    assert (CircuitBreaker().failure_threshold, CircuitBreaker().reset_timeout) == (5, 30.0)
    assert Timeout(2.5).seconds == 2.5
    assert (DeadLetter().store, DeadLetter().max_size) == (None, 1000)
    assert Logging().level == logging.DEBUG
    assert repr(Tracing()) == "Tracing()"
    assert repr(Validation()) == "Validation()"


def test_constructors_take_the_documented_positional_order() -> None:
    retry = Retry(2, 0.5, 4.0, 0.0, (ValueError,))
    assert (retry.max_attempts, retry.base_delay, retry.max_delay, retry.jitter, retry.retry_on) == (
        2,
        0.5,
        4.0,
        0.0,
        (ValueError,),
    )
    rate = RateLimit(1.5, 3, True, 2.0, True)
    assert (rate.rate, rate.burst, rate.wait, rate.max_wait, rate.per_type) == (1.5, 3, True, 2.0, True)
    idempotency_store = catga.memory.MemoryIdempotencyStore(ttl=60.0)
    idempotency = Idempotency(idempotency_store, 60.0)
    assert (idempotency.store, idempotency.ttl) == (idempotency_store, 60.0)
    store = catga.memory.MemoryDeadLetterStore()
    dead_letter = DeadLetter(store, 5)
    assert (dead_letter.store, dead_letter.max_size) == (store, 5)


@pytest.mark.parametrize(
    ("cls", "kwargs", "parameter"),
    [
        (RateLimit, {"rate": 0, "burst": 1}, "rate"),
        (RateLimit, {"rate": -1.0, "burst": 1}, "rate"),
        (RateLimit, {"rate": 1, "burst": 0}, "burst"),
        (RateLimit, {"rate": 1, "burst": 1, "max_wait": 0}, "max_wait"),
        (ConcurrencyLimit, {"max_concurrent": 0}, "max_concurrent"),
        (ConcurrencyLimit, {"max_concurrent": 1, "wait_timeout": 0}, "wait_timeout"),
        (CircuitBreaker, {"failure_threshold": 0}, "failure_threshold"),
        (CircuitBreaker, {"reset_timeout": -5}, "reset_timeout"),
        (Timeout, {"seconds": 0}, "seconds"),
        (Timeout, {"seconds": math.nan}, "seconds"),
        (Idempotency, {"ttl": 0}, "ttl"),
        (DeadLetter, {"max_size": 0}, "max_size"),
        (Retry, {"max_attempts": 0}, "max_attempts"),
        (Retry, {"base_delay": -0.1}, "base_delay"),
        (Retry, {"max_delay": -1}, "max_delay"),
        (Retry, {"jitter": 1.5}, "jitter"),
        (Logging, {"level": "LOUD"}, "level"),
        (Logging, {"level": -1}, "level"),
    ],
)
def test_bad_values_raise_value_error_naming_the_parameter(cls: Any, kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(ValueError, match=f"`{parameter}`"):
        cls(**kwargs)


@pytest.mark.parametrize(
    ("cls", "kwargs", "parameter"),
    [
        (RateLimit, {"rate": "10", "burst": 1}, "rate"),
        (Timeout, {"seconds": True}, "seconds"),
        (ConcurrencyLimit, {"max_concurrent": 2.5}, "max_concurrent"),
        (Retry, {"max_attempts": 2.0}, "max_attempts"),
        (Retry, {"retry_on": 5}, "retry_on"),
        (Retry, {"retry_on": (ValueError, "x")}, "retry_on"),
        (CircuitBreaker, {"clock": 5}, "clock"),
        (DeadLetter, {"store": "store"}, "store"),
    ],
)
def test_wrong_types_raise_type_error_naming_the_parameter(cls: Any, kwargs: dict[str, Any], parameter: str) -> None:
    with pytest.raises(TypeError, match=f"`{parameter}`"):
        cls(**kwargs)


def test_time_based_behaviours_take_a_clock() -> None:
    assert RateLimit(1, 1, clock=clock).clock is clock
    assert CircuitBreaker(clock=clock).clock is clock
    assert Idempotency(clock=clock).clock is clock
    assert Cache(clock=clock).clock is clock
    assert RateLimit(1, 1).clock is None


def test_values_that_are_fine() -> None:
    assert Retry(max_attempts=1, base_delay=0, max_delay=0, jitter=0).max_attempts == 1
    assert Retry(retry_on=ConnectionError).retry_on == (ConnectionError,)
    assert Retry(retry_on=[ValueError, KeyError]).retry_on == (ValueError, KeyError)  # type: ignore[arg-type]
    assert Timeout(math.inf).seconds == math.inf
    assert Logging(level="info").level == logging.INFO
    assert Logging(level=logging.WARNING).level == logging.WARNING


def test_reprs() -> None:
    assert (
        repr(Retry(max_attempts=5)) == "Retry(max_attempts=5, base_delay=0.1, max_delay=10.0, jitter=0.15, retry_on=())"
    )
    assert repr(RateLimit(10, 5)) == "RateLimit(rate=10, burst=5, wait=False, max_wait=None, per_type=False)"
    assert repr(Timeout(1.0)) == "Timeout(seconds=1.0)"


def test_behaviours_have_slots() -> None:
    with pytest.raises(AttributeError):
        Retry().max_attempt = 4  # type: ignore[attr-defined]
