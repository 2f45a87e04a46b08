"""The two cores implement one interface (docs/internals.md): same names, same signatures.

The interface is written down in `python/catga/_catga.pyi`. The pure core is checked against the
stub always; the native core against the pure one when it is built. With `CATGA_PURE_PYTHON=0` the
native core is required, so a missing extension fails here instead of skipping.
"""

import ast
import inspect
import os
import typing
from contextvars import ContextVar
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

import catga
import catga._pure as pure

STUB_PATH = Path(catga.__file__).with_name("_catga.pyi")
STUB_TREE = ast.parse(STUB_PATH.read_text())


def _stub_module() -> dict[str, Any]:
    """The stub executed as Python (its bodies are `...`), so `inspect.signature` can read it."""
    namespace: dict[str, Any] = {}
    source = "from __future__ import annotations\n" + STUB_PATH.read_text()
    exec(compile(source, str(STUB_PATH), "exec"), namespace)
    return namespace


STUB = _stub_module()


def _stub_names() -> list[str]:
    names = []
    for node in STUB_TREE.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            names.append(node.name)
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.append(node.target.id)
        elif isinstance(node, ast.Assign):
            names.extend(target.id for target in node.targets if isinstance(target, ast.Name))
    return names


def _stub_members(class_name: str) -> tuple[list[str], list[str]]:
    """(methods, properties) the stub declares on a class."""
    node = next(n for n in STUB_TREE.body if isinstance(n, ast.ClassDef) and n.name == class_name)
    methods: list[str] = []
    properties: list[str] = []
    for item in node.body:
        if isinstance(item, ast.FunctionDef):
            is_property = any(isinstance(d, ast.Name) and d.id == "property" for d in item.decorator_list)
            (properties if is_property else methods).append(item.name)
    return methods, properties


NAMES = _stub_names()
CLASSES = [node.name for node in STUB_TREE.body if isinstance(node, ast.ClassDef)]
FUNCTIONS = [node.name for node in STUB_TREE.body if isinstance(node, ast.FunctionDef)]


def _shape(function: Any, *, method: bool) -> list[tuple[Any, ...]]:
    """A signature without annotations: what a caller sees.

    A method's `self` and the names of `*args`/`**kwargs` are left out: PyO3 spells them
    `$self, /` and whatever the Rust parameters are called, which no caller can tell apart.
    """
    parameters = list(inspect.signature(function).parameters.values())
    if method:
        parameters = parameters[1:]
    shape: list[tuple[Any, ...]] = []
    for param in parameters:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            shape.append((param.kind.name,))
        else:
            shape.append((param.name, param.kind.name, param.default))
    return shape


def _exported(module: ModuleType) -> set[str]:
    """The public names a core exports (`__all__` without private helpers)."""
    return {name for name in module.__all__ if not name.startswith("_") or name.startswith("__")}


@pytest.fixture(scope="module")
def native() -> ModuleType:
    try:
        import catga._catga as native_core
    except ImportError as exc:
        if os.environ.get("CATGA_PURE_PYTHON") == "0":
            pytest.fail(f"`CATGA_PURE_PYTHON=0` requires the native core, which does not import: {exc}")
        pytest.skip(f"the native core `catga._catga` is not built ({exc}); `make build` builds it")
    return native_core


# -------------------------------------------------------------------------------- pure vs stub


def test_pure_core_exports_the_stub_names() -> None:
    assert _exported(pure) == set(NAMES)
    for name in NAMES:
        assert hasattr(pure, name), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_pure_functions_match_the_stub(name: str) -> None:
    assert _shape(getattr(pure, name), method=False) == _shape(STUB[name], method=False)


@pytest.mark.parametrize("name", CLASSES)
def test_pure_classes_match_the_stub(name: str) -> None:
    _check_class(getattr(pure, name), STUB[name], name)


def test_pure_constants() -> None:
    assert pure.DEFAULT_EPOCH_MS == 1704067200000
    assert isinstance(pure.CURRENT_MESSAGE, ContextVar)
    assert pure.CURRENT_MESSAGE.get() is None
    assert typing.get_origin(pure.Route) is tuple
    assert isinstance(pure.__version__, str)


# ------------------------------------------------------------------------------ native vs pure


def test_native_core_exports_the_same_names(native: ModuleType) -> None:
    assert _exported(native) == _exported(pure)
    for name in NAMES:
        assert hasattr(native, name), name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_native_functions_match_the_pure_ones(native: ModuleType, name: str) -> None:
    assert _shape(getattr(native, name), method=False) == _shape(getattr(pure, name), method=False)


@pytest.mark.parametrize("name", CLASSES)
def test_native_classes_match_the_pure_ones(native: ModuleType, name: str) -> None:
    _check_class(getattr(native, name), getattr(pure, name), name)


def test_native_constants(native: ModuleType) -> None:
    assert native.DEFAULT_EPOCH_MS == pure.DEFAULT_EPOCH_MS
    assert isinstance(native.CURRENT_MESSAGE, ContextVar)
    assert native.CURRENT_MESSAGE.get() is None
    assert typing.get_origin(native.Route) is tuple
    assert native.__version__ == pure.__version__


def _check_class(actual: type, expected: type, name: str) -> None:
    assert isinstance(actual, type), name
    assert _shape(actual, method=False) == _shape(expected, method=False), f"{name}()"
    methods, properties = _stub_members(name)
    for method in methods:
        if method == "__new__":
            continue  # checked as the class's own signature above
        assert callable(getattr(actual, method, None)), f"{name}.{method}"
        assert _shape(getattr(actual, method), method=True) == _shape(getattr(expected, method), method=True), (
            f"{name}.{method}"
        )
    for prop in properties:
        assert inspect.isdatadescriptor(inspect.getattr_static(actual, prop)), f"{name}.{prop}"
