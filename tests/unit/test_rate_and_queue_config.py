"""Rates, task limits, worker queues and per-queue config: fast unit tests, no daemon."""

from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path

import pytest

from martinet import cli, worker
from martinet import registry as registry_module
from martinet.config import Settings, check_queues, load, read_env, read_file
from martinet.errors import BadInput, ConfigError, MartinetError
from martinet.when import parse_rate
from martinet.worker import Worker, WorkerOptions
from tests.fakes import header

CONF = Path(__file__).resolve().parents[2] / "martinet" / "sample.toml"


# ---- parse_rate -------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("100/minute", (100, 60.0)),
        ("5/second", (5, 1.0)),
        ("5/s", (5, 1.0)),
        ("10/sec", (10, 1.0)),
        ("1000/hour", (1000, 3600.0)),
        ("2/min", (2, 60.0)),
        ("50 / 10 seconds", (50, 10.0)),
        ("3/day", (3, 86400.0)),
        ("100/60s", (100, 60.0)),  # how the daemon prints a rate
        ("1/0.5s", (1, 0.5)),
        ("7/2h", (7, 7200.0)),
        ("1/week", (1, 604800.0)),
        ("3 per day", (3, 86400.0)),
        ("  20/Minute ", (20, 60.0)),
    ],
)
def test_parse_rate(text, expected):
    count, period = parse_rate(text)
    assert (count, period) == expected
    assert isinstance(count, int) and isinstance(period, float)


@pytest.mark.parametrize(
    "text",
    ["fast", "", "100", "/minute", "100/", "0/minute", "-1/s", "1.5/s", "5/0s", "5/0 minutes", "5/fortnight",
     "5/s/s", "5//s", "5 persecond", "five/second", "5/month", "99999999999/s", "1e3/s"],
)  # fmt: skip
def test_parse_rate_refuses(text):
    with pytest.raises(BadInput) as err:
        parse_rate(text)
    assert str(err.value) == f"could not read {text!r} as a rate (try '100/minute' or '5/second')"


def test_parse_rate_message_and_odd_types():
    with pytest.raises(
        BadInput, match=r"^could not read 'fast' as a rate \(try '100/minute' or '5/second'\)$"
    ):
        parse_rate("fast")
    for value in (None, 5, 1.5, ["5/s"], True):
        with pytest.raises(BadInput, match="as a rate"):
            parse_rate(value)  # type: ignore[arg-type]
    with pytest.raises(BadInput, match=r"'1{60}\.\.\.' as a rate"):
        parse_rate("1" * 500 + "/s")  # quoted, but not whole


# ---- task limits and the hello ---------------------------------------------------------


@pytest.fixture
def registry(monkeypatch):
    """A clean REGISTRY and LIMITS, so these tests leave the real ones alone."""
    fresh_handlers, fresh_limits = {}, {}
    for module in (registry_module, worker):  # the worker reads what the decorator writes
        monkeypatch.setattr(module, "REGISTRY", fresh_handlers)
        monkeypatch.setattr(module, "LIMITS", fresh_limits)
    return registry_module


def make_worker(**kwargs) -> Worker:
    w = Worker(WorkerOptions(worker_id="w1", **kwargs))
    for fd in (w._wake_r, w._wake_w):  # opened for run(), which these tests never call
        os.close(fd)
    return w


def test_decorator_records_limits(registry):
    @worker.task("resize", concurrency=3, rate="100/minute")
    def resize(task, image_id):
        return image_id

    @worker.task("fetch", rate="5/s")
    def fetch(task):
        return None

    @worker.task(concurrency=1)
    def only_one(task):
        return None

    @worker.task("plain")
    def plain(task):
        return None

    assert registry.REGISTRY == {
        "resize": resize.fn,
        "fetch": fetch.fn,
        "only_one": only_one.fn,
        "plain": plain.fn,
    }
    assert registry.LIMITS == {
        "resize": {"concurrency": 3, "rate": [100, 60.0]},
        "fetch": {"concurrency": None, "rate": [5, 1.0]},
        "only_one": {"concurrency": 1, "rate": None},
    }
    assert resize(None, 7) == 7  # the handle calls the function (the worker calls the function itself)

    @worker.task("resize")  # registered again without limits: the old ones go
    def resize_again(task):
        return None

    assert "resize" not in registry.LIMITS


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"concurrency": 0}, "concurrency of task 'job' must be a whole number of at least 1, got 0"),
        ({"concurrency": -2}, "got -2"),
        ({"concurrency": 1.5}, "got 1.5"),
        ({"concurrency": True}, "got True"),
        ({"concurrency": "4"}, "got '4'"),
        ({"rate": "fast"}, "rate of task 'job': could not read 'fast' as a rate"),
        ({"rate": "0/s"}, "could not read '0/s' as a rate"),
        ({"rate": 5}, "could not read 5 as a rate"),
    ],
)
def test_decorator_refuses_bad_limits(registry, kwargs, message):
    decorate = worker.task("job", **kwargs)
    with pytest.raises(BadInput, match=re.escape(message)):

        @decorate
        def job(task):
            return None

    assert "job" not in registry.REGISTRY and "job" not in registry.LIMITS


