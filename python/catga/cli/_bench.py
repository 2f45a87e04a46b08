"""`catga bench`: catga beside the floor, a dict-dispatch reference and the peers, on this machine.

    $ catga bench --quick                        # every scenario in a few seconds, as tables
    $ catga bench --scenario send --json         # machine info and every cell of `send`, as JSON

The engine is `catga._bench`; this module parses the options, draws the progress bar and the
tables (`rich`, the `cli` extra), or prints JSON.
"""

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, Final

from catga.cli._common import CliError, Subparsers

if TYPE_CHECKING:
    from catga._bench import Progress, ScenarioResult, Settings

__all__ = ["add_parser"]

_OPS: Final = 100_000
_REPEATS: Final = 5
_MAX_REPEAT_S: Final = 0.25
# --quick: the whole run in a few seconds; ratios within about 15 % of a full run on the dev machine.
_QUICK_OPS: Final = 20_000
_QUICK_REPEATS: Final = 3
_QUICK_MAX_REPEAT_S: Final = 0.04
_MIN_OPS: Final = 100  # below this the empty loop's cost drowns in the timer's noise
_TIMES: Final = "\N{MULTIPLICATION SIGN}"  # spelled out: ruff (RUF001) takes the sign for a typo of x

_EPILOG: Final = """\
scenarios:
  send       one request -> one async handler returning 42, no behaviours
  behaviors  the same through 3 behaviours, each `return (await next()) + 1` (45 checked)
  publish    one event -> 3 async handlers that count their calls (counts checked)

cells: floor (the handler awaited directly; for behaviors the same chain composed once; for
publish three direct awaits), dict (a 30-line dict-dispatch mediator), catga on its pure and on
its Rust core (both in this process), catga.compat.mediatr (the mediatr drop-in), and the peers
mediatr, python-cqrs, kerux and diator on their fastest documented paths. A peer that is not
installed shows as such: `pip install catga[bench]` installs them all.

method: every cell of a scenario runs in one process and one event loop; each repeat times each
cell in turn (`await op(msg)` N times, perf_counter_ns), the empty loop's cost is subtracted and
the best repeat counts. A slow cell runs fewer ops per repeat (about 0.25 s, never under 1/20 of
--ops). Each result is checked (42, 45, the handlers' counts): a wrong one fails the run.

examples:
  catga bench --quick                      all scenarios in a few seconds
  catga bench --scenario send --repeat 9   one scenario, more repeats
  catga bench --quick --json > bench.json  machine info and every cell as JSON
"""


