"""Messages, wire names and the message context (API.md section 1)."""

import gc
import pickle
import typing
from dataclasses import dataclass

import msgspec
import pytest

import catga
from catga._core import CURRENT_MESSAGE
from catga._messages import TAG_FIELD, _lookup_wire_name


class PlaceOrder(catga.Command[str]):
    customer: str
    amount: int


class GetOrder(catga.Query[dict[str, int]], tag="tests.orders.get"):
    order_id: str


class OrderPlaced(catga.Event):
    order_id: str


class UrgentOrderPlaced(OrderPlaced):
    """A subclass of a tagged-by-default event: its own wire name, not the parent's."""


class TaggedBase(catga.Event, tag="tests.tagged-base"):
    pass


class UntaggedChild(TaggedBase):
    pass


class NumberTagged(catga.Event, tag=7):
    pass


@dataclass
class PlainRequest:
    name: str


# ------------------------------------------------------------------------------------------ kinds


def test_base_classes() -> None:
    assert issubclass(catga.Request, catga.Message)
    assert issubclass(catga.Command, catga.Request)
    assert issubclass(catga.Query, catga.Request)
    assert issubclass(catga.Event, catga.Message)
    assert not issubclass(catga.Event, catga.Request)
    assert issubclass(catga.Message, msgspec.Struct)
    assert issubclass(PlaceOrder, catga.Command)
    assert typing.get_origin(catga.Command[str]) is catga.Command
    assert catga.MessageId is int


def test_base_fields() -> None:
    first = PlaceOrder("ada", 3)
    second = PlaceOrder(customer="bob", amount=1)
    assert (first.customer, first.amount) == ("ada", 3)
    assert isinstance(first.message_id, int)
    assert 0 < first.message_id < second.message_id < 2**63
    assert first.correlation_id is None
    given = PlaceOrder("ada", 3, message_id=5, correlation_id=9)
    assert (given.message_id, given.correlation_id) == (5, 9)
    assert msgspec.structs.fields(PlaceOrder)[-2:] == msgspec.structs.fields(catga.Message)


def test_base_fields_are_keyword_only() -> None:
    assert [f.name for f in msgspec.structs.fields(catga.Message)] == ["message_id", "correlation_id"]
    with pytest.raises(TypeError):
        catga.Event(1)  # type: ignore[call-arg]


def test_message_id_comes_from_the_process_generator() -> None:
    before = catga.new_id()
    message = OrderPlaced("o-1")
    assert before < message.message_id < catga.new_id()
    parts = catga.parse_id(message.message_id)
    assert parts.worker_id == catga.parse_id(before).worker_id


# -------------------------------------------------------------------------------- serialisation


def test_msgpack_and_json_round_trip() -> None:
    message = PlaceOrder("ada", 3, correlation_id=11)
    for codec in (msgspec.json, msgspec.msgpack):
        body = codec.encode(message)
        assert codec.decode(body, type=PlaceOrder) == message
        assert codec.decode(body, type=PlaceOrder | GetOrder | OrderPlaced) == message


def test_encoded_bodies_name_their_class() -> None:
    body = msgspec.json.decode(msgspec.json.encode(UrgentOrderPlaced("o-1")))
    assert body[TAG_FIELD] == f"{__name__}.UrgentOrderPlaced"
    assert msgspec.json.decode(msgspec.json.encode(GetOrder("o-1")))[TAG_FIELD] == "tests.orders.get"


def test_a_field_named_type_is_allowed() -> None:
    class Account(catga.Event):
        type: str

    assert msgspec.json.decode(msgspec.json.encode(Account("savings")), type=Account).type == "savings"


def test_messages_pickle() -> None:
    message = PlaceOrder("ada", 3)
    assert pickle.loads(pickle.dumps(message)) == message


def test_public_module_rewrite_keeps_msgspec_working() -> None:
    assert catga.Message.__module__ == "catga"
    assert repr(catga.Command) == "<class 'catga.Command'>"
    assert repr(PlaceOrder("ada", 3)).startswith("PlaceOrder(customer='ada', amount=3, message_id=")
    # msgspec resolves the base fields' annotations from the class; both codecs and `convert` work.
    message = msgspec.convert({"customer": "ada", "amount": 3, "message_id": 1}, PlaceOrder)
    assert message == PlaceOrder("ada", 3, message_id=1)
    assert msgspec.json.decode(b'{"message_id": 4}', type=catga.Event).message_id == 4
    assert pickle.loads(pickle.dumps(catga.Event(message_id=4))) == catga.Event(message_id=4)


# ----------------------------------------------------------------------------------- wire names


def test_wire_name_of_an_undeclared_tag_is_module_qualname() -> None:
    assert catga.wire_name(PlaceOrder) == f"{__name__}.PlaceOrder"
    assert PlaceOrder.__struct_config__.tag == f"{__name__}.PlaceOrder"


def test_wire_name_is_the_declared_tag() -> None:
    assert catga.wire_name(GetOrder) == "tests.orders.get"
    assert catga.wire_name(TaggedBase) == "tests.tagged-base"
    assert catga.wire_name(NumberTagged) == "7"
    assert NumberTagged.__struct_config__.tag == 7


def test_subclasses_do_not_inherit_a_tag() -> None:
    assert catga.wire_name(UntaggedChild) == f"{__name__}.UntaggedChild"
    assert UntaggedChild.__struct_config__.tag == f"{__name__}.UntaggedChild"
    assert catga.wire_name(UrgentOrderPlaced) == f"{__name__}.UrgentOrderPlaced"