def test_hello_header_has_queues_and_limits(registry):
    @worker.task("resize", concurrency=2, rate="10/second")
    def resize(task):
        return None

    @worker.task("plain")
    def plain(task):
        return None

    registry.LIMITS["elsewhere"] = {"concurrency": 9, "rate": None}  # not served by this worker
    w = make_worker(queues=["images", "default"], concurrency=3)
    h = header(w._hello_message())
    assert h["worker_id"] == "w1" and h["names"] == ["plain", "resize"]
    assert (h["threads"], h["capacity"]) == (3, 35)  # and 32 held ready (prefetch: at least 32)
    assert header(make_worker(concurrency=16)._hello_message())["capacity"] == 80  # 4 per thread
    assert header(make_worker(concurrency=3, prefetch=0)._hello_message())["capacity"] == 3
    assert h["running"] == [] and "version" in h
    assert h["queues"] == ["images", "default"]
    assert h["limits"] == {"resize": {"concurrency": 2, "rate": [10, 1.0]}}
    json.dumps(h)  # it goes on the wire

    every = make_worker()
    assert header(every._hello_message())["queues"] is None  # None: every queue


def test_worker_on_records_limits(registry):
    @worker.task("resize", concurrency=2)
    def resize(task):
        return None

    w = make_worker(handlers={"resize": resize})
    w.on("thumb", lambda task: None, rate="3/min")
    w.on("noop", lambda task: None)
    assert header(w._hello_message())["limits"] == {
        "resize": {"concurrency": 2, "rate": None},
        "thumb": {"concurrency": None, "rate": [3, 60.0]},
    }
    w.on("resize", resize)  # served again without limits: this worker sends none for it
    assert set(header(w._hello_message())["limits"]) == {"thumb"}
    with pytest.raises(BadInput, match="concurrency of task 'bad'"):
        w.on("bad", lambda task: None, concurrency=0)
    assert "bad" not in w.handlers
    assert registry.LIMITS == {"resize": {"concurrency": 2, "rate": None}}  # on() is per worker


def test_a_stopping_worker_says_no_names_and_no_limits(registry):
    w = make_worker()
    w.on("resize", lambda task: None, concurrency=1)
    w._stopping = True
    h = header(w._hello_message())
    assert h["names"] == [] and h["limits"] == {}


# ---- per-queue config ------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "martinet.toml"
    path.write_text(text)
    return path


def test_queues_from_the_config_file(tmp_path):
    path = write(
        tmp_path,
        "[daemon]\nclient_port = 9000\n"
        '[queues.images]\norder = "random"\nweight = 3\nconcurrency = 8\nrate = "100/minute"\npaused = true\n'
        "[queues.default]\nweight = 1\n",
    )
    assert read_file(path)["queues"]["images"]["weight"] == 3
    s = load(path, environ={})
    assert s.client_port == 9000  # other sections are still flattened
    assert s.queues == {
        "images": {"order": "random", "weight": 3, "concurrency": 8, "rate": "100/minute", "paused": True},
        "default": {"weight": 1},
    }
    assert s.with_overrides({"lease": 5}).queues == s.queues  # survives other overrides


def test_no_queues_by_default(tmp_path):
    assert Settings().queues == {} and load(environ={}).queues == {}
    assert load(write(tmp_path, "[queues]\n"), environ={}).queues == {}
    assert Settings().queues is not Settings().queues  # no shared mutable default


def test_queues_are_not_read_from_the_environment():
    assert read_env({"MARTINET_QUEUES": "images"}) == {}
    assert load(environ={"MARTINET_QUEUES": "images"}).queues == {}


