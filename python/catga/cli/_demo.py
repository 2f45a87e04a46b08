"""`catga demo`: run the in-process order example of `catga._demo`."""

import argparse
import asyncio

from catga.cli._common import Subparsers

__all__ = ["add_parser"]


def add_parser(commands: Subparsers) -> None:
    demo = commands.add_parser(
        "demo",
        help="run a short in-process order example",
        description=(
            "Place an order through an in-process mediator and print each step: a user behaviour, "
            "the handler, an event published to two handlers, a query, and the Result of a command "
            "that fails."
        ),
    )
    demo.add_argument(
        "--trace",
        action="store_true",
        help="print the OpenTelemetry spans of the demo as a tree (needs `pip install opentelemetry-sdk`)",
    )
    demo.add_argument(
        "--metrics", action="store_true", help="print the demo's metrics in the Prometheus text format after it ran"
    )
    demo.set_defaults(run=_run)


def _run(args: argparse.Namespace) -> int:
    from catga._demo import run_demo

    asyncio.run(run_demo(trace=args.trace, metrics=args.metrics))
    return 0
