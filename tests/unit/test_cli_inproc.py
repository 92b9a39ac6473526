"""The `martinet` command run in process (cli.main(argv), output read with capsys) against
an embedded daemon and a worker in a thread: the newcomer's rough edges of issue 23.
The daemon's side of them (warnings, why a wait timed out) is driven by tests/core.py."""

from __future__ import annotations

import argparse
import io
import json
import logging
import threading

import pytest

import martinet
from martinet import cli, when
from martinet.client import EventStream
from martinet.errors import BadInput
from martinet.protocol import Cmd
from martinet.server import timers
from martinet.server.outbox import Outbox
from martinet.worker import PREFETCH_PER_THREAD, Worker

GATE = threading.Event()  # the "gate" handler returns once it is set


def _gate(task):
    assert GATE.wait(10), "the test never opened the gate"
    return "through"


class Live:
    """An embedded daemon on free ports and a worker thread running add, boom and gate."""

    def __init__(self, tmp_path) -> None:
        self.m = martinet.Martinet(
            db=f"sqlite:///{tmp_path / 'cli.db'}",
            client_port=0,
            worker_port=0,
            status_port=0,
            log_level="WARNING",
        )
        self.url = f"tcp://127.0.0.1:{self.m.ports['client']}"
        handlers = {"add": lambda task, a, b: a + b, "boom": _boom, "gate": _gate}
        self.worker = Worker(
            handlers=handlers,
            worker_port=self.m.ports["worker"],
            status_port=self.m.ports["status"],
            concurrency=2,
            worker_id="w-cli",
        )
        self.thread = threading.Thread(target=self.worker.run, daemon=True)
        self.thread.start()
        for _ in range(500):  # the worker's hello reaches the daemon within a few ms
            if self.m.ping()["workers"]:
                break
            threading.Event().wait(0.01)
        GATE.clear()

    def close(self) -> None:
        GATE.set()
        self.worker.stop()
        self.thread.join(10)
        self.m.close()


def _boom(task, message="kaboom"):
    raise ValueError(message)


@pytest.fixture
def live(tmp_path):
    it = Live(tmp_path)
    yield it
    it.close()


