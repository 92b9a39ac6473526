"""The package type-checks with mypy (its settings: [tool.mypy] in pyproject.toml, strict
for messages, store and server), and the README's examples type-check as a user's code
under `mypy --strict`: the public API's types are what a user's checker sees."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.harness import ROOT

# Modules whose errors are left out while they are not typed yet (none now: keep it so).
UNTYPED: set[str] = set()

# Names the README's examples take as given (a user's own functions and values).
README_CONTEXT = """
from typing import Any

import martinet

url = "tcp://127.0.0.1:8008"


def alert(text: str) -> None: ...


def record_result(event: dict[str, Any]) -> None: ...
"""

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


@pytest.mark.timeout(180)
def test_the_readme_examples_type_check_as_strict_user_code(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    examples = tmp_path / "readme_examples.py"
    examples.write_text(README_CONTEXT + "\n".join(blocks))
    # As a user's project sees an installed martinet: its own errors silent, its types used.
    # The README's handlers are unannotated on purpose (short examples): allowed here.
    report, errors = mypy(
        "--strict",
        "--allow-untyped-defs",
        "--follow-imports=silent",
        "--cache-dir",
        str(ROOT / ".mypy_cache" / "readme"),
        str(examples),
        cwd=tmp_path,
        MYPYPATH=str(ROOT),
    )
    assert not errors, "the README's examples, as a user's code under mypy --strict:\n" + report
