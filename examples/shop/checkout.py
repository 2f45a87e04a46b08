"""The checkout saga of the `orders` service: reserve stock → charge (payments) → ship
(notifications), compensated in reverse when a step fails for good: a declined card releases the
reserved stock. Steps pass `ctx.idempotency_key` on, so a step re-run after a crash (or a retry)
never charges twice. The saga's state lives in Redis, where any `orders` instance can recover it.
"""

from examples.shop._stores import REDIS_URL
from examples.shop.messages import ChargePayment, RefundPayment, ShipOrder

import catga

STOCK_KEY = "shop:stock"
"""A Redis hash: SKU -> units in stock. `reserve_stock` takes one, `release_stock` gives it back."""

checkout = catga.Saga("checkout")
_redis = None


def _client() -> "object":
    global _redis
    if _redis is None:
        import redis.asyncio

        _redis = redis.asyncio.from_url(REDIS_URL)
    return _redis


async def release_stock(ctx: catga.SagaContext) -> None:
    client = _client()
    key = f"shop:reserved:{ctx.saga_id}:reserve_stock"
    if await client.delete(key):  # type: ignore[attr-defined]  # given back once
        await client.hincrby(STOCK_KEY, ctx.data["sku"], 1)  # type: ignore[attr-defined]
    ctx.data["reserved"] = False


async def refund(ctx: catga.SagaContext) -> None:
    await ctx.mediator.send(RefundPayment(order_id=ctx.data["order_id"], idempotency_key=f"{ctx.saga_id}:charge"))


@checkout.step(compensate=release_stock)
async def reserve_stock(ctx: catga.SagaContext) -> None:
    client = _client()
    # Once per idempotency key: a re-run after a crash does not take a second unit.
    if await client.set(f"shop:reserved:{ctx.idempotency_key}", 1, nx=True):  # type: ignore[attr-defined]
        left = await client.hincrby(STOCK_KEY, ctx.data["sku"], -1)  # type: ignore[attr-defined]
        if left < 0:
            await client.hincrby(STOCK_KEY, ctx.data["sku"], 1)  # type: ignore[attr-defined]
            await client.delete(f"shop:reserved:{ctx.idempotency_key}")  # type: ignore[attr-defined]
            raise catga.ValidationError([f"`{ctx.data['sku']}` is out of stock"])
    ctx.data["reserved"] = True


@checkout.step(compensate=refund)
async def charge(ctx: catga.SagaContext) -> None:
    command = ChargePayment(
        order_id=ctx.data["order_id"],
        customer=ctx.data["customer"],
        amount=ctx.data["amount"],
        idempotency_key=ctx.idempotency_key,
    )
    ctx.data["payment"] = await ctx.mediator.send(command)  # over NATS, to `payments`


checkout.add_step(
    catga.send_step(lambda d: ShipOrder(order_id=d.get("order_id", ""), customer=d.get("customer", "")), name="ship")
)
