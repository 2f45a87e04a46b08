"""The public surface of `catga`: `__all__`, lazy submodules, public reprs, docstring examples."""

import doctest
import gc
import importlib
import subprocess
import sys
import types

import pytest

import catga

PUBLIC = {
    # section 1
    "Message",
    "Request",
    "Command",
    "Query",
    "Event",
    "MessageContext",
    "current_context",
    "wire_name",
    "MessageId",
    # section 2
    "new_id",
    "IdGenerator",
    "IdParts",
    "parse_id",
    # section 3
    "Mediator",
    "PURE_PYTHON",
    # section 4
    "Result",
    "ErrorCode",
    "CatgaError",
    "ValidationError",
    "HandlerNotFound",
    "DuplicateHandler",
    "HandlerFailed",
    "Timeout",
    "RateLimited",
    "ConcurrencyLimited",
    "CircuitOpen",
    "Conflict",
    "ConcurrencyConflict",
    "TransportError",
    "SerializationError",
    "PersistenceError",
    "PublishError",
    "SagaFailed",
    # section 5
    "Config",
    "behaviors",
    # section 6
    "DeadLetterRecord",
    "DeadLetters",
    # section 8
    "memory",
    "stores",
    "__version__",
    # section 9 (sagas)
    "Saga",
    "SagaContext",
    "SagaExecutor",
    "SagaResult",
    "SagaState",
    "SagaStatus",
    "SagaStep",
    "send_step",
    # event sourcing (issue 7)
    "Aggregate",
    "AggregateRepository",
    "applies",
    "Projection",
    "ProjectionRunner",
    "current_transaction",
    "StoredEvent",
    "upcaster",
}


def test_all_lists_every_public_name() -> None:
    assert set(catga.__all__) == PUBLIC
    assert len(catga.__all__) == len(set(catga.__all__))
    for name in catga.__all__:
        assert getattr(catga, name) is not None


def test_star_import() -> None:
    namespace: dict[str, object] = {}
    exec("from catga import *", namespace)
    assert set(namespace) >= PUBLIC


def test_version_and_core_flag() -> None:
    assert isinstance(catga.__version__, str)
    assert catga.__version__
    assert isinstance(catga.PURE_PYTHON, bool)


def test_behaviors_is_reachable_after_a_plain_import() -> None:
    code = "import catga; print(catga.behaviors.Retry.__name__, 'behaviors' in dir(catga))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["Retry", "True"]
    assert isinstance(catga.behaviors, types.ModuleType)


@pytest.mark.parametrize("name", ["asgi", "health", "observability", "compat"])
def test_submodules_without_extras_are_reachable_after_a_plain_import(name: str) -> None:
    code = f"import catga; print(catga.{name}.__name__)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [f"catga.{name}"]


def test_unknown_attributes() -> None:
    with pytest.raises(AttributeError, match="no attribute `nope`"):
        catga.nope  # noqa: B018


def test_public_classes_show_the_public_module() -> None:
    for name in ("Mediator", "Result", "Config", "ErrorCode", "CatgaError", "PublishError", "Message", "Command"):
        assert getattr(catga, name).__module__ == "catga", name
    assert repr(catga.Mediator) == "<class 'catga.Mediator'>"
    assert catga.current_context.__module__ == "catga"


def test_core_selection_is_exposed_by_core_module() -> None:
    from catga import _core

    assert _core.PURE_PYTHON is catga.PURE_PYTHON
    expected = importlib.import_module("catga._pure" if catga.PURE_PYTHON else "catga._catga")
    assert _core.Dispatcher is expected.Dispatcher
    assert _core.new_id is expected.new_id


@pytest.mark.parametrize(
    ("value", "pure", "warns"),
    [("1", True, False), ("", True, True)],
)
def test_core_choice(value: str, pure: bool, warns: bool) -> None:
    # A fresh interpreter where the native core cannot be imported.
    code = (
        "import sys, warnings\n"
        "sys.modules['catga._catga'] = None\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    import catga\n"
        "print(catga.PURE_PYTHON, [str(w.category.__name__) for w in caught])\n"
    )
    env = {"CATGA_PURE_PYTHON": value, "PATH": ""}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env | _pythonpath())
    assert out.returncode == 0, out.stderr
    flag, warnings_seen = out.stdout.split(" ", 1)
    assert flag == str(pure)
    assert ("RuntimeWarning" in warnings_seen) is warns


def test_core_choice_zero_requires_the_native_core() -> None:
    code = "import sys; sys.modules['catga._catga'] = None; import catga"
    env = {"CATGA_PURE_PYTHON": "0"} | _pythonpath()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "ImportError" in out.stderr or "ModuleNotFoundError" in out.stderr


def test_core_choice_rejects_other_values() -> None:
    env = {"CATGA_PURE_PYTHON": "yes"} | _pythonpath()
    out = subprocess.run([sys.executable, "-c", "import catga"], capture_output=True, text=True, env=env)
    assert out.returncode != 0
    assert "`CATGA_PURE_PYTHON` must be `1`, `0` or unset, got `yes`" in out.stderr


def _pythonpath() -> dict[str, str]:
    return {"PYTHONPATH": ":".join(path for path in sys.path if path)}


# ------------------------------------------------------------------------------ docstring examples

MODULES = [
    "catga",
    "catga._errors",
    "catga._result",
    "catga._messages",
    "catga._config",
    "catga._mediator",
    "catga.behaviors",
    "catga.behaviors._builtins",
    "catga.behaviors._hooks",
    "catga.stores",
    "catga.stores._protocols",
    "catga.memory",
    "catga.memory._idempotency",
    "catga.memory._cache",
    "catga.memory._dead_letters",
    "catga._dead_letters",
    "catga.behaviors._validation",
    "catga._aggregate",
    "catga._projection",
    "catga.memory._events",
    "catga.cli._common",
    "catga._worker_lease",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    globs = vars(module) | {name: getattr(catga, name) for name in catga.__all__} | {"catga": catga}
    tests = finder.find(module, module_name, globs=globs)
    # Re-exported objects carry their public `__module__` (`catga`, `catga.behaviors`), which the
    # finder takes as "defined elsewhere": look at them one by one.
    for name, value in vars(module).items():
        if isinstance(value, type | types.FunctionType) and value.__module__.startswith("catga"):
            tests += finder.find(value, f"{module_name}.{name}", module=False, globs=globs)
    ran: set[str] = set()
    for test in tests:
        key = f"{test.filename}:{test.lineno}:{test.docstring}"
        if key in ran or not test.examples:
            continue
        ran.add(key)
        runner.run(test)
        # Examples define message classes; collect them so that the next example (or module) may
        # define its own under the same wire name.
        gc.collect()
    assert runner.failures == 0, f"{runner.failures} docstring example(s) failed in {module_name}"
