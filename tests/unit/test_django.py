"""martinet.django: Django's task framework (django_tasks, the backport of Django 6's
django.tasks) on martinet, and `manage.py martinet_worker`.

One story with real processes: an embedded daemon, a Django project written to a
temporary folder, its worker started as `python -m django martinet_worker`, and this
process enqueuing through the backend and reading results back. The rest in process.
Django is configured here for the test only (and left as it was: another test of this
process may configure it its own way)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from datetime import timedelta
from pathlib import Path

import pytest

from martinet.states import TaskState
from tests.harness import ROOT, Proc, wait_for
from tests.unit.test_docs import PAGES, python_blocks

WAIT = 10.0  # seconds a task may take to end, on a loaded machine

# The Django project of the story: an app whose tasks module the worker finds by itself,
# a module it does not import, and the settings the worker reads.
APP = {
    "djstory/__init__.py": "",
    "djstory/tasks.py": '''
        import sqlite3

        from django.db import connection
        from django_tasks import task


        class Declined(Exception):
            pass


        @task()
        def add(a, b):
            return a + b


        @task(queue_name="emails", priority=7)
        def greet(name, punctuation="!"):
            return {"greeting": f"hello {name}{punctuation}"}


        @task()
        def decline(reason):
            raise Declined(reason)


        @task(takes_context=True)
        def whoami(context):
            return {"id": context.task_result.id, "attempt": context.attempt}


        @task()
        async def square(x):
            return x * x


        @task()
        def hold(fifo):
            with open(fifo) as f:  # until the test writes: it is running meanwhile
                return f.read()


        _used = []


        @task()
        def use_db():
            """Whether this thread's connection was open when the task began, and whether
            the one the task before used is closed now."""
            open_at_start = connection.connection is not None
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            previous_closed = None
            if _used:
                try:
                    _used[-1].execute("SELECT 1")
                    previous_closed = False
                except sqlite3.ProgrammingError as exc:
                    previous_closed = "closed database" in str(exc)
            _used.append(connection.connection)
            return {"open_at_start": open_at_start, "previous_closed": previous_closed}
    ''',
    "djstory/elsewhere.py": """
        from django_tasks import task


        @task()
        def orphan():
            return 1
    """,
}


def tasks_setting(live=None, **options) -> dict:
    """The project's TASKS setting: OPTIONS for the daemon `live`, and `options`."""
    if live is not None:
        ports = {"worker_port": live.m.ports["worker"], "status_port": live.m.ports["status"]}
        options = {"url": live.url, "timeout": 5, **ports, **options}
    return {
        "default": {
            "BACKEND": "martinet.django.MartinetBackend",
            "QUEUES": ["default", "emails"],
            "OPTIONS": {**options, "task_options": {"max_attempts": 1}},
        }
    }


@pytest.fixture
def django_tasks(tmp_path, monkeypatch):
    """`use(TASKS)`: Django configured with that TASKS setting for this test (only TASKS
    changed when another test of this process configured Django), the project's folder
    on the path; everything put back afterwards."""
    import django_tasks.signals  # noqa: F401 - resets the task backends when TASKS changes
    from django.conf import settings
    from django.test.utils import override_settings
    from django.utils.functional import empty

    from martinet.django import backend

    configured_here = not settings.configured
    if configured_here:
        settings.configure(USE_TZ=True)
    for name, text in APP.items():
        path = tmp_path / name
        path.parent.mkdir(exist_ok=True)
        path.write_text(textwrap.dedent(text))
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = []

    def use(tasks: dict) -> None:
        overrides.append(override_settings(TASKS=tasks))
        overrides[-1].enable()

    yield use
    for override in reversed(overrides):
        override.disable()
    backend.close_handles()
    backend.DEFINED.clear()
    for module in [m for m in sys.modules if m == "djstory" or m.startswith("djstory.")]:
        del sys.modules[module]
    if configured_here:
        settings._wrapped = empty


