"""The `catga` command line: `catga demo`, `catga bench`, `catga id parse ID`,
`catga worker MODULE:ATTRIBUTE`, `catga saga list|show|recover|retry`, `catga events read|tail|stats`,
`catga dlq list|show|retry|delete|purge`.

Every command has `--help`; a failure prints one line on stderr (`catga: error: ...`) and exits with
status 1. The CLI is argparse; `rich` (the `cli` extra) is for commands that draw progress bars or
tables: `catga bench` needs it for its tables (not with `--json`), `catga events read` and
`catga dlq retry --all` draw their progress bars only when it is installed.
"""

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from catga.cli._common import CliError, Parser

__all__ = ["CliError", "main"]


class _VersionAction(argparse.Action):
    """`--version`: imports catga only when asked, so `--help` works even when the core cannot load."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version and exit")

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> NoReturn:
        print(_version_line())
        parser.exit()


def _version_line() -> str:
    from importlib.metadata import PackageNotFoundError, version

    import catga

    try:
        number = version("catga")
    except PackageNotFoundError:  # run from a source tree without installing
        number = str(getattr(catga, "__version__", "unknown"))
    core = "pure-Python core" if catga.PURE_PYTHON else "native core"
    return f"catga {number} ({core}, Python {sys.version.split()[0]})"


def _build_parser() -> Parser:
    from catga.cli import _bench, _demo, _dlq, _events, _id, _saga, _worker

    parser = Parser(
        prog="catga",
        description="catga: CQRS and mediator framework for Python services, with a Rust hot core.",
    )
    parser.add_argument("--version", action=_VersionAction)
    commands = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    _bench.add_parser(commands)
    _demo.add_parser(commands)
    _dlq.add_parser(commands)
    _events.add_parser(commands)
    _id.add_parser(commands)
    _saga.add_parser(commands)
    _worker.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI with `argv` (default: `sys.argv[1:]`) and return the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return 1
        status: int = args.run(args)
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # one line, no traceback: CliError and whatever a command raised
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, CliError):
            message = f"{type(exc).__name__}: {message}"
        print(f"catga: error: {message}", file=sys.stderr)
        return 1
    return status
