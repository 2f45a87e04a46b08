"""The application `tests/test_dlq_cli.py` retries dead letters with (`catga dlq retry --app dlq_cli_app:mediator`):
an order command and an event whose handlers fail until `FIXED` is set (or `CATGA_TEST_DLQ_FIXED=1`).

The mediator keeps its own dead letters in memory: `catga dlq retry` reads and updates the record in
its `--store`, whichever store the app uses.
"""

import os

import catga
from catga.behaviors import DeadLetter, Retry

FIXED = {"handlers": False}


class PlaceOrder(catga.Command[str], tag="dlqcli.PlaceOrder"):
    customer: str
    amount: int


class OrderPlaced(catga.Event, tag="dlqcli.OrderPlaced"):
    order_id: str


def fixed() -> bool:
    return FIXED["handlers"] or os.environ.get("CATGA_TEST_DLQ_FIXED") == "1"


async def place_order(command: PlaceOrder) -> str:
    if not fixed():
        raise RuntimeError(f"the payment service is down for `{command.customer}`")
    return f"order-{command.customer}"


async def email_customer(event: OrderPlaced) -> None:
    if not fixed():
        raise RuntimeError(f"the mail server is down for `{event.order_id}`")


def retry() -> Retry:
    """Two attempts per send, so every failure adds 2 to a record's `attempts`."""
    return Retry(max_attempts=2, base_delay=0.001, jitter=0.0, retry_on=(RuntimeError,))


mediator = catga.Mediator(config=catga.Config.default().with_(dead_letter=DeadLetter(), retry=retry()))
mediator.register(PlaceOrder, place_order)
mediator.register(OrderPlaced, email_customer)
