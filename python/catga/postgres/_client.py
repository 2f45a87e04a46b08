"""The connection pool every PostgreSQL store holds: an asyncpg pool, whether the store owns it, and
where it points (for error messages, without credentials)."""

import asyncio
import re
from typing import Any, Final, NoReturn, Self
from urllib.parse import urlsplit

import asyncpg  # type: ignore[import-untyped]  # asyncpg ships no type information

from catga._errors import PersistenceError

__all__ = ["PostgresError", "PostgresStore", "check_table"]

PostgresError: Final = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)
"""What talking to the server raises (server errors, a closed pool, connection refused, a connect
timeout): the stores turn it into `catga.PersistenceError`."""

_SCHEMES: Final = ("postgresql://", "postgres://")
_IDENTIFIER: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_POOL_SIZE: Final = 10
_CONNECT_TIMEOUT: Final = 5.0  # seconds: an unreachable host fails fast instead of hanging


def check_table(table: object) -> str:
    """`table` or `schema.table`, each part an unquoted SQL identifier (`TypeError`/`ValueError`
    naming it): it is written into the SQL, so nothing else is accepted."""
    if not isinstance(table, str):
        raise TypeError(f"`table` must be a str, got `{table!r}`")
    parts = table.split(".")
    if len(parts) > 2 or not all(_IDENTIFIER.fullmatch(part) for part in parts):
        raise ValueError(
            f"`table` must be a SQL identifier (letters, digits and `_`, not starting with a digit, at most "
            f"63 characters), optionally `schema.table`, got `{table}`"
        )
    return table


class PostgresStore:
    """What every PostgreSQL store shares: its pool, `ping`, `aclose`, `async with` and errors.

    `dsn_or_pool` is a `postgresql://` DSN (the store makes its pool on first use, up to 10
    connections, and closes it in `aclose`) or an `asyncpg.Pool` (yours: the store never closes
    it). Errors name the server as `postgresql://user@host:port/database`, never with a password.
    """

    __slots__ = ("_dsn", "_lock", "_owned", "_pool", "where")

    where: str

    def __init__(self, dsn_or_pool: object) -> None:
        owner = type(self).__name__
        self._pool: Any = None
        self._dsn: str | None = None
        if isinstance(dsn_or_pool, str):
            if not dsn_or_pool.startswith(_SCHEMES):
                raise ValueError(
                    f"`{owner}` needs a `postgresql://` DSN or an `asyncpg.Pool`, got `{_describe_dsn(dsn_or_pool)}`"
                )
            self._dsn = dsn_or_pool
            self._owned = True
            self.where = _describe_dsn(dsn_or_pool)
        elif isinstance(dsn_or_pool, asyncpg.Pool):
            self._pool = dsn_or_pool
            self._owned = False
            self.where = _describe_pool(dsn_or_pool)
        else:
            raise TypeError(f"`{owner}` needs a `postgresql://` DSN or an `asyncpg.Pool`, got `{dsn_or_pool!r}`")
        self._lock: asyncio.Lock | None = None

    @property
    def url(self) -> str:
        """The server, as `postgresql://user@host:port/database` (without credentials)."""
        return self.where

    def fail(self, doing: str, exc: BaseException) -> NoReturn:
        """Raise `PersistenceError` for a driver error, naming the server and what failed."""
        raise PersistenceError(f"PostgreSQL at `{self.where}` failed to {doing}: {exc}", url=self.where) from exc

    async def pool(self) -> Any:
        """The `asyncpg.Pool`, made from the DSN on first use (`PersistenceError` when it cannot)."""
        if self._pool is not None:
            return self._pool
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            if self._pool is None:
                try:
                    self._pool = await asyncpg.create_pool(
                        self._dsn, min_size=1, max_size=_POOL_SIZE, timeout=_CONNECT_TIMEOUT
                    )
                except PostgresError as exc:
                    self.fail("connect", exc)
        return self._pool

    async def ping(self) -> bool:
        """`True` when the server answers; `catga.PersistenceError` naming the server when not.

        The `stores` health check calls it.
        """
        pool = await self.pool()
        try:
            return bool(await pool.fetchval("SELECT true"))
        except PostgresError as exc:
            self.fail("answer a ping", exc)

    async def aclose(self) -> None:
        """Close the pool if the store made it from a DSN (a pool passed in stays open: it is the
        caller's to close)."""
        if self._owned and self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()


def _describe_dsn(dsn: str) -> str:
    """`scheme://user@host:port/database` of a DSN: no password, no query parameters."""
    if "://" not in dsn:  # not a URL (a key=value DSN, a typo): what follows any credentials
        return dsn.rpartition("@")[2].split("?")[0]
    try:
        parts = urlsplit(dsn)
        user = f"{parts.username}@" if parts.username else ""
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:  # a malformed port: name what can be named
        return dsn.split("@")[-1].split("?")[0] if "@" in dsn else dsn.split("?")[0]
    if ":" in host:
        host = f"[{host}]"
    scheme = parts.scheme or "postgresql"
    return f"{scheme}://{user}{host}{port}{parts.path}"


def _describe_pool(pool: Any) -> str:
    """Where a pool passed in connects: its DSN, or its `host`/`port`/`database` arguments."""
    args = getattr(pool, "_connect_args", ())
    if args and isinstance(args[0], str):
        return _describe_dsn(args[0])
    kwargs = getattr(pool, "_connect_kwargs", {})
    if isinstance(kwargs, dict) and isinstance(kwargs.get("dsn"), str):
        return _describe_dsn(kwargs["dsn"])
    if isinstance(kwargs, dict) and kwargs.get("host"):
        user = f"{kwargs['user']}@" if kwargs.get("user") else ""
        port = f":{kwargs['port']}" if kwargs.get("port") else ""
        return f"postgresql://{user}{kwargs['host']}{port}/{kwargs.get('database') or ''}"
    return "an asyncpg pool"
