"""What workers send, read and checked: one function per wire command, at the edge of the
core. Each takes a decoded header (protocol.decode) and returns what the core acts on, or
None for a message it drops. Typed messages (one per wire command) can take their place
here without the core's decisions changing."""

from __future__ import annotations

from typing import Any

from martinet.protocol import Cmd
from martinet.store import Outcome
from martinet.validate import (
    MAX_ERROR_MESSAGE,
    MAX_TRACEBACK,
    clean_tail,
    clean_text,
    finite,
    is_id,
    is_worker_id,
)

# Tasks a hello may say its worker holds (running, or with an unacknowledged outcome): a
# worker's outbox may hold more than its capacity after an outage, so the list is not bound
# by that; but the daemon readopts no more than the capacity (workers.on_hello): outcomes
# it committed already (their acks were lost) are not readopted and take no room.
MAX_HELD = 10_000


def hello(h: dict[str, Any], max_name_length: int) -> bool:
    """Whether a HELLO says a valid worker_id, names and capacity (the rest is optional)."""
    names: Any = h.get("names")
    capacity: Any = h.get("capacity")
    return (
        is_worker_id(h.get("worker_id"))
        and isinstance(names, list)
        and len(names) <= 10_000
        and all(isinstance(n, str) and n.isprintable() and len(n) <= max_name_length for n in names)
        and is_id(capacity)
        and 0 < capacity <= 10_000
    )


def attempts(value: Any, limit: int = MAX_HELD) -> list[dict[str, Any]]:
    """A hello's list of {id, attempt} (running, kept), checked and bounded."""
    items = value[:limit] if isinstance(value, list) else []
    return [r for r in items if isinstance(r, dict) and is_id(r.get("id")) and is_id(r.get("attempt"))]


def reject(h: dict[str, Any]) -> tuple[int, int, str | None, str] | None:
    """A REJECT: (task id, attempt, task name, reason), or None without a valid id and attempt."""
    task_id: Any = h.get("id")
    attempt: Any = h.get("attempt")
    if not (is_id(task_id) and is_id(attempt)):
        return None
    name = h.get("name")
    return (
        task_id,
        attempt,
        name if isinstance(name, str) else None,
        clean_text(h.get("reason", ""), 500) or "",
    )


def started(h: dict[str, Any]) -> list[tuple[int, int, str]] | None:
    """A STARTED's (or an ENDED's) tasks that handlers took: (id, attempt, worker id);
    None without a valid worker_id and list."""
    worker_id: Any = h.get("worker_id")
    items = h.get("started")
    if not is_worker_id(worker_id) or not isinstance(items, list):
        return None
    return [
        (item[0], item[1], worker_id)
        for item in items[:MAX_HELD]
        if isinstance(item, list) and len(item) == 2 and is_id(item[0]) and is_id(item[1])
    ]


def status_items(cmd: Cmd, h: dict[str, Any]) -> tuple[str, list[Any]] | None:
    """An ENDED, DONE, FAILED or PROGRESS: its worker id and items (an ENDED's list, the
    others as one), each still to check (attempt); None without a valid worker_id."""
    worker_id: Any = h.get("worker_id")
    if cmd is Cmd.ENDED:
        items = h.get("ended")
        items = items if isinstance(items, list) else None
    else:
        items = [{**h, "ok": cmd is Cmd.DONE}]
    if not is_worker_id(worker_id) or items is None:
        return None
    return worker_id, items


def attempt(item: Any) -> bool:
    """Whether an item of a status message names a task and attempt."""
    return isinstance(item, dict) and is_id(item.get("id")) and is_id(item.get("attempt"))


def progress(item: dict[str, Any]) -> tuple[float | None, str | None]:
    """A progress report's value and message, bounded."""
    return finite(item.get("progress")), clean_text(item.get("message"), 1000)


def outcome(h: dict[str, Any], worker_id: str) -> Outcome:
    """A worker's DONE or FAILED (or an ENDED's item), checked and bounded, as the store takes it."""
    task_id, attempt = h["id"], h["attempt"]
    if h.get("ok"):
        return Outcome(task_id, attempt, worker_id, "succeeded", result=h.get("result"))
    error: dict[str, Any] = h["error"] if isinstance(h.get("error"), dict) else {}
    retry_in = finite(h.get("retry_in"))
    retry_in = None if retry_in is None else min(max(0.0, retry_in), 366 * 86400.0)
    if h.get("release"):
        reason = clean_text(error.get("message") or "", 1000) or "released"
        return Outcome(task_id, attempt, worker_id, "released", error={"type": "Release", "message": reason},
                       retry_in=retry_in)  # fmt: skip
    error = {
        "type": clean_text(error.get("type") or "Error", 255),
        "message": clean_text(error.get("message") or "", MAX_ERROR_MESSAGE),
        "traceback": clean_tail(error.get("traceback"), MAX_TRACEBACK) or None,
    }
    return Outcome(
        task_id, attempt, worker_id, "failed", error=error, retry_in=retry_in, final=bool(h.get("final"))
    )
