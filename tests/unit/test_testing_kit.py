"""martinet.testing, as a user's suite uses it: the martinet_harness fixtures (martinet's
pytest plugin), drain, submitted, advance. What runs is a real daemon and worker."""

from __future__ import annotations

import pytest

import martinet
import tests.tasks  # noqa: F401 - registers the handlers the harness runs
from martinet.testing import Harness

pytest_plugins = ["pytester"]


def test_drain_returns_what_ended_each_once(martinet_harness: Harness):
    m = martinet_harness.m
    a = m.execute("add", {"a": 2, "b": 40})
    b = m.execute({"name": "boom", "max_attempts": 2}, {"message": "no"})
    ended = martinet_harness.drain()
    assert [(t["id"], t["status"], t["result"]) for t in ended] == [(a, "succeeded", 42), (b, "dead", None)]
    assert [t["attempt"] for t in ended] == [1, 2]  # the failure was retried (fast, in a harness)
    assert martinet_harness.drain() == []


def test_advance_brings_delayed_tasks_and_schedules_due_without_sleeping(martinet_harness: Harness):
    m = martinet_harness.m
    later = m.schedule("in 2 hours", "add", {"a": 1, "b": 1})
    m.every("1 hour", "add", {"a": 5, "b": 5}, key="hourly")
    assert martinet_harness.drain() == []
    martinet_harness.advance(3600)
    assert [t["result"] for t in martinet_harness.drain()] == [10]  # the schedule's first run
    martinet_harness.advance(3600)
    assert sorted(t["result"] for t in martinet_harness.drain()) == [2, 10]  # and the delayed task
    assert m.get(later)["status"] == "succeeded"


def test_submitted_matches_a_subset_of_args_and_says_what_was_there(martinet_harness: Harness):
    m = martinet_harness.m
    m.execute("add", {"a": 1, "b": 2}, queue="math")
    m.execute("echo", {"user": 7, "x": 1}, key="echo-7")
    assert [t["args"] for t in martinet_harness.submitted("add", a=1)] == [{"a": 1, "b": 2}]
    assert martinet_harness.submitted("add", a=9) == []
    martinet_harness.assert_submitted("echo", count=1, key="echo-7", user=7)
    martinet_harness.assert_submitted(queue="math")
    with pytest.raises(
        AssertionError, match=r"expected some task\(s\) like .*'resize'.*submitted: \[\('add', 'math'"
    ):
        martinet_harness.assert_submitted("resize")


def test_a_harness_runs_only_the_handlers_it_names(make_martinet_harness):
    h = make_martinet_harness(handlers=["add"])
    h.m.execute("add", {"a": 1, "b": 1})
    assert [t["result"] for t in h.drain()] == [2]
    h.m.execute("echo", {})
    with pytest.raises(AssertionError, match="queued tasks that no handler of this harness runs: echo"):
        h.drain()


def test_a_users_suite_gets_the_fixtures_from_the_plugin(pytester):
    """A project with martinet installed: no conftest, the fixture is there."""
    pytester.makepyfile(
        test_user="""
        import martinet

        @martinet.task("greet")
        def greet(task, name):
            return f"hello {name}"

        def test_greet(martinet_harness):
            martinet_harness.m.execute("greet", {"name": "ana"})
            (done,) = martinet_harness.drain()
            assert done["result"] == "hello ana"
            martinet_harness.assert_submitted("greet", name="ana")
        """
    )
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-o", "addopts=")
    result.assert_outcomes(passed=1)


# ---- inline: no daemon --------------------------------------------------------------------


def test_inline_runs_handlers_at_execute_through_json_as_the_wire_does():
    import martinet
    from martinet.errors import TaskFailed
    from martinet.testing import inline

    with inline(["add", "echo", "boom"]) as runner:
        assert martinet.wait(martinet.execute("add", {"a": 2, "b": 40})) == 42
        echoed = martinet.wait(martinet.execute("echo", {"pair": (1, 2)}))
        assert echoed["args"] == {"pair": [1, 2]}  # a tuple comes back a list, as over the wire
        dead = martinet.execute({"name": "boom", "max_attempts": 2}, {"message": "no"})
        with pytest.raises(TaskFailed, match="ended dead: ValueError: no"):
            martinet.wait(dead)
        assert martinet.get(dead)["attempt"] == 2 and runner.tasks[dead]["status"] == "dead"
        later = martinet.schedule("in 1 hour", "add", {"a": 1, "b": 1})  # runs now: a documented limit
        assert martinet.get(later)["result"] == 2
        with pytest.raises(martinet.BadInput, match="no handler for 'resize' here"):
            martinet.execute("resize", {})
    assert martinet._default is not runner  # the handle in use before is back


def test_inline_runs_a_released_task_again_without_spending_an_attempt_until_the_daemons_bound():
    from martinet.testing import Inline

    calls: list[int] = []

    def once_then_done(task):
        calls.append(task.attempt)
        if len(calls) == 1:
            raise martinet.Release("not yet")
        return "done"

    def never(task):
        raise martinet.Release("never")

    runner = Inline({"once": once_then_done, "never": never})
    done = runner.execute("once")
    assert runner.get(done)["status"] == "succeeded" and calls == [1, 1]  # the same attempt, again
    assert runner.get(runner.execute("never"))["status"] == "stalled"
