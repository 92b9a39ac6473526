"""Typed views of the shared checks on header fields (validate.py states each rule once)."""

from __future__ import annotations

import math
import secrets
from typing import Any, TypeGuard

from martinet import validate


def is_id(value: object) -> TypeGuard[int]:
    """A whole number the database can hold (task ids, attempt numbers): validate.is_id,
    with a fast path for the plain int nearly every message holds (bool is not one)."""
    if type(value) is int:
        return 0 <= value <= validate.MAX_ID
    return validate.is_id(value)


def is_worker_id(value: object) -> TypeGuard[str]:
    return validate.is_worker_id(value)


def is_number(value: object) -> TypeGuard[int | float]:
    """A JSON number (not a bool)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_positive(value: object) -> TypeGuard[int | float]:
    """A finite number above 0."""
    return is_number(value) and 0 < value < math.inf


SESSION_LENGTH = 32  # hex digits of a session (secrets.token_hex(16))


def new_session() -> str:
    return secrets.token_hex(SESSION_LENGTH // 2)


def incarnation_of(h: dict[str, Any]) -> str | None:
    """A hello's "incarnation", if it is one: a worker process's own id (ASCII, at most 64)."""
    value = h.get("incarnation")
    ok = isinstance(value, str) and 0 < len(value) <= 64 and value.isascii() and value.isprintable()
    return value if ok else None


def session_of(h: dict[str, Any]) -> str | None:
    """A header's "session", if it is one (of the length the daemon makes, in ASCII: it is
    compared with hmac.compare_digest)."""
    session = h.get("session")
    ok = isinstance(session, str) and len(session) == SESSION_LENGTH and session.isascii()
    return session if ok else None
