"""catga.compat.mediatr keeps mediatr's module-level registries: every test starts and ends empty."""

from collections.abc import Iterator

import pytest

from catga.compat import mediatr


@pytest.fixture(autouse=True)
def empty_registries() -> Iterator[None]:
    registries = (mediatr.__handlers__, mediatr.__behaviors__, mediatr.__event_handlers__)
    for registry in registries:
        registry.clear()
    yield
    for registry in registries:
        registry.clear()
