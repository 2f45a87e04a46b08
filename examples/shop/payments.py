"""The `payments` service: charges each `OrderPlaced` once, publishes `PaymentCharged`.

Run two instances (`--service payments` both): they share one durable JetStream consumer, so each
order is charged by one of them; if one dies mid-order, the other gets the order redelivered.
"""

import asyncio

from examples.shop._stores import config
from examples.shop.messages import ChargePayment, OrderPlaced, PaymentCharged, RefundPayment

import catga

mediator = catga.Mediator(config=config())


@mediator.handler
async def charge(event: OrderPlaced) -> None:
    # A real service calls its payment provider here (the sleep stands for that call), passing an
    # idempotency key (`event.message_id`), so a retried charge is not a second charge. The call
    # takes time, so an instance killed mid-run has orders in flight that the other one takes over.
    await asyncio.sleep(0.01)
    await mediator.publish(
        PaymentCharged(
            order_id=event.order_id,
            customer=event.customer,
            amount=event.amount,
            message_id=event.message_id,  # the same order makes the same event, also when redelivered
        )
    )


# ------------------------------------------------------------------------ the checkout saga (issue 6)

CARD_LIMIT = 1000
"""Charges above this are declined: the checkout saga then releases the stock it reserved."""


@mediator.handler
async def charge_payment(command: ChargePayment) -> str:
    if command.amount > CARD_LIMIT:
        # Not retryable: the saga compensates at once.
        raise catga.ValidationError([f"card of `{command.customer}` declined for `{command.amount}`"])
    return f"payment-{command.idempotency_key}"  # a provider would take the key, and charge once


@mediator.handler
async def refund_payment(command: RefundPayment) -> None:
    return None
