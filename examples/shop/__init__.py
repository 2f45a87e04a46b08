"""The shop example: `orders`, `payments` and `notifications` as separate processes over NATS and
Redis (README.md). `python -m examples.shop.run` starts everything and places orders."""