@pytest.mark.parametrize(
    "table, message",
    [
        ("[queues.images]\nwieght = 2\n", "unknown setting 'wieght' in queue 'images'"),
        (
            '[queues.images]\norder = "lifo"\n',
            "queue 'images' setting 'order' must be \"fifo\" or \"random\"",
        ),
        ("[queues.images]\nweight = 0\n", "queue 'images' setting 'weight' must be a whole number"),
        ("[queues.images]\nweight = 1.5\n", "queue 'images' setting 'weight'"),
        ("[queues.images]\nweight = true\n", "queue 'images' setting 'weight'"),
        ("[queues.images]\nconcurrency = -1\n", "queue 'images' setting 'concurrency'"),
        ('[queues.images]\nconcurrency = "4"\n', "queue 'images' setting 'concurrency'"),
        (
            '[queues.images]\nrate = "fast"\n',
            "queue 'images' setting 'rate': could not read 'fast' as a rate",
        ),
        ("[queues.images]\nrate = 100\n", "queue 'images' setting 'rate'"),
        ('[queues.images]\npaused = "yes"\n', "queue 'images' setting 'paused' must be true or false"),
        ("[queues]\nimages = 3\n", "queue 'images' must be a table like [queues.images]"),
        ('[queues."two words"]\nweight = 2\n', "queue name 'two words'"),
        ('[queues.""]\nweight = 2\n', "queue name ''"),
        ('queues = "images"\n', "setting 'queues' must be a table of queues"),
    ],
)
def test_bad_queue_settings_name_the_queue_and_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, table), environ={})


