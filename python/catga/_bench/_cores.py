"""Both cores in one process: `catga.Mediator` on the pure-Python and on the native dispatcher.

A benchmark compares the two cores under the same load only if they run side by side, so this
builds the Mediator of whichever core `catga` did not pick at import.

>>> from catga._bench._cores import PURE, import_core, mediator_class
>>> Mediator = mediator_class(import_core(PURE))
>>> Mediator.__name__
'Mediator'
"""

import importlib
import importlib.util
import sys
from types import ModuleType
from typing import Final

import catga
from catga import _core as catga_core
from catga import _mediator as mediator_module

__all__ = ["NATIVE", "PURE", "import_core", "mediator_class"]

PURE: Final = "catga._pure"
NATIVE: Final = "catga._catga"

_MEDIATORS: dict[str, type] = {}


def import_core(name: str) -> ModuleType:
    """The core module `name` (`PURE` or `NATIVE`); raises `ImportError` when it does not import,
    e.g. the extension was never compiled."""
    return importlib.import_module(name)


def mediator_class(core: ModuleType) -> type:
    """`catga.Mediator` built on the `Dispatcher` of `core`, so both cores run in one process.

    `catga.Mediator` subclasses the core chosen at import. For the other one, `catga/_mediator.py`
    is loaded a second time while `catga._core` names that core: every module of catga imports
    core names only from `catga._core` (docs/internals.md), so the copy is the same Mediator on the
    other dispatcher. (Its `CURRENT_MESSAGE` is the other core's, which benchmarks never read.)
    """
    if core.Dispatcher is catga_core.Dispatcher:
        return catga.Mediator
    cached = _MEDIATORS.get(core.__name__)
    if cached is not None:
        return cached
    shim = ModuleType("catga._core")
    shim.__dict__.update(vars(catga_core))
    shim.__dict__.update({name: getattr(core, name) for name in ("CURRENT_MESSAGE", "Dispatcher")})
    shim.PURE_PYTHON = core.__name__ == PURE  # type: ignore[attr-defined]
    name = f"catga._mediator_on_{core.__name__.rpartition('.')[2]}"
    spec = importlib.util.spec_from_file_location(name, mediator_module.__file__)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    saved = sys.modules["catga._core"]
    sys.modules["catga._core"] = shim
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules["catga._core"] = saved
    mediator: type = module.Mediator
    assert issubclass(mediator, core.Dispatcher)
    _MEDIATORS[core.__name__] = mediator
    return mediator
