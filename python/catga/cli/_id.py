"""`catga id parse ID`: split a message id into its timestamp, worker id and sequence."""

import argparse
import json

from catga.cli._common import CliError, Subparsers

__all__ = ["add_parser", "parse_id_text"]


def add_parser(commands: Subparsers) -> None:
    id_parser = commands.add_parser(
        "id",
        help="work with message ids",
        description="Work with catga message ids (63-bit snowflakes).",
    )
    actions = id_parser.add_subparsers(title="actions", dest="action", metavar="ACTION", required=True)
    parse = actions.add_parser(
        "parse",
        help="show the timestamp, worker id and sequence of an id",
        description=(
            "Show the fields of a message id made with the default layout (44 bits milliseconds since "
            "2024-01-01T00:00:00Z, 8 bits worker id, 11 bits sequence)."
        ),
    )
    parse.add_argument("id", metavar="ID", help="the id, in decimal or 0x-prefixed hex")
    parse.add_argument("--json", action="store_true", help="print a JSON object")
    parse.set_defaults(run=_run_parse)


def parse_id_text(text: str) -> int:
    """The integer an id argument spells: decimal, or hex with a `0x` prefix."""
    stripped = text.strip()
    try:
        if stripped.lower().startswith(("0x", "-0x")):
            return int(stripped, 16)
        return int(stripped, 10)
    except ValueError:
        raise CliError(f"`{text}` is not an id: expected a decimal integer or 0x-prefixed hex") from None


def _run_parse(args: argparse.Namespace) -> int:
    import catga

    value = parse_id_text(args.id)
    try:
        parts = catga.parse_id(value)
    except (ValueError, OverflowError) as exc:
        raise CliError(str(exc)) from None
    when = parts.datetime.isoformat(timespec="milliseconds")
    if args.json:
        fields = {
            "id": value,
            "timestamp_ms": parts.timestamp_ms,
            "datetime": when,
            "worker_id": parts.worker_id,
            "sequence": parts.sequence,
        }
        print(json.dumps(fields))
    else:
        print(f"id         {value}")
        print(f"timestamp  {when} ({parts.timestamp_ms} ms)")
        print(f"worker_id  {parts.worker_id}")
        print(f"sequence   {parts.sequence}")
    return 0
