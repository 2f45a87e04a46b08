"""Drop-in replacements for other Python mediators, dispatched through catga's core.

`catga.compat.mediatr` stands in for the `mediatr` package (1.3.2): change the import, keep the
code. Its requests then go through catga's dispatcher (the Rust core unless `CATGA_PURE_PYTHON=1`)
with mediatr's semantics unchanged. docs/migrating.md shows the next step, catga's own API.

>>> from catga.compat import mediatr
>>> mediatr.Mediator.__module__
'catga.compat.mediatr.mediator'
"""

__all__ = ["mediatr"]


def __getattr__(name: str) -> object:
    # `catga.compat.mediatr` after a plain `import catga.compat`, without importing it up front.
    if name == "mediatr":
        import importlib

        return importlib.import_module("catga.compat.mediatr")
    raise AttributeError(f"module `catga.compat` has no attribute `{name}`")
