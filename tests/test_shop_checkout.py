"""The shop's checkout saga across services over NATS (issue 6): reserve stock in `orders`, charge in
`payments`, ship in `notifications`; a declined payment releases the stock it reserved."""

from pathlib import Path

import pytest
from examples.shop.checkout import STOCK_KEY
from examples.shop.run import Shop


@pytest.mark.timeout(120)
async def test_checkout_completes_and_a_declined_payment_releases_the_stock(
    nats_url: str, redis_url: str, tmp_path: Path
) -> None:
    import redis.asyncio

    redis_client = redis.asyncio.from_url(redis_url)
    await redis_client.hset(STOCK_KEY, "sku-1", 5)
    shop = Shop(tmp_path, nats_url, redis_url)
    try:
        shop.start_services()
        assert await shop.checkout("o-1", "sku-1", 10) == "completed"
        assert int(await redis_client.hget(STOCK_KEY, "sku-1")) == 4
        assert await redis_client.hget("shop:shipped", "o-1") == b"ada"
        # Declined by payments: the saga compensates, the reserved unit comes back, nothing ships.
        assert await shop.checkout("o-2", "sku-1", 5000) == "compensated"
        assert int(await redis_client.hget(STOCK_KEY, "sku-1")) == 4
        assert await redis_client.hget("shop:shipped", "o-2") is None
        # Re-running a finished checkout runs nothing: its stored result comes back.
        assert await shop.checkout("o-1", "sku-1", 10) == "completed"
        assert int(await redis_client.hget(STOCK_KEY, "sku-1")) == 4
    finally:
        statuses = shop.stop()
        await redis_client.aclose()
    assert statuses == {"orders": [0], "payments": [0, 0], "notifications": [0]}
