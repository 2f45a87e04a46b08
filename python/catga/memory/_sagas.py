"""`MemorySagaStore`: saga states in a dict of this process, compare-and-set on `version` (issue 6)."""

import threading
from collections.abc import Sequence

from catga._saga_state import SagaState, SagaStatus, decode_state, encode_state

__all__ = ["MemorySagaStore"]

_IN_PROGRESS = (SagaStatus.RUNNING, SagaStatus.COMPENSATING)


class MemorySagaStore:
    """The in-process `catga.stores.SagaStore`: every saga's state, encoded, in a dict.

    States are kept as the bytes of `encode_state` (not as objects), so that what a caller changes
    in a state it holds never changes the store behind its back, and so that the store behaves like
    the remote ones: a record that does not decode raises `catga.PersistenceError` naming the saga.
    Safe to share between threads and event loops; it forgets everything when the process ends, so
    it suits tests and single-process applications (a saga whose process died cannot be recovered
    by another one).

    >>> import asyncio, catga
    >>> store = MemorySagaStore()
    >>> state = catga.SagaState(saga_id="s-1", name="place-order", status=catga.SagaStatus.RUNNING,
    ...                         data={}, steps=[])
    >>> asyncio.run(store.create(state)), asyncio.run(store.create(state))
    (True, False)
    >>> asyncio.run(store.get("s-1")).status
    <SagaStatus.RUNNING: 'running'>
    """

    __slots__ = ("_lock", "_records")

    def __init__(self) -> None:
        # saga id -> encoded state, in creation order (the listings are oldest first).
        self._records: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __repr__(self) -> str:
        return f"<MemorySagaStore sagas={len(self)}>"

    async def create(self, state: SagaState) -> bool:
        """Store a new saga; `False`, storing nothing, when its id exists."""
        raw = encode_state(state)
        with self._lock:
            if state.saga_id in self._records:
                return False
            self._records[state.saga_id] = raw
            return True

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga's state, or `None`; a corrupt record raises `PersistenceError` naming it."""
        with self._lock:
            raw = self._records.get(saga_id)
        return None if raw is None else decode_state(saga_id, raw)

    async def save(self, state: SagaState, expected_version: int) -> bool:
        """Replace the stored state if it is at `expected_version`; whether it was replaced."""
        raw = encode_state(state)
        with self._lock:
            stored = self._records.get(state.saga_id)
            if stored is None or decode_state(state.saga_id, stored).version != expected_version:
                return False
            self._records[state.saga_id] = raw
            return True

    def _decoded(self) -> list[SagaState]:
        with self._lock:
            records = list(self._records.items())
        return [decode_state(saga_id, raw) for saga_id, raw in records]

    async def list(self, status: SagaStatus | None = None, limit: int | None = 100) -> Sequence[SagaState]:
        """Up to `limit` sagas (`None`: all), with that status if given, oldest first."""
        states = [state for state in self._decoded() if status is None or state.status is status]
        states.sort(key=lambda state: state.created_at)
        return states if limit is None else states[:limit]

    async def expired(self, now: float, limit: int | None = 100) -> Sequence[SagaState]:
        """In-progress sagas whose lease expired before `now` (UNIX seconds), or that have none."""
        states = [
            state
            for state in self._decoded()
            if state.status in _IN_PROGRESS and (state.lease_expires is None or state.lease_expires < now)
        ]
        states.sort(key=lambda state: state.created_at)
        return states if limit is None else states[:limit]

    async def delete(self, saga_id: str) -> bool:
        """Remove a saga; whether there was one."""
        with self._lock:
            return self._records.pop(saga_id, None) is not None
