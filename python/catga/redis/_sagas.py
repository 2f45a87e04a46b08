"""`RedisSagaStore`: the saga states of every process of a cluster, written with a compare-and-set."""

from collections.abc import Sequence
from typing import Any, Final, cast

from catga._saga_checks import (
    IN_PROGRESS,
    check_expected_version,
    check_limit,
    check_now,
    check_saga_id,
    check_state,
    check_status,
    created_seconds,
)
from catga._saga_state import SagaState, SagaStatus, decode_state, encode_state
from catga.redis import _scripts
from catga.redis._client import RedisError, RedisStore

__all__ = ["RedisSagaStore"]

_STATUSES: Final = tuple(SagaStatus)
_STATUS_NAMES: Final = tuple(status.value for status in _STATUSES)  # the scripts' last arguments


class RedisSagaStore(RedisStore):
    """The `catga.stores.SagaStore` on Redis: one hash per saga, indexes in sorted sets.

    `url_or_client` is a `redis://` URL (the store owns the client it makes; close it with
    `aclose()`) or a `redis.asyncio.Redis` (yours: the store never closes it). Under `prefix`:

    - `s:<saga_id>`, a hash: `version`, `status` and `state`, the JSON of `catga.encode_state`
      (`redis-cli HGET catga:saga:s:<id> state` shows it);
    - `index`, every saga id scored by its creation time (UNIX seconds): the listings are oldest
      first (ties by id);
    - `status:<status>`, the same for the sagas with that status (one sorted set per status);
    - `leases`, the sagas in progress (`RUNNING`, `COMPENSATING`) scored by `lease_expires`
      (`-inf` without a lease): `expired(now)` reads the ones scored before `now`.

    `create` (the hash only if absent), `save` (a compare-and-set on the `version` field, so the
    script never decodes the JSON), and `delete` are each one Lua script that also updates the
    indexes, so they are atomic across every process; `list` and `expired` read one snapshot in
    one round trip. A record that does not decode raises `catga.PersistenceError` naming the saga;
    a server error raises `catga.PersistenceError` naming the server.

    >>> store = RedisSagaStore("redis://127.0.0.1:6379/0")
    >>> store
    RedisSagaStore('redis://127.0.0.1:6379/0', prefix='catga:saga:')

    For Redis Cluster give a prefix with a hash tag (`"{catga:saga}:"`), so every key shares a slot.
    """

    __slots__ = ("_create", "_delete", "_expired", "_index_keys", "_list", "_save", "prefix")

    prefix: str

    def __init__(self, url_or_client: Any, *, prefix: str = "catga:saga:") -> None:
        if not isinstance(prefix, str):
            raise TypeError(f"`prefix` must be a str, got `{prefix!r}`")
        super().__init__(url_or_client)
        self.prefix = prefix
        # index, leases, then one set per status (in `_STATUSES` order, as the scripts expect).
        self._index_keys = [
            f"{prefix}index",
            f"{prefix}leases",
            *(f"{prefix}status:{status.value}" for status in _STATUSES),
        ]
        register = self.client.register_script
        self._create = register(_scripts.SAGA_CREATE)
        self._save = register(_scripts.SAGA_SAVE)
        self._delete = register(_scripts.SAGA_DELETE)
        self._list = register(_scripts.SAGA_LIST)
        self._expired = register(_scripts.SAGA_EXPIRED)

    def _key(self, saga_id: str) -> str:
        return f"{self.prefix}s:{saga_id}"

    async def create(self, state: SagaState) -> bool:
        """Store a new saga (`state.version == 1`); `False`, storing nothing, when the id exists."""
        check_state(state)
        if state.version != 1:
            raise ValueError(f"a new saga is at version 1, `{state.saga_id}` is at `{state.version!r}`")
        args = [state.saga_id, state.version, state.status.value, encode_state(state), *_scores(state)]
        try:
            created = await self._create(
                keys=[self._key(state.saga_id), *self._index_keys], args=[*args, *_STATUS_NAMES]
            )
        except RedisError as exc:
            self._conn.fail(f"create saga `{state.saga_id}`", exc)
        return bool(created)

    async def get(self, saga_id: str) -> SagaState | None:
        """The saga's state, or `None`; a corrupt record raises `PersistenceError` naming the saga."""
        check_saga_id(saga_id)
        try:
            raw = cast(bytes | None, await self.client.hget(self._key(saga_id), "state"))
        except RedisError as exc:
            self._conn.fail(f"read saga `{saga_id}`", exc)
        return None if raw is None else decode_state(saga_id, raw)

    async def save(self, state: SagaState, expected_version: int) -> bool:
        """Replace the stored state if it is at `expected_version` (`state.version` must be the next
        one); whether it was replaced."""
        check_state(state)
        check_expected_version(state, expected_version)
        args = [
            state.saga_id,
            expected_version,
            state.version,
            state.status.value,
            encode_state(state),
            *_scores(state),
            *_STATUS_NAMES,
        ]
        try:
            saved = await self._save(keys=[self._key(state.saga_id), *self._index_keys], args=args)
        except RedisError as exc:
            self._conn.fail(f"save saga `{state.saga_id}`", exc)
        return bool(saved)

    async def list(self, status: SagaStatus | None = None, limit: int | None = 100) -> Sequence[SagaState]:
        """Up to `limit` sagas (`None`: all), with that status if given, oldest first."""
        status = check_status(status)
        check_limit(limit)
        if limit == 0:
            return []  # ZRANGE 0 -1 would mean "all"
        key = self._index_keys[0] if status is None else self._index_keys[2 + _STATUSES.index(status)]
        try:
            found = await self._list(keys=[key], args=[f"{self.prefix}s:", -1 if limit is None else limit - 1])
        except RedisError as exc:
            self._conn.fail("list sagas", exc)
        return _decode_pairs(found)

    async def expired(self, now: float, limit: int | None = 100) -> Sequence[SagaState]:
        """In-progress sagas (`RUNNING`, `COMPENSATING`) whose `lease_expires` is before `now` (UNIX
        seconds), or that have no lease, oldest first: the ones `recover()` may take over."""
        now = check_now(now)
        check_limit(limit)
        if limit == 0:
            return []
        args: list[str | int] = [f"{self.prefix}s:", repr(now), -1 if limit is None else limit]
        try:
            found = await self._expired(keys=self._index_keys[1::-1], args=args)
        except RedisError as exc:
            self._conn.fail("list expired sagas", exc)
        return _decode_pairs(found)

    async def delete(self, saga_id: str) -> bool:
        """Remove a saga; whether there was one."""
        check_saga_id(saga_id)
        try:
            removed = await self._delete(keys=[self._key(saga_id), *self._index_keys], args=[saga_id])
        except RedisError as exc:
            self._conn.fail(f"delete saga `{saga_id}`", exc)
        return bool(removed)

    def __repr__(self) -> str:
        return f"RedisSagaStore({self.url!r}, prefix={self.prefix!r})"


def _scores(state: SagaState) -> tuple[str, str]:
    """The creation score and the lease score (`''`: not in progress, out of the lease set)."""
    if state.status not in IN_PROGRESS:
        lease = ""
    elif state.lease_expires is None:
        lease = "-inf"
    else:
        lease = repr(float(state.lease_expires))
    return repr(created_seconds(state)), lease


def _decode_pairs(found: list[bytes]) -> list[SagaState]:
    """`[id, state, id, state, ...]` from a script, decoded (a corrupt one names its saga)."""
    return [decode_state(found[i].decode(), found[i + 1]) for i in range(0, len(found), 2)]
