"""Each rule on names and limits (martinet/rules.py) at its boundaries, and the message a
user sees wherever it is checked: a config file, a flag, the Python API, the daemon. The
daemon's side runs embedded (in this process, over its sockets)."""

from __future__ import annotations

import dataclasses
import math

import pytest

import martinet
from martinet import cli, config, rules
from martinet.client import Client
from martinet.config import Settings
from martinet.errors import BadInput, ConfigError
from martinet.registry import check_limits
from martinet.retry import RetryPolicy
from martinet.validate import Limits, check_task
from martinet.worker import DEFAULT_MAX_PAYLOAD, WorkerOptions


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    """An embedded daemon on free ports: the authority on every request's rules."""
    db = tmp_path_factory.mktemp("rules") / "rules.db"
    m = martinet.Martinet(
        db=f"sqlite:///{db}", client_port=0, worker_port=0, status_port=0, log_level="WARNING"
    )
    yield m
    m.close()


def refused(error: type[Exception], call, *args, **kwargs) -> str:
    """The message of the error `call(*args, **kwargs)` raises, which must be `error`."""
    with pytest.raises(error) as info:
        call(*args, **kwargs)
    return str(info.value)


def run_cli(capsys, main, argv: list[str]) -> tuple[int, str]:
    """(exit code, stderr) of the command run in process."""
    code = main(argv)
    return code, capsys.readouterr().err


# ---- queue names ---------------------------------------------------------------------

NAME_RULE = "(1 to 255 printable characters, no spaces)"


@pytest.mark.parametrize("name", ["a", "x" * 255, "images.v2", "é", "日本", "a-b_c/d:e"])
def test_a_queue_name_is_1_to_255_printable_characters_without_spaces(name):
    assert rules.check_queue_name(name) == name


@pytest.mark.parametrize(
    "name, message",
    [
        ("", f"queue name '' refused: an empty string is not a queue name {NAME_RULE}"),
        ("x" * 256, f"queue name '{'x' * 60}'... refused: text of 256 characters is not a queue name"),
        ("a b", f"queue name 'a b' refused: text with a space is not a queue name {NAME_RULE}"),
        ("a\tb", "queue name 'a\\tb' refused: text with an unprintable character is not a queue name"),
        ("a\u00a0b", "queue name 'a\\xa0b' refused: text with an unprintable character"),
        ("a\x00", "text with an unprintable character"),
        (5, f"queue name 5 refused: a value of type int is not a queue name {NAME_RULE}"),
        (["a"], "queue name ['a'] refused: a value of type list is not a queue name"),
    ],
)
def test_a_bad_queue_name_is_refused_saying_why(name, message):
    assert message in refused(BadInput, rules.check_queue_name, name)
    # The same rule and message as a setting or a flag: a ConfigError.
    assert message in refused(ConfigError, config.check_queue_name, name)
    # And at submit, in the daemon's check of the request.
    assert message in refused(BadInput, check_task, {"name": "x", "queue": name}, Limits(), 3)


def test_every_place_says_the_same_about_a_bad_queue_name(tmp_path, capsys, daemon, monkeypatch):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    said = "queue name 'a b' refused: text with a space is not a queue name " + NAME_RULE
    toml = tmp_path / "m.toml"
    toml.write_text('[queues."a b"]\nweight = 2\n')
    assert refused(ConfigError, config.load, toml, environ={}) == said
    assert refused(BadInput, daemon.execute, "add", {}, queue="a b") == said
    assert refused(BadInput, daemon.set_queue, "a b", weight=2) == said
    assert refused(BadInput, daemon.pause_queue, "a b") == said
    args = cli.build_parser().parse_args(["execute", "add", "--queue", "a b"])
    assert refused(ConfigError, cli.task_spec, args) == said
    argv = ["execute", "add", "--queue", "a b", "--url", "tcp://127.0.0.1:1"]
    assert run_cli(capsys, cli.main, argv) == (1, f"martinet: error: {said}\n")
    assert run_cli(capsys, cli.worker_main, ["tests.tasks", "--queues", "ok,a b"]) == (
        1,
        f"martinet-worker: error: {said}\n",
    )


# ---- counts: 1 or more, and a queue's limits at most 1,000,000 --------------------------


@pytest.mark.parametrize("value", [1, 2, rules.MAX_QUEUE_LIMIT])
def test_a_queue_limit_is_a_whole_number_from_1_to_the_most(value):
    assert rules.is_count(value, rules.MAX_QUEUE_LIMIT)
    assert rules.check_count(value, "weight", most=rules.MAX_QUEUE_LIMIT) == value