def add_parser(commands: Subparsers) -> None:
    bench = commands.add_parser(
        "bench",
        help="time catga against a direct await, a dict dispatcher and other Python mediators",
        # Wrapped by hand: the raw formatter keeps the epilog's layout, and the description's too.
        description=(
            "Time catga against the floor (a direct await of the handler), a dict-dispatch reference\n"
            "and the peers (mediatr, python-cqrs, kerux, diator) on three scenarios; print ns/op, the\n"
            "ratio to the floor and how much faster catga's Rust core is than the fastest peer.\n"
            "Tables and the progress bar need `pip install catga[cli]`; --json does not."
        ),
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from catga._bench import SCENARIOS

    bench.add_argument(
        "--scenario",
        action="append",
        choices=SCENARIOS,
        dest="scenarios",
        metavar="{" + ",".join(SCENARIOS) + "}",
        help="a scenario to run; repeat the option for several (default: all)",
    )
    bench.add_argument(
        "--repeat",
        type=int,
        metavar="N",
        help=f"timed repeats per cell, the best counts (default {_REPEATS}; {_QUICK_REPEATS} with --quick)",
    )
    bench.add_argument(
        "--ops",
        type=int,
        metavar="N",
        help=f"operations per repeat, at least {_MIN_OPS} (default {_OPS:,}; {_QUICK_OPS:,} with --quick)",
    )
    bench.add_argument("--quick", action="store_true", help="fewer ops and repeats: the whole run in seconds")
    bench.add_argument(
        "--json", action="store_true", help="print machine info and every cell as JSON on stdout, no table"
    )
    bench.set_defaults(run=_run)


def _settings(args: argparse.Namespace) -> "Settings":
    from catga._bench import Settings

    repeats = args.repeat if args.repeat is not None else _QUICK_REPEATS if args.quick else _REPEATS
    ops = args.ops if args.ops is not None else _QUICK_OPS if args.quick else _OPS
    if repeats < 1:
        raise CliError(f"`--repeat` must be at least 1, got `{repeats}`")
    if ops < _MIN_OPS:
        raise CliError(f"`--ops` must be at least {_MIN_OPS}, got `{ops}`")
    return Settings(ops=ops, repeats=repeats, max_repeat_s=_QUICK_MAX_REPEAT_S if args.quick else _MAX_REPEAT_S)


def _run(args: argparse.Namespace) -> int:
    from catga._bench import SCENARIOS, machine_info, run

    settings = _settings(args)
    # In table order, each once, however the options were given.
    scenarios = [name for name in SCENARIOS if name in (args.scenarios or SCENARIOS)]
    if args.json:
        results = run(scenarios, settings)
        document = {
            "machine": machine_info(),
            "settings": {"ops": settings.ops, "repeats": settings.repeats, "max_repeat_s": settings.max_repeat_s},
            "scenarios": [result.as_dict() for result in results],
        }
        print(json.dumps(document, indent=2))
        return 0
    rich = _import_rich()
    with _progress(rich, scenarios, settings) as progress:
        results = run(scenarios, settings, progress)
    _print_tables(rich, results, settings, machine_info())
    return 0


def _import_rich() -> Any:
    try:
        import rich.console
        import rich.progress
        import rich.table
    except ImportError:
        raise CliError("`catga bench` draws its tables with rich: `pip install catga[cli]` (or use --json)") from None
    return rich


@contextlib.contextmanager
def _progress(rich: Any, scenarios: list[str], settings: "Settings") -> Iterator["Progress"]:
    """A progress bar on stderr, gone when the run ends (only the tables stay)."""
    from catga._bench import steps

    console = rich.console.Console(stderr=True)
    bar = rich.progress.Progress(
        rich.progress.TextColumn("{task.description:<48}"),
        rich.progress.BarColumn(),
        rich.progress.TaskProgressColumn(),
        rich.progress.TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,  # a log or a pipe gets the tables only
    )
    with bar:
        task = bar.add_task("setting up", total=steps(scenarios, settings))

        def advance(label: str, done: int) -> None:
            bar.update(task, description=label, advance=done)

        yield advance


def _print_tables(rich: Any, results: list["ScenarioResult"], settings: "Settings", machine: dict[str, Any]) -> None:
    # Wide enough for every column when stdout is a pipe or a file (rich assumes 80 there).
    console = rich.console.Console(width=None if sys.stdout.isatty() else 120, highlight=False)
    console.print(
        f"catga {machine['catga']} ({machine['core']} core), {machine['python']}, {machine['cpu']} "
        f"({machine['cpus']} CPUs), {machine['date']}"
    )
    for result in results:
        console.print(_table(rich, result))
    loops = ", ".join(f"{result.loop_ns_per_op:.0f}" for result in results)
    console.print(
        f"ns/op: best of {settings.repeats} repeats of up to {settings.ops:,} ops, net of the empty loop "
        f"({loops} ns/op); {_TIMES} floor: ns/op over the floor's, measured alongside in the same event loop."
    )


_TITLES: Final = {
    "send": "send: one request -> one async handler returning 42",
    "behaviors": "behaviors: the same through 3 behaviours, each adding 1",
    "publish": "publish: one event -> 3 async handlers",
}


def _table(rich: Any, result: "ScenarioResult") -> Any:
    peer = result.fastest_peer
    speedup = result.rust_vs_fastest_peer
    caption = f"floor: {result.floor}"
    if peer is not None:
        caption += f"; fastest peer: {peer.name}"
    table = rich.table.Table(title=_TITLES.get(result.scenario, result.scenario), caption=caption, title_justify="left")
    table.add_column("cell")
    table.add_column("version")
    table.add_column("ns/op", justify="right")
    table.add_column(f"{_TIMES} floor", justify="right")
    table.add_column("vs fastest peer", justify="right")
    table.add_column("notes")
    for cell in result.cells:
        version = cell.version if cell.kind == "peer" and cell.version else ""
        if not cell.measured:
            table.add_row(cell.name, version, f"[dim]{cell.status}[/dim]", "", "", f"[dim]{cell.reason}[/dim]")
            continue
        versus = ""
        if cell.name == "catga (Rust core)" and speedup is not None:
            versus = f"{speedup:.1f} {_TIMES} faster"
        table.add_row(
            cell.name,
            version,
            f"{cell.ns_per_op:,.0f}",
            f"{cell.ratio:.2f}",
            versus,
            cell.note,
            style="bold" if cell.kind == "catga" else "",
        )
    return table
