"""The `notifications` service: tells the customer, once per `PaymentCharged`.

The "notification" is a count in a Redis hash, so the example (and its test) can check that every
order was notified exactly once.
"""

from examples.shop._stores import NOTIFIED_KEY, REDIS_URL, config
from examples.shop.messages import PaymentCharged, ShipOrder

import catga

mediator = catga.Mediator(config=config())
_redis = None


async def _client() -> "object":
    global _redis
    if _redis is None:
        import redis.asyncio

        _redis = redis.asyncio.from_url(REDIS_URL)
    return _redis


@mediator.handler
async def notify(event: PaymentCharged) -> None:
    client = await _client()
    await client.hincrby(NOTIFIED_KEY, event.order_id, 1)  # type: ignore[attr-defined]


@mediator.handler
async def ship_order(command: ShipOrder) -> str:
    client = await _client()
    await client.hset("shop:shipped", command.order_id, command.customer)  # type: ignore[attr-defined]
    return f"shipped-{command.order_id}"
