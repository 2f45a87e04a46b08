"""The messages the three services exchange. Every service imports this module, so each class is in
every process's wire-name registry, and its explicit tag is its name on the wire and in NATS subjects."""

import catga


class PlaceOrder(catga.Command[str], tag="shop.place_order"):
    """Sent by a client to the `orders` service; answered with the order id."""

    order_id: str
    customer: str
    amount: int


class OrderPlaced(catga.Event, tag="shop.order_placed"):
    order_id: str
    customer: str
    amount: int


class PaymentCharged(catga.Event, tag="shop.payment_charged"):
    order_id: str
    customer: str
    amount: int


# ------------------------------------------------------------------------ the checkout saga (issue 6)


class Checkout(catga.Command[str], tag="shop.checkout"):
    """Sent by a client to `orders`: runs the checkout saga; answered with the saga's final status."""

    order_id: str
    customer: str
    sku: str
    amount: int


class ChargePayment(catga.Command[str], tag="shop.charge_payment"):
    """Handled by `payments`: charges the customer (declined above `payments.CARD_LIMIT`)."""

    order_id: str
    customer: str
    amount: int
    idempotency_key: str


class RefundPayment(catga.Command[None], tag="shop.refund_payment"):
    order_id: str
    idempotency_key: str


class ShipOrder(catga.Command[str], tag="shop.ship_order"):
    """Handled by `notifications`: tells the customer the order ships."""

    order_id: str
    customer: str