@pytest.mark.parametrize(
    "value, message",
    [
        (0, "weight must be a whole number of 1 or more, got 0"),
        (-1, "weight must be a whole number of 1 or more, got -1"),
        (1.5, "weight must be a whole number of 1 or more, got 1.5"),
        (2.0, "weight must be a whole number of 1 or more, got 2.0"),
        (True, "weight must be a whole number of 1 or more, got True"),
        ("4", "weight must be a whole number of 1 or more, got '4'"),
        (None, "weight must be a whole number of 1 or more, got None"),
        (rules.MAX_QUEUE_LIMIT + 1, "weight must be at most 1,000,000, got 1000001"),
    ],
)
def test_a_bad_count_is_refused(value, message):
    assert not rules.is_count(value, rules.MAX_QUEUE_LIMIT)
    assert refused(BadInput, rules.check_count, value, "weight", most=rules.MAX_QUEUE_LIMIT) == message


def test_without_a_most_any_count_of_1_or_more_goes():
    assert rules.is_count(10**12) and rules.check_count(10**12, "liveness") == 10**12


def test_every_place_says_the_same_about_a_bad_count(tmp_path, capsys, daemon, monkeypatch):
    monkeypatch.delenv("MARTINET_CONFIG", raising=False)
    # The daemon (set_queue): "none" clears a concurrency, and the message says so.
    said = "concurrency must be a whole number of 1 or more ('none' clears it), got 0"
    assert refused(BadInput, daemon.set_queue, "q", concurrency=0) == said
    assert (
        refused(BadInput, daemon.set_queue, "q", weight=0)
        == "weight must be a whole number of 1 or more, got 0"
    )
    over = "concurrency must be at most 1,000,000, got 1000001"
    assert refused(BadInput, daemon.set_queue, "q", concurrency=1_000_001) == over
    daemon.set_queue("q", concurrency=rules.MAX_QUEUE_LIMIT, weight=rules.MAX_QUEUE_LIMIT)
    daemon.set_queue("q", concurrency=" None ")  # clears it
    assert [q["concurrency"] for q in daemon.queues() if q["name"] == "q"] == [None]
    # A config file's queue table, and a setting.
    toml = tmp_path / "m.toml"
    toml.write_text("[queues.images]\nweight = 1000001\n")
    assert refused(ConfigError, config.load, toml, environ={}) == (
        "queue 'images' setting 'weight' must be at most 1,000,000, got 1000001"
    )
    toml.write_text("[queues.images]\nconcurrency = 0\n")
    assert refused(ConfigError, config.load, toml, environ={}) == (
        "queue 'images' setting 'concurrency' must be a whole number of 1 or more, got 0"
    )
    for key in ("concurrency", "liveness", "max_attempts", "poison_after", "max_releases", "max_payload"):
        assert refused(ConfigError, config.load, flags={key: 0}, environ={}) == (
            f"setting {key!r} must be a whole number of 1 or more, got 0"
        )
    # The CLI, before it asks the daemon (a flag argparse made a number: no "whole number").
    url = ["--url", "tcp://127.0.0.1:1"]
    assert run_cli(capsys, cli.main, ["queues", "set", "q", "--concurrency", "0", *url]) == (
        1,
        "martinet: error: --concurrency must be 1 or more ('none' clears it), got 0\n",
    )
    assert run_cli(capsys, cli.main, ["queues", "set", "q", "--concurrency", "two", *url]) == (
        1,
        "martinet: error: --concurrency must be 1 or more ('none' clears it), got 'two'\n",
    )
    assert run_cli(capsys, cli.main, ["queues", "set", "q", "--weight", "1000001", *url]) == (
        1,
        "martinet: error: --weight must be at most 1,000,000, got 1000001\n",
    )
    assert run_cli(capsys, cli.main, ["queues", "set", "q", "--weight", "0", *url]) == (
        1,
        "martinet: error: --weight must be 1 or more, got 0\n",
    )
    # @martinet.task(concurrency=...): the same rule, its own words (fixed by
    # tests/unit/test_rate_and_queue_config.py).
    assert refused(BadInput, check_limits, "job", 0, None) == (
        "concurrency of task 'job' must be a whole number of at least 1, got 0"
    )
    assert check_limits("job", 1, None) == {"concurrency": 1, "rate": None}