@pytest.mark.parametrize(
    "table, message",
    [
        ("[task_limits.charge]\nconcurency = 2\n", "unknown setting 'concurency' in [task_limits.charge]"),
        ("[task_limits.charge]\nconcurrency = 0\n", "limits of 'charge' setting 'concurrency'"),
        ('[task_limits.charge]\nrate = "fast"\n', "limits of 'charge' setting 'rate'"),
        ("[task_limits]\ncharge = 3\n", "must be a table like [task_limits.charge]"),
    ],
)
def test_bad_task_limits_name_the_task_and_key(tmp_path, table, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load(write(tmp_path, table), environ={})


def test_task_limits_from_the_config_file_apply_at_every_start(tmp_path, db_url):
    from tests.core import Core

    path = write(
        tmp_path,
        '[task_limits.charge]\nconcurrency = 2\nrate = "10/second"\n[task_limits.mail]\nrate = "5/minute"\n',
    )
    settings = load(path, environ={})
    assert settings.task_limits == {
        "charge": {"concurrency": 2, "rate": "10/second"},
        "mail": {"rate": "5/minute"},
    }
    core = Core(db_url, task_limits=settings.task_limits)
    try:
        assert core.request("limits")["items"] == [
            {"name": "charge", "concurrency": 2, "rate": "10/1s", "running": 0},
            {"name": "mail", "concurrency": None, "rate": "5/60s", "running": 0},
        ]
    finally:
        core.close()


def test_check_queues_returns_a_copy():
    given = {"images": {"weight": 2}}
    checked = check_queues(given)
    assert checked == given and checked["images"] is not given["images"]


def test_the_shipped_example_queue_and_task_limits_are_valid(tmp_path):
    """The sample config's commented [queues.images] and [task_limits.charge] examples,
    uncommented, load."""
    toml = re.compile(r"# (\[[a-z_.]+\]$|[a-z_]+ += )")
    text = "\n".join(line[2:] if toml.match(line) else line for line in CONF.read_text().splitlines())
    s = load(write(tmp_path, text + "\n"), environ={})
    assert s.queues == {
        "images": {"order": "fifo", "weight": 2, "concurrency": 8, "rate": "100/minute", "paused": False}
    }
    assert s.task_limits == {"charge": {"concurrency": 2, "rate": "10/second"}}
    assert read_file(CONF)["queues"] == read_file(CONF)["task_limits"] == {}  # as shipped: the default


@pytest.mark.parametrize(
    "queues, message",
    [
        ("images,,default", "queue name ''"),
        ("two words", "queue name 'two words'"),
        ("x" * 256, "1 to 255 printable characters"),
        ("tab\there", "queue name 'tab\\there'"),
    ],
)
def test_worker_refuses_bad_queue_names(monkeypatch, capsys, queues, message):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    assert cli.worker_main(["tests.tasks", "--queues", queues]) == 1
    err = capsys.readouterr().err
    assert err.startswith("martinet-worker: error: ") and err.count("\n") == 1 and message in err


def test_worker_queue_list():
    assert cli._queue_list("images,default") == ["images", "default"]
    assert cli._queue_list(" images , default,images") == ["images", "default"]


def test_task_dict_gets_the_queue():
    args = cli.build_parser().parse_args(["execute", "resize", "--queue", "images"])
    assert cli._task(args) == {"name": "resize", "queue": "images"}
    args = cli.build_parser().parse_args(["every", "1 hour", "resize"])
    assert "queue" not in cli._task(args)
    args = cli.build_parser().parse_args(["schedule", "in 1 hour", "resize", "--queue", "a b"])
    with pytest.raises(ConfigError, match="queue name 'a b'"):
        cli._task(args)


class FakeMartinet:
    """Stands in for the Martinet object: records calls, returns canned queues."""

    def __init__(self, queues: list[dict] | None = None) -> None:
        self.calls: list[tuple] = []
        self._queues = queues or []

    def queues(self) -> list[dict]:
        return self._queues

    def pause_queue(self, name):
        self.calls.append(("pause_queue", name))

    def resume_queue(self, name):
        self.calls.append(("resume_queue", name))

    def set_queue(self, name, concurrency=None, rate=None, weight=None, order=None):
        self.calls.append(("set_queue", name, concurrency, rate, weight, order))


def queues_command(m, capsys, *argv: str) -> str:
    args: argparse.Namespace = cli.build_parser().parse_args(["queues", *argv])
    assert cli.COMMANDS["queues"](m, args) == 0
    return capsys.readouterr().out


def test_queue_actions(capsys):
    m = FakeMartinet()
    assert queues_command(m, capsys, "pause", "images").strip() == "images: paused"
    assert queues_command(m, capsys, "resume", "images").strip() == "images: resumed"
    assert queues_command(m, capsys, "set", "images", "--concurrency", "none", "--rate", "none").strip() == (
        "images: updated"
    )
    out = queues_command(m, capsys, "set", "images", "--weight", "2", "--order", "random", "--json")
    assert json.loads(out) == {"name": "images", "status": "updated", "weight": 2, "order": "random"}
    queues_command(m, capsys, "set", "images", "--rate", "5/s", "--concurrency", "3")
    assert m.calls == [
        ("pause_queue", "images"),
        ("resume_queue", "images"),
        ("set_queue", "images", "none", "none", None, None),
        ("set_queue", "images", None, None, 2, "random"),
        ("set_queue", "images", 3, "5/s", None, None),
    ]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["set", "images"], "nothing to set"),
        (["set", "images", "--concurrency", "-1"], "--concurrency must be 1 or more"),
        (["set", "images", "--concurrency", "0"], "--concurrency must be 1 or more"),
        (["set", "images", "--weight", "0"], "--weight must be 1 or more"),
        (["set", "images", "--rate", "fast"], "could not read 'fast' as a rate"),
    ],
)
def test_queue_set_refuses_before_asking(argv, message):
    m = FakeMartinet()
    args = cli.build_parser().parse_args(["queues", *argv])
    with pytest.raises(MartinetError, match=re.escape(message)):
        cli.COMMANDS["queues"](m, args)
    assert m.calls == []


def test_queue_table(capsys):
    rows = [
        {"name": "default", "paused": False, "weight": 1, "order": "fifo", "concurrency": None, "rate": None,
         "running": 2, "counts": {"queued": 5, "running": 2, "succeeded": 10, "dead": 0},
         "oldest_waiting_seconds": 12.34},
        {"name": "images", "paused": True, "weight": 3, "order": "random", "concurrency": 8, "rate": "100/60s",
         "running": 0, "counts": {}, "oldest_waiting_seconds": None},
    ]  # fmt: skip
    m = FakeMartinet(rows)
    out = queues_command(m, capsys).splitlines()
    assert out[0].split() == [
        "NAME", "PAUSED", "WEIGHT", "ORDER", "CONCURRENCY", "RATE", "RUNNING", "WAITING", "OLDEST", "COUNTS"
    ]  # fmt: skip
    assert out[1].split() == [
        "default", "no", "1", "fifo", "-", "-", "2", "5", "12.3s", "queued=5", "running=2", "succeeded=10"
    ]  # fmt: skip
    assert out[2].split() == ["images", "yes", "3", "random", "8", "100/60s", "0", "0", "-", "-"]
    assert queues_command(m, capsys, "list").splitlines() == out
    assert json.loads(queues_command(m, capsys, "--json")) == rows
    assert queues_command(FakeMartinet(), capsys).strip() == "no queues"
