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
