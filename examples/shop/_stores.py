"""What the services share through Redis: the idempotency store (so a redelivered event, or one
handled by a second instance, runs its handler once) and the notifications' record."""

import os

import catga
from catga.behaviors import Idempotency, Retry

REDIS_URL = os.environ.get("CATGA_REDIS_URL", "redis://127.0.0.1:6379/0")
NOTIFIED_KEY = "shop:notified"
"""A Redis hash: order id -> how many times its notification was sent (exactly once: 1)."""

# A claim held by an instance that died mid-handler expires after `CLAIM_TTL` seconds, so another
# instance can take the redelivered event over; a completed result is kept for a day.
CLAIM_TTL = float(os.environ.get("SHOP_CLAIM_TTL", "5"))


def config() -> catga.Config:
    """The services' pipeline: the default one, with the idempotency store in Redis."""
    from catga.redis import RedisIdempotencyStore

    store = RedisIdempotencyStore(REDIS_URL, claim_ttl=CLAIM_TTL)
    return catga.Config.default().with_(idempotency=Idempotency(store=store), retry=Retry(max_attempts=2))
