"""What every subcommand module shares: the parser class, the user-error type, and opening a store
from its `--store` URL."""

import argparse
import importlib
import urllib.parse
from typing import TYPE_CHECKING, Any, NoReturn, TypeAlias

__all__ = ["CliError", "Parser", "Subparsers", "open_store_url", "without_password"]

_REDIS_SCHEMES = ("redis", "rediss", "unix")
_POSTGRES_SCHEMES = ("postgresql", "postgres")


class CliError(Exception):
    """A failure the user can fix (bad argument, bad value): printed as one line, exit status 1."""


class Parser(argparse.ArgumentParser):
    """An `ArgumentParser` whose usage errors become `CliError` (exit 1) instead of exit 2."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see `{self.prog} --help`)")


if TYPE_CHECKING:
    Subparsers: TypeAlias = argparse._SubParsersAction[Parser]
else:
    Subparsers: TypeAlias = argparse._SubParsersAction


def open_store_url(url: str, *, redis: str, postgres: str | None = None, **options: Any) -> Any:
    """The store a `--store` URL names: `catga.redis.<redis>(url, **options)` for `redis://`,
    `rediss://` and `unix://`, `catga.postgres.<postgres>(url, **options)` for `postgresql://` and
    `postgres://` when the command has a PostgreSQL store. A missing extra or another scheme is a
    one-line `CliError`; the module is imported only when its scheme is used."""
    scheme = url.partition("://")[0].lower()
    if scheme in _REDIS_SCHEMES:
        module, name = "catga.redis", redis
    elif postgres is not None and scheme in _POSTGRES_SCHEMES:
        module, name = "catga.postgres", postgres
    else:
        accepted = (
            "`redis://`, `rediss://`, `unix://` or `postgresql://`"
            if postgres
            else "`redis://`, `rediss://` or `unix://`"
        )
        raise CliError(f"`--store` must be a {accepted} URL, got `{url}`")
    try:
        store_class = getattr(importlib.import_module(module), name)
    except ImportError as exc:  # the extra is missing: the message names it
        raise CliError(str(exc)) from exc
    return store_class(url, **options)


def without_password(url: str) -> str:
    """`url` as an error message may show it: the password, if any, replaced by `***`.

    >>> without_password("redis://:secret@db:6379/0")
    'redis://:***@db:6379/0'
    """
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
