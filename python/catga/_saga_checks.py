"""Argument checks and helpers the remote saga stores share (`catga.redis`, `catga.postgres`).

Bad types raise `TypeError` and bad values `ValueError`, each naming the argument, before any
round trip to a server.
"""

import math
from datetime import UTC, datetime
from typing import Final

from catga._saga_state import SagaState, SagaStatus

__all__ = [
    "IN_PROGRESS",
    "check_expected_version",
    "check_limit",
    "check_now",
    "check_saga_id",
    "check_state",
    "check_status",
    "created_at",
    "created_seconds",
]

IN_PROGRESS: Final = frozenset({SagaStatus.RUNNING, SagaStatus.COMPENSATING})


def check_saga_id(saga_id: object) -> str:
    if not isinstance(saga_id, str):
        raise TypeError(f"`saga_id` must be a str, got `{saga_id!r}`")
    return saga_id


def check_state(state: object) -> SagaState:
    if not isinstance(state, SagaState):
        raise TypeError(f"a saga store keeps `catga.SagaState`s, got `{state!r}`")
    check_saga_id(state.saga_id)
    if not isinstance(state.name, str):
        raise TypeError(f"the `name` of saga `{state.saga_id}` must be a str, got `{state.name!r}`")
    if not isinstance(state.status, SagaStatus):
        raise TypeError(f"the `status` of saga `{state.saga_id}` must be a `catga.SagaStatus`, got `{state.status!r}`")
    if isinstance(state.version, bool) or not isinstance(state.version, int):
        raise TypeError(f"the `version` of saga `{state.saga_id}` must be an int, got `{state.version!r}`")
    lease: object = state.lease_expires
    if lease is not None and (isinstance(lease, bool) or not isinstance(lease, int | float) or math.isnan(lease)):
        raise TypeError(f"the `lease_expires` of saga `{state.saga_id}` must be UNIX seconds or None, got `{lease!r}`")
    return state


def check_expected_version(state: SagaState, expected_version: object) -> int:
    if isinstance(expected_version, bool) or not isinstance(expected_version, int):
        raise TypeError(f"`expected_version` must be an int, got `{expected_version!r}`")
    if state.version != expected_version + 1:
        raise ValueError(
            f"saga `{state.saga_id}` saved at version `{state.version}` over `expected_version` "
            f"`{expected_version}`: a save stores the next version, `{expected_version + 1}`"
        )
    return expected_version


def check_status(status: object) -> SagaStatus | None:
    """`None`, a `SagaStatus`, or its value (`"running"`)."""
    if status is None or isinstance(status, SagaStatus):
        return status
    if isinstance(status, str):
        try:
            return SagaStatus(status)
        except ValueError:
            names = ", ".join(member.value for member in SagaStatus)
            raise ValueError(f"`status` must be one of {names}, got `{status}`") from None
    raise TypeError(f"`status` must be a `catga.SagaStatus` or None, got `{status!r}`")


def check_limit(limit: object) -> int | None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int)):
        raise TypeError(f"`limit` must be an int or None, got `{limit!r}`")
    if limit is not None and limit < 0:
        raise ValueError(f"`limit` must be >= 0 or None, got `{limit!r}`")
    return limit


def check_now(now: object) -> float:
    if isinstance(now, bool) or not isinstance(now, int | float):
        raise TypeError(f"`now` must be UNIX seconds (a number), got `{now!r}`")
    if math.isnan(now):
        raise ValueError("`now` must be UNIX seconds, got `nan`")
    return float(now)


def created_at(state: SagaState) -> datetime:
    """`state.created_at`, aware (a naive one is taken as UTC)."""
    when = state.created_at
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when


def created_seconds(state: SagaState) -> float:
    return created_at(state).timestamp()
