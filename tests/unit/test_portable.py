"""`import martinet` and the client need nothing POSIX-only (Windows has no fcntl, termios,
resource): run here with those modules hidden, in a fresh interpreter. The journal takes
its lock with msvcrt where fcntl is missing (a stand-in msvcrt here records the call)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from tests.harness import ROOT

HIDE = """
import sys, types
for name in ("fcntl", "termios", "tty", "resource", "pwd", "grp"):
    sys.modules[name] = None  # import fails as on Windows
"""


def run(code: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", HIDE + textwrap.dedent(code)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def test_the_client_and_an_embedded_daemon_work_without_posix_only_modules(tmp_path):
    out = run(f"""
        import martinet
        m = martinet.Martinet(db="sqlite:///{tmp_path / "m.db"}", client_port=0, worker_port=0, status_port=0)
        tid = m.execute("resize", {{"image_id": 7}})
        print(m.get(tid)["status"], martinet.__version__)
        m.close()
    """)
    assert out.split() == ["queued", __import__("martinet").__version__]


def test_the_journal_locks_with_msvcrt_where_there_is_no_fcntl(tmp_path):
    out = run(f"""
        calls = []
        msvcrt = types.ModuleType("msvcrt")
        msvcrt.LK_NBLCK = 2
        def locking(fd, mode, nbytes):
            if calls:
                raise OSError("locked")  # the second taker finds it held
            calls.append((mode, nbytes))
        msvcrt.locking = locking
        sys.modules["msvcrt"] = msvcrt
        from martinet.errors import JournalError
        from martinet.journal import Journal
        first = Journal.open("{tmp_path / "w.journal"}")
        try:
            Journal.open("{tmp_path / "w.journal"}")
        except JournalError as exc:
            print("held:", "in use" in str(exc) or "locked" in str(exc) or "held" in str(exc))
        print(calls)
        first.close()
    """)
    assert "held: True" in out and "[(2, 1)]" in out
