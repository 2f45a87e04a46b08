"""Run the catga snippets of docs/migrating.md, on the core the environment chose.

Conventions of the guide:

- a ```python block on the line right after `<!-- test -->` is catga code: it must run;
- one right after `<!-- test: compat -->` uses `catga.compat.mediatr`: it runs once that module
  imports (it is skipped while it does not), with mediatr's module-level registries restored after it;
- every other block (the other libraries' side) is not run.

Each snippet runs as a module of its own (a fresh namespace in `sys.modules`, so dataclasses and
string annotations resolve as in a real module). A snippet's `print(...)  # text` lines state what
it prints: its output lines must be exactly those texts (in any order: a handler's `print` may sit
above the call that runs it), and every `print` must state one.
"""

import contextlib
import io
import re
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "migrating.md"

MARKERS = {"<!-- test -->": "catga", "<!-- test: compat -->": "compat"}

try:
    import catga.compat.mediatr as compat_mediatr
except Exception:  # pragma: no cover - while the compat module is being written (or broken mid-edit)
    compat_mediatr = None

# `print(...)  # expected output`: the text after the last two-spaces-hash is the expected line.
PRINT_LINE = re.compile(r"^\s*print\(.*\)  # (?P<expected>.*)$")


@dataclass(frozen=True)
class Snippet:
    kind: str  # "catga" or "compat"
    line: int  # 1-based line of the opening fence
    code: str

    @property
    def id(self) -> str:
        return f"{self.kind}-L{self.line}"


def _snippets(text: str) -> list[Snippet]:
    lines = text.splitlines()
    found: list[Snippet] = []
    i = 0
    while i < len(lines):
        stripped = lines[i].strip()
        if stripped.startswith("<!-- test"):
            assert stripped in MARKERS, f"docs/migrating.md:{i + 1}: unknown marker `{stripped}`"
            following = lines[i + 1].strip() if i + 1 < len(lines) else ""
            assert following == "```python", (
                f"docs/migrating.md:{i + 1}: `{stripped}` must be followed at once by a ```python block"
            )
            start = i + 2
            end = start
            while end < len(lines) and lines[end].strip() != "```":
                end += 1
            assert end < len(lines), f"docs/migrating.md:{i + 2}: unclosed code block"
            found.append(Snippet(MARKERS[stripped], i + 2, "\n".join(lines[start:end]) + "\n"))
            i = end
        i += 1
    return found


SNIPPETS = _snippets(DOC.read_text(encoding="utf-8"))


def _expected_output(snippet: Snippet) -> list[str]:
    expected = []
    for offset, line in enumerate(snippet.code.splitlines()):
        if re.match(r"^\s*print\(", line):
            match = PRINT_LINE.match(line)
            assert match, (
                f"docs/migrating.md:{snippet.line + 1 + offset}: a `print` in a tested snippet must end with "
                "`  # <what it prints>`"
            )
            expected.append(match["expected"])
    return expected


@contextlib.contextmanager
def _compat_registries_restored() -> Iterator[None]:
    """Put mediatr's module-level registries back as they were: the snippets register globally."""
    assert compat_mediatr is not None
    registries = [
        getattr(compat_mediatr, name)
        for name in ("__handlers__", "__behaviors__", "__event_handlers__")
        if hasattr(compat_mediatr, name)
    ]
    saved = [
        (dict(registry), {key: list(value) for key, value in registry.items() if isinstance(value, list)})
        for registry in registries
    ]
    try:
        yield
    finally:
        for registry, (entries, lists) in zip(registries, saved, strict=True):
            registry.clear()
            registry.update(entries)
            for key, contents in lists.items():
                if registry[key] != contents:
                    registry[key][:] = contents


def _run(snippet: Snippet) -> str:
    name = f"docs_migrating_L{snippet.line}"
    module = types.ModuleType(name)
    module.__file__ = f"{DOC}:{snippet.line}"
    sys.modules[name] = module
    out = io.StringIO()
    try:
        code: Any = compile(snippet.code, f"docs/migrating.md:{snippet.line}", "exec")
        with contextlib.redirect_stdout(out):
            exec(code, module.__dict__)
    finally:
        del sys.modules[name]
    return out.getvalue()


def test_the_guide_has_snippets_of_both_kinds() -> None:
    kinds = [snippet.kind for snippet in SNIPPETS]
    assert kinds.count("catga") >= 10
    assert kinds.count("compat") >= 3


def test_every_catga_block_is_marked() -> None:
    """A block that imports catga is catga code: it must be one of the tested ones."""
    text = DOC.read_text(encoding="utf-8")
    tested = {snippet.line for snippet in SNIPPETS}
    lines = text.splitlines()
    for number, line in enumerate(lines, start=1):
        if line.strip() != "```python":
            continue
        end = next(i for i in range(number, len(lines)) if lines[i].strip() == "```")
        body = "\n".join(lines[number:end])
        if re.search(r"^\s*(import catga|from catga)", body, re.MULTILINE):
            assert number in tested, f"docs/migrating.md:{number}: a catga block without `<!-- test -->`"


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[snippet.id for snippet in SNIPPETS])
def test_snippet_runs_and_prints_what_it_says(snippet: Snippet) -> None:
    expected = _expected_output(snippet)
    if snippet.kind == "compat":
        if compat_mediatr is None:
            pytest.skip("catga.compat.mediatr not importable yet")
        with _compat_registries_restored():
            output = _run(snippet)
    else:
        output = _run(snippet)
    assert sorted(output.splitlines()) == sorted(expected), f"printed:\n{output}"
