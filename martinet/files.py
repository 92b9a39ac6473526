"""Files that hold secrets or decide what runs: created private, refused when others may
change them (or read them, for secrets). POSIX permissions; elsewhere nothing is checked."""

from __future__ import annotations

import contextlib
import os

from martinet.errors import ConfigError


def create_private(path: str | os.PathLike) -> None:
    """Create `path` readable and writable by its owner only, if it does not exist: a
    database or a journal holds tasks' args and results, which often hold tokens and
    personal data (SQLite gives its WAL and shared-memory files the file's permissions).
    An existing file keeps its own."""
    with contextlib.suppress(OSError):  # it exists; or no such directory: the opener's own error says it
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def refuse_if_others_write(path: str | os.PathLike, what: str) -> None:
    """ConfigError when someone other than the file's owner may write it: whoever can
    write a config or key file decides where tasks go and what runs."""
    _refuse(path, what, 0o022, "written", "who could change what martinet connects to and runs", "go-w")


def refuse_if_others_read(path: str | os.PathLike, what: str, holds: str) -> None:
    """ConfigError when someone other than the file's owner may read it (or write it):
    for files that hold a secret (`holds` says which)."""
    refuse_if_others_write(path, what)
    _refuse(path, what, 0o044, "read", f"and it holds {holds}", "go-r")


def _refuse(path: str | os.PathLike, what: str, bits: int, verb: str, why: str, fix: str) -> None:
    mode = os.stat(path).st_mode
    if os.name == "posix" and mode & bits:
        who = "anyone on this host" if mode & bits & 0o007 else "its group"
        raise ConfigError(
            f"{what} {path} can be {verb} by {who} (mode {mode & 0o777:o}), {why}: chmod {fix} {path}"
        )
