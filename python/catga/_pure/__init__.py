"""The pure-Python core of catga: the same interface and behaviour as the native `catga._catga`.

Private: `catga._core` picks this package or the extension; import the public names from `catga`.
"""

from importlib.metadata import PackageNotFoundError, version

from catga._pure._dispatch import CURRENT_MESSAGE, Dispatcher, Hooks, Route
from catga._pure._ids import DEFAULT_EPOCH_MS, IdGenerator, IdParts, default_generator, new_id, parse_id

__all__ = [
    "CURRENT_MESSAGE",
    "DEFAULT_EPOCH_MS",
    "Dispatcher",
    "Hooks",
    "IdGenerator",
    "IdParts",
    "Route",
    "__version__",
    "default_generator",
    "new_id",
    "parse_id",
]

try:
    __version__: str = version("catga")
except PackageNotFoundError:  # a source checkout that was never installed
    __version__ = "0.0.0"
