"""The examples in catga.compat's docstrings run and say what they show."""

import doctest
import importlib

import pytest

MODULES = [
    "catga.compat",
    "catga.compat.mediatr",
    "catga.compat.mediatr.mediator",
    "catga.compat.mediatr.exceptions",
]


@pytest.mark.parametrize("module_name", MODULES)
def test_docstring_examples(module_name: str) -> None:
    module = importlib.import_module(module_name)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [test for test in finder.find(module, module_name) if test.examples]
    for test in tests:
        runner.run(test)
    results = runner.summarize(verbose=False)
    assert results.failed == 0
    assert results.attempted > 0
