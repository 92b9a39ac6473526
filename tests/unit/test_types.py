"""The package type-checks with mypy (its settings: [tool.mypy] in pyproject.toml, strict
for messages, store and server), and the examples of the README and of every docs/*.md
page type-check as a user's code under `mypy --strict`: the public API's types are what
a user's checker sees.

How a page's examples are checked, and how a page asks for more:

- A page's ```python blocks, in order, make one module (`docs/api.md` -> docs_api.py): a
  page reads as one user's code, so a block may use what an earlier block of the same
  page defined, never what another page did. All the pages' modules go to one mypy run.
- Each module starts with CONTEXT, the names every example takes as given (a user's own
  functions and values: `url`, `alert`, `record_result`). A page that needs more (a
  framework's settings or imports, a stand-in for the user's own objects) adds its lines
  in PAGE_CONTEXT, under the page's path: they go after CONTEXT, before the page's blocks.
- Libraries that ship no types (Django, say) are read as `Any`, as in a user's project
  that has not installed their stubs: the check is about martinet's types. A library an
  example imports must be installed by the `dev` extra (pyproject.toml), or mypy reports
  the import.
- A block that is not code of such a module (a fragment of a file, a settings.py shown
  whole, code for a setup the tests do not have) is marked by this line just before its
  fence, invisible on GitHub and on the site:
  `<!-- mypy: skip (why) -->`. It is still parsed (test_readme.py). Prefer
  PAGE_CONTEXT: a skipped block is checked by nothing but the parser.
- Handlers may be left unannotated (short examples): `--allow-untyped-defs`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.harness import ROOT
from tests.unit.test_docs import PAGES, python_blocks_at

# Modules whose errors are left out while they are not typed yet (none now: keep it so).
UNTYPED: set[str] = set()

# Names every page's examples take as given (a user's own functions and values).
CONTEXT = """
from typing import Any

import martinet

url = "tcp://127.0.0.1:8008"


def alert(text: str) -> None: ...


def record_result(event: dict[str, Any]) -> None: ...
"""

# What a page's examples need beyond CONTEXT, by the page's path (see the docstring).
PAGE_CONTEXT: dict[str, str] = {}

_SUMMARY = re.compile(r"^(Success: no issues found|Found \d+ errors? in \d+ files?) ", re.M)


def mypy(*args: str, cwd: os.PathLike[str] | str = ROOT, **env: str) -> tuple[str, list[str]]:
    """mypy's report and its error lines; fails the test if mypy itself could not run."""
    run = subprocess.run(
        [sys.executable, "-m", "mypy", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=170,
    )
    report = run.stdout + run.stderr
    assert run.returncode in (0, 1) and _SUMMARY.search(run.stdout) and not run.stderr, report
    return report, [line for line in run.stdout.splitlines() if ": error:" in line]


@pytest.mark.timeout(180)  # about 5 s without a cache (a fresh clone), 1 s with one
def test_the_package_type_checks():
    report, errors = mypy()  # the files and settings of [tool.mypy]
    kept = [line for line in errors if line.split(":", 1)[0] not in UNTYPED]
    assert not kept, "mypy finds errors:\n" + "\n".join(kept) + "\n\nmypy's whole report:\n" + report


def _module_name(page: str) -> str:
    """docs/finding-tasks.md -> docs_finding_tasks, README.md -> readme."""
    return re.sub(r"\W", "_", page.removesuffix(".md").replace("/", "_")).lower()


@pytest.mark.timeout(180)
def test_the_pages_examples_type_check_as_strict_user_code(tmp_path):
    assert set(PAGE_CONTEXT) <= set(PAGES), "PAGE_CONTEXT names a page that is not there"
    modules, where = [], {}  # where[(module file, its line)] = "docs/api.md:12"
    for page, text in PAGES.items():
        blocks = python_blocks_at(text, skipped=False)
        if not blocks:
            continue
        name = f"{_module_name(page)}.py"
        source = CONTEXT + PAGE_CONTEXT.get(page, "") + "\n"
        for first, code in blocks:
            at = source.count("\n") + 1
            where.update({(name, at + i): f"{page}:{first + i}" for i in range(code.count("\n"))})
            source += code + "\n"
        (tmp_path / name).write_text(source)
        modules.append(name)
    assert len(modules) >= 5, modules
    # As a user's project sees an installed martinet: its own errors silent, its types used.
    report, errors = mypy(
        "--strict",
        "--allow-untyped-defs",
        "--follow-imports=silent",
        "--disable-error-code=import-untyped",
        "--cache-dir",
        str(ROOT / ".mypy_cache" / "pages"),
        *modules,
        cwd=tmp_path,
        MYPYPATH=str(ROOT),
    )
    # Each error said at its page's line (`docs/api.md:12: error: ...`), or at its module's
    # when it is in a page's context.
    errors = [re.sub(r"^([\w.]+):(\d+):", lambda m: _page_line(where, m) + ":", line) for line in errors]
    assert not errors, (
        "the pages' examples, as a user's code under mypy --strict:\n" + "\n".join(errors) + "\n\n" + report
    )


def _page_line(where: dict[tuple[str, int], str], found: re.Match[str]) -> str:
    return where.get((found.group(1), int(found.group(2))), found.group(0)[:-1])
