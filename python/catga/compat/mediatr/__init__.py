"""A drop-in for the `mediatr` package (1.3.2): `from catga.compat import mediatr`.

Same names, same registries, same behaviour (docs/migrating.md lists the three differences: two
where mediatr fails, one for a list changed behind the registry's back); requests go through
catga's core. Beyond mediatr: `register_event_handler` / `@Mediator.event_handler` and
`publish_async` / `publish`.

>>> import asyncio
>>> from catga.compat import mediatr
>>> class GetArray:
...     def __init__(self, count: int) -> None:
...         self.count = count
>>> @mediatr.Mediator.handler
... async def get_array(request: GetArray) -> list[int]:
...     return list(range(request.count))
>>> @mediatr.Mediator.behavior
... async def double(request: object, next) -> list[int]:
...     return (await next()) * 2
>>> asyncio.run(mediatr.Mediator().send_async(GetArray(2)))
[0, 1, 0, 1]
>>> mediatr.__handlers__.clear(); mediatr.__behaviors__.clear()
"""

from catga.compat.mediatr.exceptions import (
    HandlerNotFoundError,
    InvalidBehaviorError,
    InvalidHandlerError,
    InvalidRequest,
)
from catga.compat.mediatr.mediator import (
    GenericQuery,
    Mediator,
    __behaviors__,
    __event_handlers__,
    __handlers__,
    extract_request_type,
    find_behaviors,
    find_event_handlers,
)

# The version of mediatr this module reproduces (catga's own is `catga.__version__`).
__version__ = "1.3.2"

__all__ = [
    "GenericQuery",
    "HandlerNotFoundError",
    "InvalidBehaviorError",
    "InvalidHandlerError",
    "InvalidRequest",
    "Mediator",
    "__behaviors__",
    "__event_handlers__",
    "__handlers__",
    "__version__",
    "extract_request_type",
    "find_behaviors",
    "find_event_handlers",
]
