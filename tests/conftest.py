"""Shared test setup: say which core runs the suite, and check it is the one the environment chose.

`make test-python` runs the suite twice, with `CATGA_PURE_PYTHON=0` (native) and `=1` (pure); a
suite that silently ran on the other core would prove nothing about the one it claims to test.
"""

import os

import pytest

import catga

_CHOICE = os.environ.get("CATGA_PURE_PYTHON", "")
if _CHOICE in ("0", "1") and (_CHOICE == "1") != catga.PURE_PYTHON:  # pragma: no cover - a broken chooser
    raise pytest.UsageError(
        f"`CATGA_PURE_PYTHON={_CHOICE}` but catga.PURE_PYTHON is `{catga.PURE_PYTHON}`: the core chooser is broken"
    )


def pytest_report_header() -> str:
    core = "pure-Python (catga._pure)" if catga.PURE_PYTHON else "native (catga._catga)"
    return f"catga {catga.__version__}, core: {core}, CATGA_PURE_PYTHON={_CHOICE or '(unset)'}"
