"""Composition on one worker: steps in series within one attempt.

Here, in process: compositions called directly with a fake task, and through an in-process
worker. And through the API, in worker threads (tests/live.py); a worker process that refuses a
composition naming a missing step is tests/e2e/test_compose.py.
"""

from __future__ import annotations

import os
import threading

import pytest

import martinet
from martinet.compose import check, compose
from martinet.protocol import Cmd
from martinet.worker import REGISTRY, TaskContext, Worker, _error
from tests.fakes import wire


class FakeTask:
    """Enough of a TaskContext for a composition: attempt, cancelled, progress."""

    def __init__(self, attempt: int = 1) -> None:
        self.attempt = attempt
        self.cancelled = False
        self.log: list = []  # progress reports and step calls, in order

    def progress(self, value=None, message=None) -> None:
        self.log.append(("progress", value, message))


@pytest.fixture(autouse=True)
def registry():
    """compose() registers globally: each test gets the registry back as it found it."""
    saved = dict(REGISTRY)
    yield REGISTRY
    REGISTRY.clear()
    REGISTRY.update(saved)


def bound(name: str, handlers: dict):
    """The composition `name` as a worker serves it: checked and bound to `handlers`."""
    return check(handlers)[name]


def recorder(task: FakeTask, label: str, result):
    def step(t, *args, **kwargs):
        t.log.append(("call", label, args, kwargs))
        return result

    step.__name__ = label
    return step


def test_values_pass_as_kwargs_positional_or_nothing_and_the_last_is_the_result():
    task = FakeTask()
    handlers = {
        "first": recorder(task, "first", {"x": 1, "y": 2}),  # a dict: keyword arguments
        "second": recorder(task, "second", [1, 2]),  # anything else: one positional argument
        "third": recorder(task, "third", None),  # None: no arguments
        "fourth": recorder(task, "fourth", "done"),
    }
    handlers["c"] = martinet.compose("c", ["first", "second", "third", "fourth"])
    assert bound("c", handlers)(task, a=1, b="two") == "done"
    calls = [entry[1:] for entry in task.log if entry[0] == "call"]
    assert calls == [
        ("first", (), {"a": 1, "b": "two"}),  # the task's args
        ("second", (), {"x": 1, "y": 2}),
        ("third", ([1, 2],), {}),
        ("fourth", (), {}),
    ]


def test_other_values_pass_as_one_positional_argument():
    got = []

    def take(task, value):
        got.append(value)
        return value

    for value in (0, "", [], 3.5, "text", (1, 2), False):
        c = martinet.compose("c", [lambda task, v=value: v, take])
        assert bound("c", {"c": c})(FakeTask()) == value
    assert got == [0, "", [], 3.5, "text", (1, 2), False]


def test_plain_functions_and_registered_names_mix():
    def double(task, n):
        return {"n": 2 * n}

    def add_one(task, n):
        return n + 1

    handlers = {"double": double}
    handlers["c"] = martinet.compose("c", ["double", add_one])
    assert bound("c", handlers)(FakeTask(), n=5) == 11
    handlers["d"] = martinet.compose("d", [double, double, "double"])
    assert bound("d", handlers)(FakeTask(), n=1) == {"n": 8}


def test_progress_is_reported_before_each_step():
    task = FakeTask()
    handlers = {"fetch": recorder(task, "fetch", {"rows": [1]}), "targz": recorder(task, "targz", "ok")}

    def reshape(t, rows):
        t.log.append(("call", "reshape", (rows,), {}))
        return {"rows": rows}

    handlers["dl"] = martinet.compose("dl", ["fetch", reshape, "targz"])
    bound("dl", handlers)(task, url="u")
    assert [(e[0], e[1] if e[0] == "call" else e[2]) for e in task.log] == [
        ("progress", "step 1/3: fetch"),
        ("call", "fetch"),
        ("progress", "step 2/3: reshape"),
        ("call", "reshape"),
        ("progress", "step 3/3: targz"),
        ("call", "targz"),
    ]
    assert [e[1] for e in task.log if e[0] == "progress"] == [0.0, 1 / 3, 2 / 3]


def _bad_reshape(task, rows):
    raise ValueError("bad row")


