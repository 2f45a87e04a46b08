"""The `orders` service: takes `PlaceOrder`, publishes `OrderPlaced` (durable, over JetStream).

Run: `catga worker examples.shop.orders:mediator --nats URL --redis URL --events jetstream`
"""

from examples.shop._stores import config
from examples.shop.messages import OrderPlaced, PlaceOrder

import catga

mediator = catga.Mediator(config=config())


@mediator.handler
async def place_order(command: PlaceOrder) -> str:
    # The event reuses the command's id: a retried command publishes the same event, which JetStream
    # and the next services' idempotency drop as a duplicate.
    await mediator.publish(
        OrderPlaced(
            order_id=command.order_id,
            customer=command.customer,
            amount=command.amount,
            message_id=command.message_id,
        )
    )
    return command.order_id