def test_an_explicitly_untagged_message_is_named_by_module_qualname() -> None:
    class Untagged(catga.Event, tag=False):
        pass

    assert Untagged.__struct_config__.tag is None
    assert catga.wire_name(Untagged) == f"{__name__}.{Untagged.__qualname__}"

    class NoneTag(catga.Event, tag=None):  # msgspec's "not given": gets its own tag
        pass

    assert NoneTag.__struct_config__.tag == catga.wire_name(NoneTag) == f"{__name__}.{NoneTag.__qualname__}"


def test_bases_have_catga_wire_names() -> None:
    names = [catga.wire_name(cls) for cls in (catga.Message, catga.Request, catga.Command, catga.Query, catga.Event)]
    assert names == ["catga.Message", "catga.Request", "catga.Command", "catga.Query", "catga.Event"]


def test_registry_lookup() -> None:
    assert _lookup_wire_name(f"{__name__}.PlaceOrder") is PlaceOrder
    assert _lookup_wire_name("tests.orders.get") is GetOrder
    assert _lookup_wire_name("catga.Event") is catga.Event
    with pytest.raises(KeyError, match="no-such-message"):
        _lookup_wire_name("no-such-message")


def test_two_classes_with_one_wire_name_raise_naming_both() -> None:
    class First(catga.Event, tag="tests.clash"):
        pass

    with pytest.raises(ValueError, match=r"tests\.clash") as caught:

        class Second(catga.Command[None], tag="tests.clash"):
            pass

    message = str(caught.value)
    assert First.__qualname__ in message
    assert "Second" in message
    assert _lookup_wire_name("tests.clash") is First


def test_redefining_the_same_qualname_replaces_the_entry() -> None:
    def define() -> type:
        class Redefined(catga.Event, tag="tests.redefined"):
            pass

        return Redefined

    old, new = define(), define()
    assert old is not new
    assert _lookup_wire_name("tests.redefined") is new


def test_the_registry_does_not_keep_classes_alive() -> None:
    class Ephemeral(catga.Event, tag="tests.ephemeral"):
        pass

    assert _lookup_wire_name("tests.ephemeral") is Ephemeral
    del Ephemeral
    gc.collect()
    with pytest.raises(KeyError):
        _lookup_wire_name("tests.ephemeral")

    # The name is free again, for any class.
    class Another(catga.Command[None], tag="tests.ephemeral"):
        pass

    assert _lookup_wire_name("tests.ephemeral") is Another


def test_wire_name_of_plain_classes() -> None:
    assert catga.wire_name(PlainRequest) == f"{__name__}.PlainRequest"
    assert catga.wire_name(int) == "builtins.int"

    class Local:
        pass

    assert catga.wire_name(Local) == f"{__name__}.{Local.__qualname__}"


def test_wire_name_takes_a_class() -> None:
    with pytest.raises(TypeError, match="takes a class"):
        catga.wire_name(PlaceOrder("ada", 3))  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------- the context


def test_no_context_outside_a_handler() -> None:
    assert catga.current_context() is None


def test_context_of_a_message() -> None:
    parent = PlaceOrder("ada", 3)
    token = CURRENT_MESSAGE.set(parent)
    try:
        context = catga.current_context()
        assert context is not None
        assert context.message is parent
        assert context.message_id == parent.message_id
        assert context.correlation_id == parent.message_id  # effective: no correlation id of its own
        assert context == catga.MessageContext(parent)
        assert "PlaceOrder" in repr(context)
    finally:
        CURRENT_MESSAGE.reset(token)
    assert catga.current_context() is None


def test_context_correlation_is_effective() -> None:
    parent = PlaceOrder("ada", 3, correlation_id=77)
    context = catga.MessageContext(parent)
    assert context.correlation_id == 77
    assert context.message_id == parent.message_id


def test_context_of_a_plain_object() -> None:
    context = catga.MessageContext(PlainRequest("x"))
    assert context.message_id is None
    assert context.correlation_id is None


def test_new_messages_inherit_the_effective_correlation_id() -> None:
    parent = PlaceOrder("ada", 3)
    token = CURRENT_MESSAGE.set(parent)
    try:
        child = OrderPlaced("o-1")
        grandchild_token = CURRENT_MESSAGE.set(child)
        try:
            grandchild = GetOrder("o-1")
        finally:
            CURRENT_MESSAGE.reset(grandchild_token)
        explicit = OrderPlaced("o-2", correlation_id=None)
    finally:
        CURRENT_MESSAGE.reset(token)
    assert child.correlation_id == parent.message_id
    assert grandchild.correlation_id == parent.message_id  # the conversation keeps its first id
    assert explicit.correlation_id is None
    assert OrderPlaced("o-3").correlation_id is None


def test_correlation_from_a_plain_parent() -> None:
    @dataclass
    class WithIds:
        message_id: int
        correlation_id: int | None = None

    for parent, expected in [
        (WithIds(5), 5),
        (WithIds(5, 9), 9),
        (PlainRequest("x"), None),
        (object(), None),
    ]:
        token = CURRENT_MESSAGE.set(parent)
        try:
            assert OrderPlaced("o").correlation_id == expected
        finally:
            CURRENT_MESSAGE.reset(token)
