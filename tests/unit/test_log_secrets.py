"""Secrets stay out of logs (issue 28): a task's args, result and error are told at INFO by
their type and size only; a database password is masked in errors, log lines and the CLI's
output; the parameters of the SQL peewee logs at DEBUG, and CURVE secret keys, are masked
by the filter on martinet's handlers (martinet/logs.py)."""

from __future__ import annotations

import logging
import traceback

import peewee
import pytest
import zmq

import martinet
from martinet import cli, logs
from martinet.attempt import TaskContext, run
from martinet.errors import StoreError
from martinet.logs import Secrets, mask, told
from martinet.messages import OutcomeKind
from martinet.store import open_database
from martinet.store.connect import without_password

SECRET = "tok_s3cr3t-4f9a"  # what a handler's error says: a token from its args
PASSWORD = "s3cr3tpw"
REFUSED = f"postgresql://u:{PASSWORD}@127.0.0.1:1/x"  # nothing listens on port 1: refused at once


class Lines(logging.Handler):
    """The lines a handler of martinet's would write: formatted, through the Secrets filter."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.setFormatter(logging.Formatter(logs.TEXT))
        self.addFilter(Secrets())
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def test_a_handlers_error_is_told_by_type_and_size_at_info_by_the_worker_and_the_daemon(
    make_live, sqlite_url, caplog
):
    """Given a handler that raises with a token in its message, when its task fails for good,
    then no line at INFO or above says the token, and the worker's and the daemon's lines
    say the task, its attempt and the exception's type; the error itself is the task's."""
    live = make_live(sqlite_url)
    live.worker(worker_id="w-secret")
    with caplog.at_level(logging.INFO, logger="martinet"):
        tid = live.m.execute("boom", {"message": f"charge failed for {SECRET}"}, max_attempts=1)
        with pytest.raises(martinet.TaskFailed):
            live.m.wait(tid, timeout=20)
    assert SECRET not in caplog.text
    about_it = [r for r in caplog.records if getattr(r, "task_id", None) == tid and r.levelno >= logging.INFO]
    by = {r.name: r.getMessage() for r in about_it}
    assert by.keys() >= {"martinet.daemon", "martinet.worker"}, by
    for line in by.values():
        assert (
            f"task {tid}" in line
            and "attempt 1" in line
            and "ValueError (" in line
            and "bytes of error" in line
        )
    assert SECRET in live.m.get(tid)["error"]["message"]  # the user still reads it: stored, not logged


def test_the_worker_tells_an_error_in_full_at_debug_only(caplog):
    ctx = TaskContext(7, 2, "charge", {"card": SECRET}, report=lambda _progress: None)

    def charge(task, card):
        raise martinet.Fail(f"card {card} declined")

    with caplog.at_level(logging.DEBUG, logger="martinet.worker"):
        outcome = run(ctx, charge, "w1", 1 << 20, report=lambda _start: None, wake=lambda: None)
    assert outcome.kind is OutcomeKind.FAILED and SECRET in outcome.error["message"]
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert info == [f"task 7 attempt 2 failed for good: {told(outcome.error)}"]
    assert info[0].startswith("task 7 attempt 2 failed for good: Fail (") and SECRET not in info[0]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert any(SECRET in line and "Traceback" in line for line in debug)


def test_a_release_whose_reason_is_not_valid_utf8_is_still_given_back(caplog):
    """A reason holding a lone surrogate (a file name os.fsdecode read) is measured, not encoded strictly."""
    ctx = TaskContext(7, 1, "copy", {}, report=lambda _progress: None)

    def copy(task):
        raise martinet.Release("file \udcff locked")

    with caplog.at_level(logging.INFO, logger="martinet.worker"):
        outcome = run(ctx, copy, "w1", 1 << 20, report=lambda _start: None, wake=lambda: None)
    assert outcome.kind is OutcomeKind.RELEASED
    assert [r.getMessage() for r in caplog.records] == ["task 7 attempt 1 given back (13 bytes of reason)"]


def test_an_error_is_told_by_its_type_and_the_size_of_its_text():
    assert (
        told({"type": "ValueError", "message": "é" * 3, "traceback": "x" * 10})
        == "ValueError (16 bytes of error)"
    )
    assert told(None) == told({}) == "no error"


def test_a_failed_connect_never_shows_the_password(caplog, capsys):
    """Given a PostgreSQL URL with a password, when the server refuses the connection, then
    neither the StoreError, its traceback, the log lines, nor the CLI's stderr say it."""
    pytest.importorskip("psycopg2")
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(StoreError) as raised:
            open_database(REFUSED)
        text = "".join(traceback.format_exception(raised.value))
        assert "cannot open database postgresql://u:***@127.0.0.1:1/x" in text and PASSWORD not in text
        code = cli.main(
            ["serve", "--db", REFUSED, "--client-port", "0", "--worker-port", "0", "--status-port", "0"]
        )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("martinet: error: cannot open database postgresql://u:***@")
    assert PASSWORD not in err and PASSWORD not in caplog.text


def test_a_drivers_message_that_quotes_the_password_is_masked():
    url = "postgresql://u:p%40ss@db.example/x"
    exc = peewee.OperationalError("invalid dsn: host=db.example password=p@ss port=5432; also p%40ss")
    said = without_password(exc, url)
    assert "p@ss" not in said and "p%40ss" not in said and "password=***" in said


def test_peewee_logs_its_statements_at_debug_without_their_parameters():
    db = peewee.SqliteDatabase(":memory:")
    lines = Lines()
    peewee_log = logging.getLogger("peewee")
    peewee_log.addHandler(lines)
    level, peewee_log.level = peewee_log.level, logging.DEBUG
    try:
        db.execute_sql("SELECT ?, ?", (SECRET, 42))
    finally:
        peewee_log.removeHandler(lines)
        peewee_log.setLevel(level)
        db.close()
    (line,) = lines.lines
    assert "SELECT ?, ? -- 2 parameter(s)" in line and SECRET not in line


def test_the_filter_masks_passwords_and_curve_secret_keys_in_messages_and_tracebacks():
    public, secret = (key.decode() for key in zmq.curve_keypair())
    lines = Lines()
    log = logging.getLogger("martinet.test-secrets")
    log.addHandler(lines)
    try:
        log.warning("database %s, dsn host=h password=%s", REFUSED, PASSWORD)
        log.warning('key file says: secret-key = "%s", public-key = "%s"', secret, public)
        try:
            raise ValueError(f"cannot use secret {secret} with mysql://root:{PASSWORD}@h/db")
        except ValueError:
            log.exception("unexpected")
    finally:
        log.removeHandler(lines)
    text = "\n".join(lines.lines)
    assert PASSWORD not in text and secret not in text
    assert (
        "password=***" in text
        and 'secret-key = "***"' in text
        and "use secret *** with mysql://root:***@h" in text
    )
    assert public in text and "postgresql://u:***@127.0.0.1:1/x" in text  # what is no secret stays
    assert mask("tcp://127.0.0.1:8009 and mysql://root@127.0.0.1:3306/test") == (
        "tcp://127.0.0.1:8009 and mysql://root@127.0.0.1:3306/test"
    )


def test_martinets_logging_setup_installs_the_filter(monkeypatch):
    given: dict = {}
    monkeypatch.setattr(logging, "basicConfig", lambda **kwargs: given.update(kwargs))
    logs.setup("INFO", "json")
    (handler,) = given["handlers"]
    assert any(isinstance(f, Secrets) for f in handler.filters)