def start_worker(tmp_path: Path, tasks: dict, *argv: str) -> Proc:
    """`python -m django martinet_worker ARGV` for the project in `tmp_path`."""
    (tmp_path / "djstory_settings.py").write_text(
        textwrap.dedent(f"""
            SECRET_KEY = "not secret: a test"
            USE_TZ = True
            INSTALLED_APPS = ["django_tasks", "martinet.django", "djstory"]
            DATABASES = {{"default": {{"ENGINE": "django.db.backends.sqlite3", "NAME": {str(tmp_path / "app.db")!r}}}}}
            TASKS = {tasks!r}
        """)
    )
    env = {"DJANGO_SETTINGS_MODULE": "djstory_settings", "PYTHONPATH": f"{tmp_path}{os.pathsep}{ROOT}"}
    args = [sys.executable, "-m", "django", "martinet_worker", "--no-journal", *argv]
    return Proc(args, tmp_path / "worker.log", env)


def ended(live, result):
    """`result` refreshed once its martinet task has ended (bounded)."""
    import martinet

    try:
        live.m.wait(int(result.id), timeout=WAIT)
    except martinet.TaskFailed:
        pass
    result.refresh()
    return result


def test_django_tasks_run_on_a_worker_started_by_the_management_command(
    django_tasks, make_live, sqlite_url, tmp_path, caplog
):
    from django.utils import timezone
    from django_tasks import TaskResultStatus
    from django_tasks.exceptions import TaskResultDoesNotExist

    # Given a daemon, a Django project whose TASKS use martinet, and a task due shortly
    live = make_live(sqlite_url)
    tasks = tasks_setting(live)
    django_tasks(tasks)
    from djstory import tasks as app

    due = timezone.now() + timedelta(seconds=0.4)
    later = app.add.using(run_after=due).enqueue(1, 1)
    assert app.add.get_result(later.id).status == TaskResultStatus.READY
    assert live.m.get(int(later.id))["status"] == "scheduled"

    # When the management command runs a worker, and tasks are enqueued
    worker = start_worker(tmp_path, tasks, "--concurrency", "1")  # one thread: one connection
    try:
        added = app.add.enqueue(2, 3)
        greeted = app.greet.enqueue("ada", punctuation="?")
        declined = app.decline.enqueue("no funds")
        me = app.whoami.enqueue()
        squared = app.square.enqueue(7)

        # Then each ends with its return value, or its error, as Django says them
        assert ended(live, added).status == TaskResultStatus.SUCCESSFUL and added.return_value == 5
        assert added.worker_ids and added.enqueued_at <= added.started_at <= added.finished_at
        assert ended(live, greeted).return_value == {"greeting": "hello ada?"}
        record = live.m.get(int(greeted.id))  # its fields, as martinet has them
        assert (record["name"], record["queue"], record["priority"]) == ("djstory.tasks.greet", "emails", 7)
        assert record["args"] == {"args": ["ada"], "kwargs": {"punctuation": "?"}}
        assert ended(live, declined).status == TaskResultStatus.FAILED  # max_attempts 1
        (error,) = declined.errors
        assert (
            error.exception_class_path == "djstory.tasks.Declined" and error.exception_class is app.Declined
        )
        assert "no funds" in error.traceback
        with pytest.raises(ValueError, match="failed"):
            declined.return_value  # noqa: B018 - Django's way to say it has none
        assert ended(live, me).return_value == {"id": me.id, "attempt": 1}
        assert ended(live, squared).return_value == 49

        # And the delayed one ran once due
        assert ended(live, later).status == TaskResultStatus.SUCCESSFUL
        assert later.started_at >= due - timedelta(milliseconds=10)  # (times are kept to the ms)

        # A running task is RUNNING until it ends
        fifo = tmp_path / "hold.fifo"
        os.mkfifo(fifo)
        held = app.hold.enqueue(str(fifo))
        wait_for(lambda: app.hold.get_result(held.id).status == TaskResultStatus.RUNNING, WAIT, "RUNNING")
        fifo.write_text("let go")
        assert ended(live, held).return_value == "let go"

        # Database connections are closed between tasks (the worker's hooks)
        first = ended(live, app.use_db.enqueue()).return_value
        second = ended(live, app.use_db.enqueue()).return_value
        assert first["open_at_start"] is False and second == {"open_at_start": False, "previous_closed": True}

        # A task in a module the worker does not import waits, and enqueue says why
        from djstory import elsewhere

        orphan = elsewhere.orphan.enqueue()
        assert "no connected worker handles 'djstory.elsewhere.orphan'" in caplog.text
        assert elsewhere.orphan.get_result(orphan.id).status == TaskResultStatus.READY

        # Ids that name no Django task
        with pytest.raises(TaskResultDoesNotExist):
            app.add.get_result("999999")
        plain = live.m.execute("not.a.django.task")
        with pytest.raises(TaskResultDoesNotExist, match="not.a.django.task"):
            app.add.get_result(str(plain))
    finally:
        code = worker.stop(signal.SIGTERM, timeout=WAIT)
    assert code == 0, worker.log()
    assert "djstory.tasks.add" in worker.log()  # its start line names what it serves


