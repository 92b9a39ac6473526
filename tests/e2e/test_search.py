"""Finding tasks: filters, payload fields, time ranges, sorts, keyset pages and counts,
through a real daemon: the API (on every backend) and the CLI. The store's side is
tests/store/test_search.py; the pure rules, tests/unit/test_search.py."""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import subprocess
import sys

import pytest

import martinet
from martinet.errors import BadInput
from tests.harness import ROOT

# ---- through a real daemon: the API and the CLI ------------------------------------------------


def test_api_search_count_and_pages_under_concurrent_inserts(any_cluster):
    any_cluster.start_daemon()
    m = any_cluster.client()
    ids = m.execute_many([({"name": "resize", "username": "ana"}, {"image_id": i % 3}) for i in range(12)])
    m.execute("email", {"image_id": 1})
    assert [t["id"] for t in m.list(name="resize", where={"image_id": 1})] == ids[1::3][::-1]
    assert m.count(name="resize") == {"queued": 12}
    assert m.count(where={"image_id": 1}, since="1 hour ago") == {"queued": 5}
    assert m.list(since="in 1 hour") == []

    # Pages of 5 while another client keeps adding tasks: each old task once, in order
    seen, page = [], m.search(name="resize", limit=5)
    while True:
        seen.extend(t["id"] for t in page.items)
        m.execute("resize", {"image_id": 0})
        if page.next is None:
            break
        page = m.search(name="resize", limit=5, after=page.next)
    assert seen == ids[::-1]

    for bad, match in [
        ({"colour": "red"}, "unknown filter 'colour'"),
        ({"status": "lost"}, "unknown status 'lost'"),
        ({"since": "in twenty flurbs"}, "could not read 'in twenty flurbs' as a time"),
        ({"after": "bm90IGEgY3Vyc29y"}, "was altered or is not a martinet cursor"),
        ({"sort": "size"}, "unknown sort 'size'"),
    ]:
        with pytest.raises(BadInput, match=match):
            m.search(**bad)


def cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    return subprocess.run(
        [sys.executable, "-m", "martinet", "list", *args, "--url", url, "--timeout", "5"],
        capture_output=True, text=True, cwd=ROOT, env=env, timeout=60,
    )  # fmt: skip


def test_the_readme_search_examples_run(cluster):
    """Each `martinet list` line and the Python example of "Finding tasks" run as written."""
    section = (ROOT / "README.md").read_text().split("## Finding tasks", 1)[1].split("\n## ", 1)[0]
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