def run(live: Live, capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main([*argv, "--url", live.url])
    out, err = capsys.readouterr()
    return code, out, err


# ---- an unknown task name -------------------------------------------------------------


def test_daemon_warns_when_no_connected_worker_would_run_a_submitted_task(db_url, caplog, make_core):
    core = make_core(db_url)
    assert core.request("execute", name="resiz", args={})["warning"] == "no connected worker handles 'resiz'"
    with caplog.at_level(logging.INFO, logger="martinet.daemon"):
        core.hello("w1", ["resize"], capacity=10, threads=2, queues=["images"])
    # its ready line tells threads and prefetch apart
    assert "worker w1 ready: 2 thread(s) and 8 prefetch slot(s) for resize" in caplog.text
    assert "warning" not in core.request("execute", name="resize", args={}, queue="images")
    assert (
        core.request("schedule", name="resize", args={}, run_at=core.now + 60)["warning"]
        == "no connected worker that handles 'resize' serves queue 'default'"
    )
    batch = core.request("execute_many", tasks=[{"name": "resize", "args": {}, "queue": "images"},
                                                {"name": "nope", "args": {}}])  # fmt: skip
    assert batch["warnings"] == [
        {"name": "nope", "queue": "default", "warning": "no connected worker handles 'nope'"}
    ]
    every = core.request("every", name="nope", args={}, every=60.0, timezone="UTC")
    assert every["warning"] == "no connected worker handles 'nope'"
    core.hello("w2", ["nope"])  # a worker comes: the answer is not kept from before
    assert "warning" not in core.request("execute", name="nope", args={})


def test_unknown_name_is_warned_about_in_the_api_and_the_cli(live, capsys):
    tid = live.m.execute("resiz", {})
    assert tid.warning == "no connected worker handles 'resiz'" and tid.created
    assert live.m.execute("add", {"a": 1, "b": 2}).warning is None
    assert [t.warning for t in live.m.execute_many([("resiz", {}), ("add", {"a": 1, "b": 1})])] == [
        "no connected worker handles 'resiz'",
        None,
    ]
    code, out, err = run(live, capsys, "execute", "resiz")
    assert code == 0 and out.startswith("task ") and out.endswith(" accepted\n")
    assert err == "martinet: warning: no connected worker handles 'resiz'; it waits until one connects\n"
    code, out, err = run(live, capsys, "execute", "resiz", "--json")
    assert json.loads(out)["warning"] == "no connected worker handles 'resiz'" and "warning" in err
    assert run(live, capsys, "execute", "add", "--args", '{"a": 1, "b": 2}')[2] == ""


# ---- waiting: its own bound, why it timed out, exit codes, Ctrl-C -------------------------


def test_a_wait_that_times_out_says_why_the_task_still_waits(db_url, make_core):
    core = make_core(db_url)
    tid = core.submit("resiz")
    out = Outbox()
    with core.store.atomic():
        core.server.on_client(b"c", _frames("wait", id=tid, wait_for=5), out, core.now)
    assert out.replies == []  # held until the task ends or the deadline
    core.now += 5
    with core.store.atomic():
        timers.run(core.server, out, core.now)
    ((_ident, reply),) = [(i, r.header()) for i, r in out.replies]
    assert (reply["done"], reply["status"], reply["waiting"]) == (
        False, "queued", "no connected worker handles 'resiz'",
    )  # fmt: skip


def _frames(op: str, **fields):
    from martinet import protocol

    return protocol.encode(Cmd.REQUEST, {"op": op, "rid": "r1", **fields})


def test_wait_exit_codes_tell_the_outcomes_apart(live, capsys):
    code, out, err = run(live, capsys, "execute", "add", "--args", '{"a": 2, "b": 40}', "--wait")
    assert (code, out) == (0, "42\n")
    code, out, err = run(live, capsys, "execute", "boom", "--max-attempts", "1", "--wait")
    assert code == cli.EXIT_DEAD == 3 and "ended dead: ValueError: kaboom" in err
    later = live.m.schedule("in 1 hour", "add", {"a": 1, "b": 1})
    live.m.revoke(later)
    code, out, err = run(live, capsys, "wait", str(later))
    assert code == cli.EXIT_CANCELLED == 4 and "ended cancelled" in err
    # --wait-for bounds the wait, not --timeout; the reason comes from the daemon
    code, out, err = run(live, capsys, "execute", "resiz", "--wait-for", "0.2", "--timeout", "5")
    assert code == cli.EXIT_NOT_DONE == 5, err
    assert err.splitlines()[-1].endswith(
        "did not finish within 0.2s (still queued: no connected worker handles 'resiz')"
    )
    code, out, err = run(live, capsys, "wait", "1", "--for", "0.1")  # the old spelling; task 1 is the add
    assert code == 0
    with pytest.raises(martinet.WaitTimeout) as caught:
        live.m.wait(live.m.execute("resiz", {}), timeout=0.1)
    assert (caught.value.status, caught.value.waiting) == ("queued", "no connected worker handles 'resiz'")


def test_ctrl_c_stops_waiting_with_one_line_and_its_own_exit_code(live, capsys, monkeypatch):
    def interrupted(self, task_id, timeout=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(martinet.Martinet, "wait", interrupted)
    code, out, err = run(live, capsys, "execute", "add", "--args", '{"a": 1, "b": 1}', "--wait")
    assert code == cli.EXIT_INTERRUPTED == 130 and out == ""
    assert err.count("\n") == 1 and err.startswith("martinet: stopped waiting for task ")


def test_execute_wait_has_no_bound_of_its_own_by_default(live, capsys, monkeypatch):
    asked = []
    real = martinet.Martinet.wait
    monkeypatch.setattr(
        martinet.Martinet,
        "wait",
        lambda self, tid, timeout=30.0: asked.append(timeout) or real(self, tid, timeout),
    )
    assert run(live, capsys, "execute", "add", "--args", '{"a": 1, "b": 1}', "--wait")[0] == 0
    assert run(live, capsys, "wait", "1", "--timeout", "3")[0] == 0
    assert asked == [None, None]  # until done; --timeout is the daemon's answer to each request


def test_time_limit_is_named_the_same_in_python_and_on_the_command_line(live, capsys):
    assert live.m.get(live.m.execute("add", {"a": 1, "b": 1}, time_limit=7))["timeout"] == 7
    assert live.m.get(live.m.execute({"name": "add", "time_limit": 8}, {"a": 1, "b": 1}))["timeout"] == 8
    assert live.m.get(live.m.execute("add", {"a": 1, "b": 1}, timeout=9))["timeout"] == 9  # the old name
    with pytest.raises(BadInput, match="disagree"):
        live.m.execute("add", {}, time_limit=1, timeout=2)
    code, out, _ = run(
        live, capsys, "execute", "add", "--args", '{"a": 1, "b": 1}', "--time-limit", "6", "--json"
    )
    assert live.m.get(json.loads(out)["id"])["timeout"] == 6


# ---- help and logs say the defaults ---------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser, path: str):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _parsers(sub, f"{path} {name}")


def test_every_option_s_help_shows_its_default():
    missing = [
        f"{path} {action.option_strings[0]}"
        for root, name in ((cli.build_parser(), "martinet"), (cli.build_worker_parser(), "martinet-worker"))
        for path, parser in _parsers(root, name)
        for action in parser._actions
        if action.option_strings and action.help != argparse.SUPPRESS and not action.required
        and not isinstance(action, argparse._HelpAction | argparse._VersionAction)
        and "default" not in (action.help or "")
    ]  # fmt: skip
    assert missing == []
    prefetch = next(a for a in cli.build_worker_parser()._actions if "--prefetch" in a.option_strings)
    assert f"default: {PREFETCH_PER_THREAD} per thread" in prefetch.help


# ---- args from files and stdin; many tasks ------------------------------------------------------


def test_args_from_a_file_or_stdin(live, capsys, tmp_path, monkeypatch):
    big = {"a": 1, "b": 2, "blob": "x" * 200_000}  # far beyond what a command line takes
    path = tmp_path / "args.json"
    path.write_text(json.dumps(big))
    code, out, _ = run(live, capsys, "execute", "add", "--args", f"@{path}", "--json")
    assert code == 0 and live.m.get(json.loads(out)["id"])["args"] == big
    monkeypatch.setattr("sys.stdin", io.StringIO('{"a": 3, "b": 4}'))
    assert run(live, capsys, "execute", "add", "--args", "-", "--wait") == (0, "7\n", "")
    code, _, err = run(live, capsys, "execute", "add", "--args", f"@{tmp_path / 'none.json'}")
    assert code == 1 and f"cannot read --args file {tmp_path / 'none.json'}: No such file" in err
    path.write_text("[1, 2]")
    code, _, err = run(live, capsys, "update", "1", "--args", f"@{path}")
    assert code == 1 and f"--args file {path} must be a JSON object" in err


def test_many_names_the_bad_line_and_waits_for_every_task(live, capsys, tmp_path):
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text('{"a": 1, "b": 2}\n\n{"a": 3 "b": 4}\n')
    code, _, err = run(live, capsys, "execute", "add", "--many", str(tasks))
    assert code == 1 and f"martinet: error: {tasks} line 3 is not valid JSON" in err
    tasks.write_text('{"a": 1, "b": 2}\n{"a": 3, "b": 4}\n')
    code, out, err = run(live, capsys, "execute", "add", "--many", str(tasks), "--wait")
    assert code == 0 and "2 tasks accepted" in err
    assert [line.split(" ", 1)[1] for line in out.splitlines()] == ["succeeded 3", "succeeded 7"]
    code, out, err = run(live, capsys, "execute", "resiz", "--many", str(tasks))
    assert code == 0 and out.startswith("2 tasks accepted") and err.count("handles 'resiz'") == 1
    tasks.write_text('{"message": "one"}\n')
    code, out, _ = run(
        live, capsys, "execute", "boom", "--max-attempts", "1", "--many", str(tasks), "--wait", "--json"
    )
    assert code == cli.EXIT_DEAD and json.loads(out)["tasks"][0]["status"] == "dead"


# ---- schedules and watch ----------------------------------------------------------------------------


def test_schedules_show_an_interval_as_people_write_it(live, capsys):
    live.m.every("90 minutes", "add", {"a": 1, "b": 1})
    code, out, _ = run(live, capsys, "schedules")
    assert code == 0 and "1 hour 30 minutes" in out and "seconds" not in out
    assert [when.format_interval(s) for s in (1800, 86400, 0.5, 3601)] == [
        "30 minutes", "1 day", "0.5 seconds", "1 hour 1 second",
    ]  # fmt: skip
    for seconds in (1800, 5400, 90061.5, 0.25):
        assert when.parse_interval(when.format_interval(seconds)).total_seconds() == seconds


def test_watch_follows_one_task_until_it_ends(live, capsys, monkeypatch):
    tid = live.m.execute("gate", {})
    real_run = EventStream.run

    def run_then_open_the_gate(self, dispatch, stop, ready=None, timeout=None):
        def subscribed(reply):
            if ready is not None:
                ready(reply)
            GATE.set()  # only now may the task end: its end must come as an event

        return real_run(self, dispatch, stop, subscribed, timeout)

    monkeypatch.setattr(EventStream, "run", run_then_open_the_gate)
    live.m.execute("add", {"a": 1, "b": 1})  # another task's events are not this one's
    code, out, _ = run(live, capsys, "watch", str(tid))
    assert code == 0 and out.strip().endswith(f'succeeded task {tid} gate attempt 1: -> "through"'), out
    assert all(f"task {tid} " in line for line in out.splitlines())
    # a task that had ended already: its end at once, and its outcome as the exit code
    dead = live.m.execute("boom", {}, max_attempts=1)
    with pytest.raises(martinet.TaskFailed):
        live.m.wait(dead, timeout=10)
    code, out, _ = run(live, capsys, "watch", str(dead))
    assert code == cli.EXIT_DEAD and f"dead task {dead} boom attempt 1: ValueError: kaboom" in out
    code, _, err = run(live, capsys, "watch", "12345")
    assert code == 1 and "no task with id 12345" in err
