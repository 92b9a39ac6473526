"""In process: pure parts, the daemon driven with a clock the test sets (tests/core.py), and
the public API and CLI against an embedded daemon and worker threads (tests/live.py)."""

from __future__ import annotations

import pytest

from tests.live import Cli


def _made(cls):
    """A fixture's body: a factory of `cls(url, **settings)`, each closed after the test."""
    made: list = []

    def make(url: str, **settings):
        made.append(cls(url, **settings))
        return made[-1]

    yield make
    for thing in made:
        thing.close()


@pytest.fixture
def make_core():
    """Core(url, **settings) (tests/core.py): a daemon driven in process, closed after the test."""
    from tests.core import Core

    yield from _made(Core)


@pytest.fixture
def make_live():
    """Live(url, **settings) (tests/live.py): an embedded daemon and worker threads, closed after the test."""
    from tests.live import Live

    yield from _made(Live)


@pytest.fixture
def live(make_live, sqlite_url):
    """An embedded daemon and worker threads on a fresh SQLite file (tests/live.py)."""
    return make_live(sqlite_url)


@pytest.fixture
def sh(live, capsys, monkeypatch) -> Cli:
    """The CLI's main() against `live`, its output read (tests/live.py)."""
    return Cli(live, capsys, monkeypatch)
