"""What a saga store keeps of one saga: `SagaState`, its steps, its history (issue 6).

A `SagaState` is written before and after every step and compensation, so a process that takes a
saga over (`SagaExecutor.recover`, after the owner's lease expired) knows exactly where it stood.
Stores hold it encoded with `encode_state` and read it back with `decode_state`, which turns a
corrupt record into a `PersistenceError` naming the saga (so one bad record never breaks a listing).
Every write is a compare-and-set on `version`: two processes can never both own a saga.
"""

import enum
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from catga._errors import PersistenceError

__all__ = [
    "HistoryEntry",
    "SagaState",
    "SagaStatus",
    "StepRecord",
    "StepStatus",
    "decode_state",
    "encode_state",
    "utcnow",
]


class SagaStatus(enum.StrEnum):
    """Where a saga stands. `RUNNING` and `COMPENSATING` are in progress (an owner holds a lease);
    `COMPLETED`, `COMPENSATED` and `FAILED` are final (`FAILED`: a compensation failed for good,
    the saga is dead-lettered and `recover`/`retry` may resume compensating)."""

    RUNNING = "running"
    COMPENSATING = "compensating"
    COMPLETED = "completed"
    COMPENSATED = "compensated"
    FAILED = "failed"

    @property
    def finished(self) -> bool:
        return self in _FINISHED


_FINISHED: Final = frozenset({SagaStatus.COMPLETED, SagaStatus.COMPENSATED, SagaStatus.FAILED})


class StepStatus(enum.StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"  # finally, after its attempts: not compensated (its action did not happen)
    COMPENSATING = "compensating"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class StepRecord(msgspec.Struct, kw_only=True):
    """One step of a saga as it ran: attempts of the action and of its compensation, and times."""

    name: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    compensation_attempts: int = 0
    started_at: datetime | None = None
    finished_at: datetime | None = None
    compensated_at: datetime | None = None
    error: str | None = None  # "Type: message" of the last failure of the action or compensation


class HistoryEntry(msgspec.Struct, kw_only=True):
    """One thing that happened, in order: `event` is e.g. `step_started`, `step_completed`,
    `step_failed`, `compensation_started`, `compensated`, `compensation_failed`, `taken_over`."""

    at: datetime
    event: str
    step: str | None = None
    attempt: int | None = None
    detail: str | None = None


class SagaState(msgspec.Struct, kw_only=True):
    """The stored state of one saga run.

    `version` starts at 1 and grows by one per write (the stores' compare-and-set); `owner` is the
    process running it (`host:pid:token`) and `lease_expires` (UNIX seconds) when another process
    may take it over; `step` is the step in progress (or being compensated); `steps` has one record
    per step of the definition, in order; `result_error` is the error of the step that failed.
    """

    saga_id: str
    name: str
    status: SagaStatus
    data: dict[str, Any]
    steps: list[StepRecord]
    version: int = 1
    step: str | None = None
    owner: str | None = None
    lease_expires: float | None = None
    error: str | None = None
    error_type: str | None = None
    history: list[HistoryEntry] = msgspec.field(default_factory=list)
    created_at: datetime = msgspec.field(default_factory=lambda: utcnow())
    updated_at: datetime = msgspec.field(default_factory=lambda: utcnow())


def utcnow() -> datetime:
    return datetime.now(UTC)


_encoder: Final = msgspec.json.Encoder()
_decoder: Final = msgspec.json.Decoder(SagaState)


def encode_state(state: SagaState) -> bytes:
    """The JSON bytes a store keeps (readable with `redis-cli` or `psql`)."""
    return _encoder.encode(state)


def decode_state(saga_id: str, raw: bytes | str) -> SagaState:
    """A stored state back; a record that does not decode → `PersistenceError` naming the saga."""
    try:
        return _decoder.decode(raw)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise PersistenceError(f"the stored state of saga `{saga_id}` is corrupt: {exc}", saga_id=saga_id) from exc
