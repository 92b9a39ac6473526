"""In process: pure parts, and the daemon driven with a clock the test sets (tests/core.py)."""

from __future__ import annotations

import pytest


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