@pytest.mark.parametrize("text, clears", [("none", True), (" NONE ", True), ("None", True),
                                          ("nonee", False), ("", False), (None, False), (0, False)])  # fmt: skip
def test_none_clears_a_limit(text, clears):
    assert rules.means_none(text) is clears


# ---- seconds -------------------------------------------------------------------------


@pytest.mark.parametrize("value", [1e-9, 0.5, 1, 86400.0, 1e300])
def test_seconds_are_positive_and_finite(value):
    assert rules.is_seconds(value) and rules.check_seconds(value, "timeout") == float(value)


@pytest.mark.parametrize("value", [0, 0.0, -1, math.inf, math.nan, True, "1"])
def test_bad_seconds_are_refused(value):
    assert not rules.is_seconds(value) and not rules.is_seconds(None)
    message = f"timeout must be a positive number of seconds, got {value!r}"
    assert refused(BadInput, check_task, {"name": "x", "timeout": value}, Limits(), 3) == message


def test_a_setting_in_seconds_says_the_same():
    for key in ("lease", "timeout", "heartbeat_interval", "retry_cap", "timeout_grace", "min_interval"):
        assert refused(ConfigError, config.load, flags={key: 0}, environ={}) == (
            f"setting {key!r} must be a positive number of seconds, got 0.0"
        )


# ---- event ids and attempts ------------------------------------------------------------


@pytest.mark.parametrize("value", [None, 0, 1, 2**63 - 1])
def test_an_event_id_is_0_or_more(value):
    assert rules.check_event_id(value) == value


def test_a_bad_event_id_is_refused_everywhere_alike(capsys, daemon):
    for value, shown in ((-1, "-1"), (True, "True"), (1.5, "1.5"), ("yesterday", "'yesterday'")):
        said = f"since must be an event id (a whole number of 0 or more), got {shown}"
        assert refused(BadInput, rules.check_event_id, value) == said
        assert refused(BadInput, daemon.client.request, "subscribe", {"since": value}) == said
        with pytest.raises(BadInput, match=r"^since must be an event id"):
            daemon.last_event_id = value
    argv = ["watch", "--since", "-1", "--url", "tcp://127.0.0.1:1"]
    assert run_cli(capsys, cli.main, argv) == (
        1,
        "martinet: error: --since must be an event id (a whole number of 0 or more), got -1\n",
    )


@pytest.mark.parametrize("value", [None, 1, rules.MAX_ATTEMPTS])
def test_attempts_are_1_to_1000(value):
    assert rules.check_attempts(value, "attempts") == value


def test_bad_attempts_are_refused_everywhere_alike(daemon):
    for value in (0, rules.MAX_ATTEMPTS + 1, 2.0, True, "3"):
        said = f"must be an integer from 1 to 1000, got {value!r}"
        assert refused(BadInput, check_task, {"name": "x", "max_attempts": value}, Limits(), 3) == (
            f"max_attempts {said}"
        )
        assert refused(BadInput, daemon.execute, "add", {}, max_attempts=value) == f"max_attempts {said}"
        assert (
            refused(BadInput, daemon.every, "1 hour", "add", {}, max_attempts=value) == f"max_attempts {said}"
        )
        assert refused(BadInput, daemon.retry, 1, attempts=value) == f"attempts {said}"


# ---- defaults: Settings' are the only copy ---------------------------------------------


def test_the_worker_and_the_client_take_their_defaults_from_settings():
    options = WorkerOptions()
    for key in ("connect", "worker_port", "status_port", "concurrency", "heartbeat_interval", "liveness",
                "timeout_grace"):  # fmt: skip
        assert getattr(options, key) == getattr(Settings, key), key
    assert dataclasses.asdict(Limits()) == {
        "max_payload": Settings.max_payload,
        "max_name_length": Settings.max_name_length,
        "min_interval": Settings.min_interval,
    }
    assert DEFAULT_MAX_PAYLOAD == Settings.max_payload
    assert RetryPolicy() == RetryPolicy(Settings.retry_base, Settings.retry_factor, Settings.retry_cap)
    client = Client("tcp://127.0.0.1:1")
    try:
        assert client.timeout == Settings.timeout
    finally:
        client.close()


def test_the_help_says_the_defaults_that_apply(capsys):
    worker = cli.build_worker_parser()
    assert worker.get_default("grace") == WorkerOptions.grace
    text = " ".join(worker.format_help().split())
    assert f"(default: {Settings.concurrency})" in text and f"(default: {Settings.worker_port})" in text
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {Settings.db})" in text and f"(default: {Settings.client_port})" in text
