"""The connection every Redis store holds: a `redis.asyncio.Redis`, whether the store owns it, and
where it points (for error messages, without credentials)."""

from typing import Any, NoReturn, Self

import redis.asyncio
import redis.exceptions

from catga._errors import PersistenceError

__all__ = ["RedisConnection", "RedisError", "RedisStore", "milliseconds", "positive_seconds"]

RedisError = redis.exceptions.RedisError
"""What redis-py raises (connection refused, timeouts, script errors): the stores turn it into
`catga.PersistenceError`."""

_SCHEMES = ("redis://", "rediss://", "unix://")


class RedisConnection:
    """A client for a store: made from a URL (then owned, closed by `aclose`) or the caller's.

    `where` names the server as `redis://host:port/db` (or `unix://path`), never with a password,
    so errors can say which server failed without leaking credentials.
    """

    __slots__ = ("client", "owned", "where")

    client: "redis.asyncio.Redis"
    owned: bool
    where: str

    def __init__(self, url_or_client: object, owner: str) -> None:
        if isinstance(url_or_client, str):
            if not url_or_client.startswith(_SCHEMES):
                raise ValueError(
                    f"`{owner}` needs a `redis://`, `rediss://` or `unix://` URL or a `redis.asyncio.Redis`, "
                    f"got `{url_or_client}`"
                )
            # A connect timeout, so an unreachable host fails in seconds instead of hanging (the URL's
            # own `socket_connect_timeout=` query parameter wins).
            self.client = redis.asyncio.Redis.from_url(url_or_client, socket_connect_timeout=5.0)
            self.owned = True
        elif isinstance(url_or_client, redis.asyncio.Redis):
            self.client = url_or_client
            self.owned = False
        else:
            hint = " (a synchronous client: pass a `redis.asyncio.Redis`)" if _is_sync_client(url_or_client) else ""
            raise TypeError(
                f"`{owner}` needs a `redis://` URL or a `redis.asyncio.Redis`, got `{url_or_client!r}`{hint}"
            )
        if self.client.get_encoder().decode_responses:  # type: ignore[no-untyped-call]
            # The stores keep msgpack bytes: a client that decodes replies to str would corrupt them.
            raise ValueError(f"`{owner}` needs a client with `decode_responses=False`, got `{self.client!r}`")
        self.where = _describe(self.client)

    def fail(self, doing: str, exc: BaseException) -> NoReturn:
        """Raise `PersistenceError` for a redis-py error, naming the server and what failed."""
        raise PersistenceError(f"Redis at `{self.where}` failed to {doing}: {exc}", url=self.where) from exc

    async def ping(self) -> bool:
        """`True` when the server answers (`PersistenceError` when it does not)."""
        try:
            return bool(await self.client.ping())
        except RedisError as exc:
            self.fail("answer a ping", exc)

    async def aclose(self) -> None:
        """Close the client if the store made it from a URL; a client passed in is the caller's."""
        if self.owned:
            await self.client.aclose()


def _is_sync_client(value: object) -> bool:
    import redis as sync_redis

    return isinstance(value, sync_redis.Redis)


def _describe(client: "redis.asyncio.Redis") -> str:
    kwargs: dict[str, Any] = client.connection_pool.connection_kwargs
    if "path" in kwargs:
        return f"unix://{kwargs['path']}"
    scheme = "rediss" if "ssl" in client.connection_pool.connection_class.__name__.lower() else "redis"
    return f"{scheme}://{kwargs.get('host', 'localhost')}:{kwargs.get('port', 6379)}/{kwargs.get('db', 0)}"


class RedisStore:
    """What every Redis store shares: its connection, `ping`, `aclose` and `async with`."""

    __slots__ = ("_conn",)

    _conn: RedisConnection

    def __init__(self, url_or_client: object) -> None:
        self._conn = RedisConnection(url_or_client, type(self).__name__)

    @property
    def client(self) -> "redis.asyncio.Redis":
        """The `redis.asyncio.Redis` the store talks through."""
        return self._conn.client

    @property
    def url(self) -> str:
        """The server, as `redis://host:port/db` (without credentials)."""
        return self._conn.where

    async def ping(self) -> bool:
        """`True` when the server answers; `catga.PersistenceError` naming the server when not.

        The `stores` health check calls it.
        """
        return await self._conn.ping()

    async def aclose(self) -> None:
        """Close the connection pool, if the store made it from a URL (a client passed in stays open:
        it is the caller's to close)."""
        await self._conn.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def positive_seconds(name: str, value: object) -> float:
    """`value` as seconds, checked: a number > 0 (`TypeError` / `ValueError` naming `name`)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"`{name}` must be a number of seconds, got `{value!r}`")
    if not value > 0:  # also rejects NaN
        raise ValueError(f"`{name}` must be positive, got `{value!r}`")
    return float(value)


def milliseconds(seconds: float) -> int:
    """Whole milliseconds for `PX`, at least 1 (Redis refuses 0)."""
    return max(1, round(seconds * 1000))