def test_a_failing_step_fails_with_its_position_and_name_and_keeps_the_traceback():
    ran = []
    handlers = {
        "fetch": lambda task, url: {"rows": [url]},
        "targz": lambda task, **kw: ran.append("targz"),
    }
    handlers["dl"] = martinet.compose("dl", ["fetch", _bad_reshape, "targz"])
    with pytest.raises(martinet.StepFailed) as caught:
        bound("dl", handlers)(FakeTask(), url="u")
    exc = caught.value
    assert str(exc) == "step 2/3 (_bad_reshape) failed: ValueError: bad row"
    assert (exc.index, exc.total, exc.step) == (2, 3, "_bad_reshape")
    assert isinstance(exc, martinet.MartinetError)
    assert isinstance(exc.__cause__, ValueError)
    assert ran == []  # the steps after the failed one do not run
    stored = _error(exc)  # what the worker sends the daemon
    assert stored["type"] == "StepFailed"
    assert stored["message"] == "step 2/3 (_bad_reshape) failed: ValueError: bad row"
    assert 'raise ValueError("bad row")' in stored["traceback"]
    assert "ValueError: bad row" in stored["traceback"]
    assert "direct cause of the following exception" in stored["traceback"]
    assert stored["traceback"].rstrip().endswith(stored["message"])


def test_an_exception_without_a_message_is_named_by_its_type():
    def empty(task):
        raise KeyError

    c = martinet.compose("c", [empty])
    with pytest.raises(martinet.StepFailed, match=r"^step 1/1 \(empty\) failed: KeyError$"):
        bound("c", {"c": c})(FakeTask())


@pytest.mark.parametrize(
    "signal", [martinet.Retry(in_=5), martinet.Fail("for good"), martinet.TaskTimeout()], ids=repr
)
def test_retry_fail_and_timeout_pass_through_unchanged(signal):
    ran = []

    def raiser(task):
        raise signal

    c = martinet.compose("c", [lambda task: None, raiser, lambda task: ran.append(1)])
    with pytest.raises(type(signal)) as caught:
        bound("c", {"c": c})(FakeTask())
    assert caught.value is signal
    assert ran == []


def test_a_revoked_composition_stops_before_its_next_step():
    ran = []

    def first(task):
        task.cancelled = True  # as if revoked while this step ran
        return None

    c = martinet.compose("c", [first, lambda task: ran.append(2)])
    assert bound("c", {"c": c})(FakeTask()) is None
    assert ran == []


def test_through_the_worker_the_failure_is_stored_as_step_failed_and_signals_keep_their_meaning():
    def retry_step(task, rows):
        raise martinet.Retry(in_=7)

    handlers = {
        "fetch": lambda task, url: [url],
        "dl": martinet.compose("dl", ["fetch", _bad_reshape]),
        "again": martinet.compose("again", ["fetch", retry_step]),
        "ok": martinet.compose("ok", ["fetch", lambda task, rows: {"rows": rows}]),
    }
    worker = Worker(handlers=handlers)
    try:
        worker.handlers = check(worker.handlers)  # what run() does first
        reports = []

        def run(name):
            ctx = TaskContext(1, 1, name, {"url": "u"}, lambda m: reports.append(wire(m)))
            return wire(worker._execute(ctx))

        cmd, header = run("dl")
        assert cmd is Cmd.FAILED and "final" not in header  # an ordinary failure: retried
        assert header["error"]["type"] == "StepFailed"
        assert header["error"]["message"] == "step 2/2 (_bad_reshape) failed: ValueError: bad row"
        cmd, header = run("again")
        assert (cmd, header["error"]["type"], header["retry_in"]) == (Cmd.FAILED, "Retry", 7)
        assert run("ok") == (Cmd.DONE, {"id": 1, "attempt": 1, "result": {"rows": ["u"]}})
        assert [r[1]["message"] for r in reports if r[0] is Cmd.PROGRESS][-2:] == [
            "step 1/2: fetch",
            "step 2/2: <lambda>",
        ]
    finally:
        os.close(worker._wake_r)
        os.close(worker._wake_w)


def test_a_step_naming_an_unregistered_task_is_an_error_at_validation_not_at_registration():
    c = martinet.compose("download_and_archive", ["fetch", "reshape", "targz"])  # no error yet
    handlers = {"fetch": lambda task: None, "reshape": lambda task: None, "download_and_archive": c}
    with pytest.raises(martinet.MartinetError) as caught:
        check(handlers)
    message = str(caught.value)
    assert message.startswith(
        "composed task 'download_and_archive' step 3/3 names task 'targz', "
        "which is not registered on this worker (registered: fetch, reshape)"
    )
    assert "\n" not in message
    handlers["targz"] = lambda task: None  # e.g. worker.on("targz", ...) after the Worker was made
    assert check(handlers)["download_and_archive"] is not c  # bound copy


def test_the_worker_refuses_to_start_before_connecting():
    c = martinet.compose("c", ["nowhere"])
    worker = Worker(handlers={"c": c}, worker_port=1, status_port=1)
    with pytest.raises(martinet.MartinetError, match="composed task 'c' step 1/1 names task 'nowhere'"):
        worker.run()
    assert not worker._threads and not hasattr(worker, "ctx")
    os.close(worker._wake_r)
    os.close(worker._wake_w)


