"""The package as users install it: its version said in one place and by both commands,
its license and metadata in the wheel, the sample config inside it, and `martinet config`."""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
import zipfile

import martinet
from martinet import cli
from martinet.cli.worker import worker_main
from martinet.config import Settings, load, read_file
from tests.harness import ROOT

SAMPLE = ROOT / "martinet" / "sample.toml"


def test_one_version_said_by_the_package_its_metadata_and_both_commands(capsys):
    assert importlib.metadata.version("martinet") == martinet.__version__
    for main, name in ((cli.main, "martinet"), (worker_main, "martinet-worker")):
        try:
            main(["--version"])
        except SystemExit as exc:
            assert exc.code == 0
        assert capsys.readouterr().out.strip() == f"{name} {martinet.__version__}"


def test_the_sample_config_is_in_the_package_and_printed_whole(capsys):
    assert cli.main(["config", "--sample"]) == 0
    assert capsys.readouterr().out == SAMPLE.read_text()


def test_config_prints_the_settings_in_effect_as_a_file_that_reads_back_the_same(
    tmp_path, capsys, monkeypatch
):
    given = tmp_path / "given.toml"
    given.write_text(
        '[daemon]\nclient_port = 9100\n[queues.images]\nweight = 3\n[task_limits.charge]\nrate = "5/second"\n'
    )
    given.chmod(0o600)
    monkeypatch.setenv("MARTINET_DB", "postgresql://app:s3cret@db.internal/tasks")
    monkeypatch.setenv("MARTINET_INSECURE_BIND", "true")
    assert cli.main(["config", "--config", str(given)]) == 0
    printed = capsys.readouterr().out
    assert 'db = "postgresql://app:***@db.internal/tasks"' in printed and "s3cret" not in printed
    again = tmp_path / "again.toml"
    again.write_text(printed)
    again.chmod(0o600)
    expected = load(
        given,
        environ={"MARTINET_DB": "postgresql://app:***@db.internal/tasks", "MARTINET_INSECURE_BIND": "1"},
    )
    assert load(again, environ={}) == expected
    assert set(read_file(again)) == {f for f in Settings.__dataclass_fields__}


def test_the_wheel_holds_the_license_the_metadata_and_the_package_data(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    (wheel,) = tmp_path.glob("martinet-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        info = f"martinet-{martinet.__version__}.dist-info"
        metadata = z.read(f"{info}/METADATA").decode()
    assert f"{info}/licenses/LICENSE" in names
    for packaged in ("martinet/sample.toml", "martinet/py.typed", "martinet/web/templates/base.html"):
        assert packaged in names, packaged
    assert "License-Expression: MIT" in metadata and f"Version: {martinet.__version__}" in metadata
    for classifier in (
        "Typing :: Typed",
        "Programming Language :: Python :: 3.11",
        "Operating System :: POSIX",
    ):
        assert f"Classifier: {classifier}" in metadata


def test_shell_completion_scripts_complete_commands_and_flags(tmp_path, capsys):
    """`martinet --completion bash` (and martinet-worker's), loaded in a real bash."""
    scripts = {}
    for main, name in ((cli.main, "martinet"), (worker_main, "martinet-worker")):
        try:
            main(["--completion", "bash"])
        except SystemExit as exc:
            assert exc.code == 0
        scripts[name] = tmp_path / f"{name}.bash"
        scripts[name].write_text(capsys.readouterr().out)

    def complete(name: str, *words: str) -> list[str]:
        function = "_shtab_" + name.replace("-", "_")
        probe = f"source {scripts[name]}; COMP_WORDS=({name} {' '.join(words)}); COMP_CWORD={len(words)}; " \
            f'{function}; echo "${{COMPREPLY[@]}}"'  # fmt: skip
        return subprocess.run(
            ["bash", "-c", probe], capture_output=True, text=True, timeout=30
        ).stdout.split()

    assert complete("martinet", "qu") == ["queues"]
    assert complete("martinet", "queues", "set", "images", "--or") == ["--order"]
    assert "--concurrency" in complete("martinet-worker", "app.tasks", "--con")
    for shell in ("zsh", "tcsh"):
        try:
            cli.main(["--completion", shell])
        except SystemExit:
            pass
        assert "martinet" in capsys.readouterr().out