def test_the_worker_command_stops_at_a_module_it_cannot_import(django_tasks, tmp_path):
    worker = start_worker(tmp_path, tasks_setting(url="tcp://127.0.0.1:1"), "djstory.missing")
    assert worker.popen.wait(WAIT) == 1
    assert "CommandError: cannot import 'djstory.missing': No module named 'djstory.missing'" in worker.log()
    assert "Traceback" not in worker.log()


def test_the_backends_options_are_checked_when_django_makes_it():
    from django.core.exceptions import ImproperlyConfigured

    from martinet.django import MartinetBackend

    with pytest.raises(
        ImproperlyConfigured, match=r"TASKS\['default'\]\['OPTIONS'\]: unknown setting 'uurl'"
    ):
        MartinetBackend("default", {"OPTIONS": {"uurl": "tcp://127.0.0.1:8008"}})
    with pytest.raises(ImproperlyConfigured, match="'db' is the daemon's setting"):
        MartinetBackend("default", {"OPTIONS": {"db": "sqlite:///x.db"}})
    with pytest.raises(ImproperlyConfigured, match="task_options"):
        MartinetBackend("default", {"OPTIONS": {"task_options": {"queue": "x"}}})
    with pytest.raises(ImproperlyConfigured, match="max_attempts"):
        MartinetBackend("default", {"OPTIONS": {"task_options": {"max_attempts": 0}}})
    backend = MartinetBackend("default", {"OPTIONS": {"URL": "tcp://db-host:8108", "timeout": 3}})
    assert backend.worker_settings() == {"url": "tcp://db-host:8108", "timeout": 3, "connect": "db-host"}


def test_arguments_that_cannot_travel_are_refused_before_anything_is_sent(django_tasks):
    from datetime import datetime

    nowhere = {"url": "tcp://127.0.0.1:1", "timeout": 0.1}  # no daemon: nothing may be sent
    django_tasks(tasks_setting(**nowhere))
    from djstory import tasks as app

    with pytest.raises(TypeError, match="the arguments of djstory.tasks.add cannot travel as JSON"):
        app.add.enqueue(datetime.now(), 1)


def test_a_martinet_record_reads_as_a_task_result(django_tasks):
    from django_tasks import TaskResultStatus

    from martinet.django.results import result_of

    django_tasks(tasks_setting(url="tcp://127.0.0.1:1"))
    from djstory import tasks as app

    failed_once = {
        "attempt": 1,
        "worker": "w1",
        "started_at": "2030-01-01T00:00:01.000+00:00",
        "outcome": "failed",
        "error": {"type": "ValueError", "message": "x", "traceback": "Traceback ...\nValueError: x\n"},
    }
    record = {
        "id": 5,
        "name": "djstory.tasks.add",
        "status": "failed",  # its first attempt failed; the next is due
        "args": {"args": [1], "kwargs": {"b": 2}},
        "created_at": "2030-01-01T00:00:00.500+00:00",
        "started_at": "2030-01-01T00:00:01.000+00:00",
        "finished_at": None,
        "worker": None,
        "attempts": [failed_once],
    }
    waiting = result_of(record, app.add, "default")
    assert (waiting.status, waiting.args, waiting.kwargs) == (TaskResultStatus.READY, [1], {"b": 2})
    assert [e.exception_class_path for e in waiting.errors] == ["builtins.ValueError"]
    assert waiting.worker_ids == ["w1"] and waiting.attempts == 1 and not waiting.is_finished
    running = result_of(
        {**record, "status": "running", "worker": "w2", "started_at": "2030-01-01T00:00:03.000+00:00"},
        app.add,
        "default",
    )
    assert running.status == TaskResultStatus.RUNNING and running.worker_ids == ["w1", "w2"]
    assert (running.started_at.second, running.last_attempted_at.second) == (1, 3)
    cancelled = result_of({**record, "status": "cancelled", "attempts": []}, app.add, "default")
    assert cancelled.status == TaskResultStatus.FAILED and cancelled.errors == [] and cancelled.is_finished


