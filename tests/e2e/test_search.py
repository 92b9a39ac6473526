"""Finding tasks: the examples of docs/finding-tasks.md run as written, the CLI as a process. The API and
the pure rules: tests/unit/test_search.py; the CLI in process, tests/unit/test_cli_commands.py;
the store's side, tests/store/test_search.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import martinet
from tests.harness import ROOT


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    return subprocess.run(
        [sys.executable, "-m", "martinet", "list", *args, "--url", url, "--timeout", "5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def test_the_documented_search_examples_run(cluster):
    """Each `martinet list` line and the Python example of docs/finding-tasks.md run as written."""
    section = (ROOT / "docs" / "finding-tasks.md").read_text()
    shell = re.search(r"```sh\n(.*?)```", section, re.S).group(1)
    python = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    cluster.start_daemon()
    m = cluster.client()
    m.execute({"name": "resize", "username": "ana", "queue": "images", "description": "Resize avatar"},
              {"image_id": 7, "user": {"email": "ana@example.com"}})  # fmt: skip
    lines = [shlex.split(line.split("#")[0]) for line in shell.strip().splitlines()]
    assert len(lines) >= 5 and all(line[:2] == ["martinet", "list"] for line in lines)
    for line in lines:
        out = cli(cluster.url, *line[2:])
        assert out.returncode == 0, (line, out.stderr)
    assert "resize" in cli(cluster.url, *lines[1][2:]).stdout  # the --where example finds it
    martinet.configure(url=cluster.url, timeout=5)
    try:
        with contextlib.redirect_stdout(io.StringIO()) as printed:
            exec(python, {})
        assert printed.getvalue().split() == ["1", "queued", "None"]
    finally:
        martinet.configure(url=cluster.url)  # closes the shared handle
