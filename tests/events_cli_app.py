"""The events `tests/test_events_cli.py` stores and reads back with `catga events ... --import events_cli_app`."""

import catga


class Deposited(catga.Event, tag="cli.Deposited"):
    account: str
    amount: int


class Withdrawn(catga.Event, tag="cli.Withdrawn"):
    account: str
    amount: int
