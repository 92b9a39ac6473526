"""The README and the pages under docs/ are part of the interface: their examples must
stay valid, the CLI's every command must be documented, and CI must run exactly the
test command the README gives a newcomer."""

from __future__ import annotations

import ast
import re

import pytest

from tests.harness import ROOT
from tests.unit.test_docs import PAGES, page_section, python_blocks

README = PAGES["README.md"]


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_python_example_parses(page):
    for block in python_blocks(PAGES[page]):
        ast.parse(block, filename=page)


@pytest.mark.parametrize("page", sorted(PAGES))
def test_every_python_example_is_one_the_checks_see(page):
    """A block written ```py, or indented (in a list), or a skip mark away from its block
    would escape the checks here and in test_types.py without a word."""
    lines = PAGES[page].splitlines()
    odd = [line for line in lines if re.match(r"\s*```\s*py", line) and line != "```python"]
    assert not odd, f"{page}: write a Python block as ```python at the start of a line: {odd}"
    for i, line in enumerate(lines):
        if line.startswith("<!-- mypy"):
            assert re.fullmatch(r"<!-- mypy: skip\b.*-->", line), f"{page}:{i + 1}: {line}"
            assert lines[i + 1 : i + 2] == ["```python"], (
                f"{page}:{i + 1}: a skip mark goes just before ```python"
            )


def test_the_pages_have_their_examples():
    """A change to how blocks are found (or a page's fences) must not make the checks
    above and in test_types.py vacuous."""
    assert len(python_blocks(README)) >= 2
    assert sum(len(python_blocks(text)) for text in PAGES.values()) >= 20


def test_ci_runs_the_readme_test_command():
    section = page_section("README.md", "## Two commands")
    test_command = section.split("Run the tests", 1)[1].split("```sh\n", 1)[1].split("\n```", 1)[0].strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace(" -q ", " ") in ci.replace(" -q ", " ")


def test_the_docs_name_every_cli_command():
    from martinet.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    text = "\n".join(PAGES.values())
    for name in commands:
        assert f"martinet {name}" in text, name
    assert not [name for name in commands if f"martinet {name}" not in PAGES["docs/cli.md"]]
