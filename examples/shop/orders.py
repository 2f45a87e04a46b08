"""The `orders` service: takes `PlaceOrder`, publishes `OrderPlaced` (durable, over JetStream).

Run: `catga worker examples.shop.orders:mediator --nats URL --redis URL --events jetstream`
"""

from examples.shop._stores import config
from examples.shop.messages import Checkout, OrderPlaced, PlaceOrder

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


# ------------------------------------------------------------------------ the checkout saga (issue 6)


def _saga_executor() -> catga.SagaExecutor:
    from examples.shop._stores import REDIS_URL
    from examples.shop.checkout import checkout

    from catga.redis import RedisSagaStore

    executor = catga.SagaExecutor(mediator, store=RedisSagaStore(REDIS_URL), lease=10.0)
    executor.register(checkout)
    return executor


executor = _saga_executor()
"""`catga saga recover --app examples.shop.orders:executor --nats URL` takes over checkouts whose owner
died (with the mediator on NATS: the steps send to `payments` and `notifications`)."""


@mediator.handler
async def run_checkout(command: Checkout) -> str:
    data = {"order_id": command.order_id, "customer": command.customer, "sku": command.sku, "amount": command.amount}
    result = await executor.run(executor.sagas["checkout"], data=data, saga_id=f"checkout-{command.order_id}")
    return str(result.status)
