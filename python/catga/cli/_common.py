"""What every subcommand module shares: the parser class and the user-error type."""

import argparse
from typing import TYPE_CHECKING, NoReturn, TypeAlias

__all__ = ["CliError", "Parser", "Subparsers"]


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