def test_steps_registered_with_worker_on_count_when_the_worker_starts():
    worker = Worker(handlers={"c": martinet.compose("c", ["later"])})
    try:
        worker.on("later", lambda task: "from on()")
        served = check(worker.handlers)
        assert served["c"](FakeTask()) == "from on()"
    finally:
        os.close(worker._wake_r)
        os.close(worker._wake_w)


def test_compositions_cannot_be_nested():
    inner = martinet.compose("inner", [lambda task: 1])
    outer = martinet.compose("outer", ["inner", lambda task, v: v])
    with pytest.raises(
        martinet.MartinetError, match="step 1/2 names 'inner', which is itself a composed task"
    ):
        check({"inner": inner, "outer": outer})
    with pytest.raises(martinet.MartinetError, match="compositions cannot be nested"):
        martinet.compose("outer2", [inner])
    with pytest.raises(martinet.MartinetError, match="itself a composed task"):
        check({"self": martinet.compose("self", ["self"])})


def test_compose_checks_its_own_arguments(registry):
    with pytest.raises(martinet.MartinetError, match="non-empty list of steps"):
        martinet.compose("c", [])
    with pytest.raises(martinet.MartinetError, match="non-empty list of steps"):
        martinet.compose("c", "fetch")
    with pytest.raises(martinet.MartinetError, match=r"step 2/2 is 42; a step is a task name or a function"):
        martinet.compose("c", ["fetch", 42])
    with pytest.raises(martinet.MartinetError, match="needs a task name"):
        martinet.compose("", ["fetch"])
    assert "c" not in registry
    c = martinet.compose("c", ["fetch"])
    assert registry["c"] is c
    assert repr(c) == "<composition 'c': fetch>"


def test_a_direct_call_resolves_names_among_registered_tasks(registry):
    @martinet.task("plus_one")
    def plus_one(task, n):
        return n + 1

    c = martinet.compose("c", ["plus_one", "plus_one"])
    assert c(FakeTask(), n=1) == 3


def test_exports():
    assert martinet.compose is compose  # the function; the module is martinet.compose in sys.modules
    assert issubclass(martinet.StepFailed, martinet.MartinetError)
    assert {"compose", "StepFailed"} <= set(martinet.__all__)


# ---- through the API: an embedded daemon and worker threads (tests/live.py) ---------------


def test_a_composition_runs_its_steps_in_series_and_reports_progress(make_live, db_url):
    live = make_live(db_url)
    live.worker()
    m = live.m
    seen, done = [], threading.Event()
    m.on_progress(lambda e: seen.append((e["progress"], e["message"])), name="download_and_archive")
    m.on_complete(lambda e: done.set(), name="download_and_archive")
    tid = m.execute("download_and_archive", {"url": "https://example.org/data", "rows": 2})
    assert m.wait(tid, timeout=10) == {"archive": "https://example.org/data.tar.gz", "count": 2}
    assert done.wait(5)
    expected = [(0.0, "step 1/3: fetch"), (1 / 3, "step 2/3: reshape"), (2 / 3, "step 3/3: targz")]
    assert seen and seen[-1] == expected[-1]
    assert [s for s in expected if s in seen] == seen  # in order; any coalesced away are skipped
    info = m.get(tid)
    assert (info["status"], info["attempt"]) == ("succeeded", 1)
    assert info["progress_message"] == "step 3/3: targz"


def test_a_composition_failing_at_step_2_names_the_step(make_live, db_url):
    live = make_live(db_url)
    live.worker()
    m = live.m
    tid = m.execute({"name": "download_and_archive", "max_attempts": 1}, {"url": "bad"})
    with pytest.raises(
        martinet.TaskFailed, match=r"StepFailed: step 2/3 \(reshape\) failed: ValueError: bad row"
    ):
        m.wait(tid, timeout=10)
    error = m.show(tid)["error"]
    assert error["type"] == "StepFailed"
    assert error["message"] == "step 2/3 (reshape) failed: ValueError: bad row"
    assert 'raise ValueError("bad row")' in error["traceback"]
    assert "tasks_compose.py" in error["traceback"]
    assert m.get(tid)["progress_message"] == "step 2/3: reshape"


def test_a_retry_starts_again_from_the_first_step(make_live, sqlite_url, tmp_path):
    live = make_live(sqlite_url)
    live.worker()
    m = live.m
    marker = tmp_path / "runs"
    tid = m.execute({"name": "again_from_the_top", "max_attempts": 3}, {"marker": str(marker)})
    assert m.wait(tid, timeout=15) == 2
    assert marker.read_text().split() == ["1", "2"]  # step 1 ran again on attempt 2
    attempts = m.show(tid)["attempts"]
    assert [a["outcome"] for a in attempts] == ["failed", "succeeded"]
    assert attempts[0]["error"]["type"] == "Retry"  # passed through, not wrapped in StepFailed
