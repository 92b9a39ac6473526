"""The dashboard in a real browser: Debian's chromium driven by Playwright, against a real
daemon, a real worker and `martinet web`, each its own process. With
MARTINET_SCREENSHOTS=1 it also draws docs/screenshots/ (docs/dashboard.md links them), so the
pictures show what the code does: `MARTINET_SCREENSHOTS=1 .venv/bin/python -m pytest
tests/e2e/test_web_browser.py`.

The browser is found on PATH (`chromium`); .ci/run installs it when it is missing.
Without it the test is skipped, saying so, except where MARTINET_TEST_REQUIRE_BACKENDS=1
(CI), where it fails."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

import martinet
from tests.backends import REQUIRED
from tests.harness import ROOT, START_TIMEOUT, free_ports, wait_for

SHOTS = ROOT / "docs" / "screenshots"


def browser_path() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        reason = "no chromium on PATH (apt-get install chromium; .ci/run does)"
        if REQUIRED:
            pytest.fail(reason + " [MARTINET_TEST_REQUIRE_BACKENDS=1]")
        pytest.skip(reason)
    return path


def start_web(cluster, tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    (port,) = free_ports(1)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MARTINET_")}
    env["MARTINET_URL"] = cluster.url
    log = open(tmp_path / f"web-{port}.log", "w")  # noqa: SIM115 (closed with the process)
    proc = subprocess.Popen([sys.executable, "-m", "martinet", "web", "--bind", f"127.0.0.1:{port}", *extra],
                            stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path, env=env)  # fmt: skip
    proc.log = log  # type: ignore[attr-defined]
    base = f"http://127.0.0.1:{port}"

    def answers() -> bool:
        try:
            urllib.request.urlopen(base + "/static/martinet.css", timeout=2).close()
            return True
        except urllib.error.HTTPError:
            return True  # (401: it answers)
        except OSError:
            assert proc.poll() is None, (tmp_path / f"web-{port}.log").read_text()
            return False

    wait_for(answers, START_TIMEOUT, "martinet web to answer")
    return proc, base


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    proc.log.close()  # type: ignore[attr-defined]


def test_the_dashboard_in_a_browser(cluster, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    executable = browser_path()
    cluster.start_daemon()
    cluster.start_worker()
    m = cluster.client(30)
    dead = m.execute({"name": "flaky", "max_attempts": 1}, {"succeed_on": 2})  # dies at attempt 1
    with pytest.raises(martinet.TaskFailed):
        m.wait(dead, timeout=30)
    m.every("1 hour", "add", {"a": 1, "b": 2})
    web, base = start_web(cluster, tmp_path)
    guarded, guarded_base = start_web(cluster, tmp_path, "--token", "s3cret")
    shots = os.environ.get("MARTINET_SCREENSHOTS") == "1"
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.set_default_timeout(20_000)
            # A running task's page: its progress bar moves as the worker reports
            crawl = m.execute("crawl", {"n": 30, "pause": 0.2})
            page.goto(f"{base}/tasks/{crawl}")
            bar = page.locator(f"#progress-{crawl} .bar")
            first = bar.evaluate("e => e.style.width")
            page.wait_for_function(
                f"w => document.querySelector('#progress-{crawl} .bar').style.width !== w", arg=first
            )
            page.wait_for_function(
                f"() => parseInt(document.querySelector('#progress-{crawl} .bar').style.width) >= 20"
            )
            expect(page.locator(f"#message-{crawl}")).to_contain_text("page")
            if shots:
                page.goto(f"{base}/")  # the overview, while it runs
                expect(page.get_by_role("heading", name="Overview")).to_be_visible()
                page.screenshot(path=str(SHOTS / "overview.png"), full_page=True)
                page.goto(f"{base}/tasks/{crawl}")
                page.screenshot(path=str(SHOTS / "task-running.png"), full_page=True)
            # A dead task: Retry, confirmed, says what it did, and the task succeeds
            page.goto(f"{base}/tasks/{dead}")
            expect(page.locator(f"#status-{dead}")).to_have_text("dead")
            expect(page.locator(".traceback")).to_contain_text("RuntimeError: attempt 1 fails")
            if shots:
                page.screenshot(path=str(SHOTS / "task-dead.png"), full_page=True)
            page.once("dialog", lambda dialog: dialog.accept())
            page.get_by_role("button", name="Retry").click()
            expect(page.get_by_role("status")).to_contain_text(f"task {dead} will run again")
            assert m.wait(dead, timeout=30) == 2
            page.reload()
            expect(page.locator(f"#status-{dead}")).to_have_text("succeeded")
            for path, heading, name in [("/tasks", "Tasks", "tasks"), ("/queues", "Queues", "queues"),
                                        ("/workers", "Workers", "workers"), ("/schedules", "Schedules", "schedules")]:  # fmt: skip
                page.goto(base + path)
                expect(page.get_by_role("heading", name=heading)).to_be_visible()
                if shots:
                    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
            # A dashboard with a token refuses a browser without it, and serves one that has it
            answer = page.goto(f"{guarded_base}/")
            assert answer is not None and answer.status == 401
            expect(page.locator("body")).to_contain_text("needs its token")
            answer = page.goto(f"{guarded_base}/?token=s3cret")
            assert answer is not None and answer.status == 200 and "token" not in page.url
            expect(page.get_by_role("heading", name="Overview")).to_be_visible()
            browser.close()
        m.wait(crawl, timeout=30)
    finally:
        stop(web)
        stop(guarded)
