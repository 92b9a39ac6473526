"""The deployment examples in deploy/ stay true: the systemd units pass `systemd-analyze
verify`, and every martinet command they hold (units, Dockerfile, compose file,
Kubernetes manifest) is one the CLI takes, with the probes on the ports it serves.
(Docker's daemon does not run here: the compose file is not started.)"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from martinet import cli
from tests.harness import ROOT

DEPLOY = ROOT / "deploy"
BIN = Path(sys.executable).parent


def commands() -> list[tuple[str, list[str]]]:
    """(file, argv) of every martinet command in deploy/."""
    found = []
    for unit in sorted((DEPLOY / "systemd").glob("*.service")):
        for line in unit.read_text().splitlines():
            if line.startswith("ExecStart="):
                found.append((unit.name, shlex.split(line.removeprefix("ExecStart="))))
    for name, pattern in (("Dockerfile", r"^CMD (\[.*\])$"), ("compose.yaml", r"command: (\[.*\])$"),
                          ("kubernetes.yaml", r"args: (\[.*\])$")):  # fmt: skip
        for match in re.finditer(pattern, (DEPLOY / name).read_text(), re.MULTILINE):
            found.append((name, json.loads(match.group(1))))
    return found


def test_every_command_in_the_examples_is_one_the_cli_takes():
    seen = set()
    for where, argv in commands():
        program, *args = argv
        name = Path(program).name
        parser = cli.build_parser() if name == "martinet" else cli.build_worker_parser()
        assert name in ("martinet", "martinet-worker"), (where, argv)
        try:
            parser.parse_args(args)
        except SystemExit:
            pytest.fail(f"{where}: {' '.join(argv)} is not a command martinet takes")
        seen.add((where, name))
    assert {w for w, _n in seen} == {"martinet.service", "martinet-worker@.service", "Dockerfile",
                                     "compose.yaml", "kubernetes.yaml"}  # fmt: skip


def test_the_probes_ask_the_ports_the_commands_serve_health_on():
    manifest = (DEPLOY / "kubernetes.yaml").read_text()
    assert '"--metrics", "0.0.0.0:9108"' in manifest and "{ name: metrics, containerPort: 9108 }" in manifest
    assert '"--health", "0.0.0.0:9109"' in manifest and "{ name: health, containerPort: 9109 }" in manifest
    assert manifest.count("path: /healthz") == 2 and manifest.count("path: /readyz") == 2
    compose = (DEPLOY / "compose.yaml").read_text()
    assert "127.0.0.1:9108/readyz" in compose and "127.0.0.1:9109/readyz" in compose


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze on this machine")
def test_the_systemd_units_verify(tmp_path):
    """As installed in /opt/martinet: here the test's own virtualenv stands in for it."""
    for unit in (DEPLOY / "systemd").glob("*.service"):
        (tmp_path / unit.name).write_text(unit.read_text().replace("/opt/martinet/bin/", f"{BIN}/"))
    for name in ("martinet.service", "martinet-worker@1.service"):
        out = subprocess.run(["systemd-analyze", "verify", str(tmp_path / name)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.returncode == 0 and out.stderr == "", (name, out.stderr)