def test_a_naive_run_after_is_in_djangos_time_zone(django_tasks):
    """(A naive datetime is what a project without USE_TZ gives.)"""
    from datetime import UTC, datetime
    from zoneinfo import ZoneInfo

    from django.conf import settings

    from martinet.django import MartinetBackend

    backend = MartinetBackend("default", {})
    due = backend._due(datetime(2999, 1, 1, 12, 0))
    assert due == datetime(2999, 1, 1, 12, 0, tzinfo=ZoneInfo(settings.TIME_ZONE))
    assert backend._due(datetime(2000, 1, 1)) is None  # past: now
    assert backend._due(datetime(2999, 1, 1, tzinfo=UTC)) == datetime(2999, 1, 1, tzinfo=UTC)


def test_the_worker_runs_a_martinet_backend_only(django_tasks):
    from martinet.django.runner import run_worker
    from martinet.errors import MartinetError

    immediate = {"BACKEND": "django_tasks.backends.immediate.ImmediateBackend"}
    django_tasks({**tasks_setting(url="tcp://127.0.0.1:1"), "other": immediate})
    with pytest.raises(
        MartinetError, match=r"TASKS\['other'\] is django_tasks.backends.immediate.ImmediateBackend"
    ):
        run_worker({"backend": "other"})
    with pytest.raises(MartinetError, match="no task backend 'nope'"):
        run_worker({"backend": "nope"})


def test_a_martinet_error_names_its_exception_class():
    from martinet.django.results import exception_path

    trace = 'Traceback (most recent call last):\n  File "x.py", line 1\nmyapp.tasks.Declined: no\nfunds\n'
    assert (
        exception_path({"type": "Declined", "message": "no\nfunds", "traceback": trace})
        == "myapp.tasks.Declined"
    )
    assert (
        exception_path({"type": "ValueError", "traceback": "Traceback...\nValueError: x\n"})
        == "builtins.ValueError"
    )
    assert exception_path({"type": "TaskTimeout", "message": "past 1s"}) == "martinet.errors.TaskTimeout"
    assert exception_path({"type": "WorkerLost", "message": "gone"}) == "WorkerLost"


def test_import_martinet_does_not_import_django():
    code = "import sys, martinet; print(sorted(m for m in sys.modules if m.split('.')[0] in ('django', 'django_tasks')))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=30)
    assert run.returncode == 0 and run.stdout.strip() == "[]", run.stdout + run.stderr


# ---- the page: docs/django.md ----

PAGE = PAGES["docs/django.md"]


def test_the_pages_settings_are_what_the_backend_takes():
    from django.utils.module_loading import import_string

    from martinet.django import MartinetBackend

    (settings_block,) = [block for block in python_blocks(PAGE) if "TASKS = {" in block]
    namespace: dict = {}
    exec(settings_block, namespace)  # noqa: S102 - our own page
    assert "martinet.django" in namespace["INSTALLED_APPS"]
    params = namespace["TASKS"]["default"]
    assert import_string(params["BACKEND"]) is MartinetBackend
    backend = MartinetBackend("default", params)
    assert backend.settings["url"] == "tcp://127.0.0.1:8008"
    assert backend.task_options == {"max_attempts": 1, "time_limit": 300}


def test_the_pages_state_table_is_the_code_s():
    from martinet.django.results import STATUSES

    rows = dict(re.findall(r"^\| `(\w+)` \| (READY|RUNNING|SUCCESSFUL|FAILED)\b", PAGE, re.M))
    assert rows == {state.value: str(status.value) for state, status in STATUSES.items()}
    assert set(STATUSES) == set(TaskState)
