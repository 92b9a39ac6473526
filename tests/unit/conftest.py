"""In process: pure parts, the daemon driven with a clock the test sets (tests/core.py), and
the public API and CLI against an embedded daemon and worker threads (tests/live.py)."""

from __future__ import annotations

import pytest

from tests.live import Cli


@pytest.fixture
def make_core():
    """Core(url, **settings) (tests/core.py): a daemon driven in process, closed after the test."""
    from tests.core import Core

    made: list = []

    def make(url: str, **settings) -> Core:
        made.append(Core(url, **settings))
        return made[-1]

    yield make
    for core in made:
        core.close()


@pytest.fixture
def make_live():
    """Live(url, **settings) (tests/live.py): an embedded daemon and worker threads, closed after the test."""
    from tests.live import Live

    made: list = []

    def make(url: str, **settings) -> Live:
        made.append(Live(url, **settings))
        return made[-1]

    yield make
    for live in made:
        live.close()


@pytest.fixture
def live(make_live, sqlite_url):
    """An embedded daemon and worker threads on a fresh SQLite file (tests/live.py)."""
    return make_live(sqlite_url)


@pytest.fixture
def sh(live, capsys, monkeypatch) -> Cli:
    """The CLI's main() against `live`, its output read (tests/live.py)."""
    return Cli(live, capsys, monkeypatch)
