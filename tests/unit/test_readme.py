"""The README is part of the interface: its examples must stay valid, and CI must run
exactly the test command it gives a newcomer."""

from __future__ import annotations

import ast
import re

from tests.harness import ROOT

README = (ROOT / "README.md").read_text()


def test_every_python_example_in_the_readme_parses():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert len(blocks) >= 8
    for block in blocks:
        ast.parse(block)


def test_ci_runs_the_readme_test_command():
    test_command = re.search(r"Run the tests.*?```sh\n(.*?)\n```", README, re.S).group(1).strip()
    ci = (ROOT / ".ci" / "run").read_text()
    assert test_command.replace(" -q ", " ") in ci.replace(" -q ", " ")


def test_the_readme_names_every_cli_command():
    from martinet.cli import build_parser

    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # noqa: SLF001 - argparse keeps them here
    for name in commands:
        assert f"martinet {name}" in README, name
