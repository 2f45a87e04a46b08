"""examples/shop end to end against real servers: 1,000 orders through `orders`, two `payments`
instances (one killed with SIGKILL a third of the way in) and `notifications`, each order notified
exactly once (issue 5, "Done when")."""

from pathlib import Path

import pytest
from examples.shop.run import Shop


@pytest.mark.timeout(300)
async def test_every_order_is_notified_exactly_once_when_a_payments_instance_dies(
    nats_url: str, redis_url: str, tmp_path: Path
) -> None:
    shop = Shop(tmp_path, nats_url, redis_url)
    try:
        shop.start_services()
        placed = await shop.place_orders(1000, kill_after=300)
        counts = await shop.notified(placed, timeout=120)
    finally:
        statuses = shop.stop()
    assert sorted(placed) == sorted(f"o-{number}" for number in range(1000))
    missing = [order_id for order_id in placed if order_id not in counts]
    twice = {order_id: count for order_id, count in counts.items() if count != 1}
    assert (missing, twice) == ([], {})
    # The killed instance died by SIGKILL; every other service drained and exited 0 on SIGTERM.
    assert statuses == {"orders": [0], "payments": [-9, 0], "notifications": [0]}
