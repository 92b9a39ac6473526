"""Hooks on a daemon's events (`Martinet.on_complete`, ...) and the listener thread
that feeds them, resumable from an event id."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from martinet import rules
from martinet.client import Client, EventListener
from martinet.config import Settings
from martinet.errors import BadInput

log = logging.getLogger("martinet.api")

Event = dict[str, Any]
Hook = Callable[[Event], Any]
H = TypeVar("H", bound=Hook)


class EventHooks:
    """The hooks of a `Martinet` handle (see there): its client, settings, hooks and listener."""

    client: Client
    settings: Settings
    _hooks: list[tuple[tuple[str, ...], str | None, Hook]]  # (kinds, name, fn)
    _listener: EventListener | None
    _since: int | None  # where a stopped listener left off

    def on(self, event: str, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` for each event of a kind (see HOOKS), optionally only for the
        tasks named `name`. Hooks run in one listener thread, in event order; a hook that
        raises is logged, and the next events still come. Returns `fn`."""
        if not isinstance(event, str) or event not in HOOKS:
            raise BadInput(f"unknown event {str(event)[:60]!r}; hooks take one of: {', '.join(HOOKS)}")
        if not callable(fn):
            raise BadInput(f"a hook must be callable, not {type(fn).__name__}")
        if name is not None and (not isinstance(name, str) or not name):
            raise BadInput(f"name must be a task name, not {str(name)[:60]!r}")
        if name is not None and event in ("malformed", "gap"):
            raise BadInput(f"{event} events belong to no task: on({event!r}) takes no name")
        self._hooks.append((HOOKS[event], name, fn))
        if self._listener is None:
            self.listen(self._since)
        return fn

    def on_complete(self, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` when a task (optionally only `name`) succeeds; event["result"]."""
        return self.on("complete", fn, name)

    def on_progress(self, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` when a running task reports progress (event["progress"], ["message"])."""
        return self.on("progress", fn, name)

    def on_retry(self, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` when an attempt failed and another will come at event["run_at"]."""
        return self.on("retry", fn, name)

    def on_dead(self, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` when a task failed with no attempts left (event["error"])."""
        return self.on("dead", fn, name)

    def on_error(self, fn: H, name: str | None = None) -> H:
        """Call `fn(event)` when an attempt fails; event["status"] is "failed" (will retry),
        "dead" (attempts spent) or "stalled" (held for an operator)."""
        return self.on("error", fn, name)

    def on_malformed(self, fn: H) -> H:
        """Call `fn(event)` when the daemon drops a message it could not read: event["why"],
        ["socket"] (client, worker or status), ["peer"] and ["size"] in bytes;
        ["suppressed"] counts the ones before it that were not recorded (a flood)."""
        return self.on("malformed", fn)

    def listen(self, since: int | None = None) -> None:
        """(Re)start the event listener from after event `since` (the `last_event_id` of an
        earlier run: the daemon replays what came after it, while it keeps it, even events
        the hooks had already); by default from where `stop_listening` left off, or from
        now. A hook starts it if need be."""
        rules.check_event_id(since)
        self.stop_listening()
        start = self._since if since is None else since
        self._listener = EventListener(self.client, self._dispatch_event, start)
        self._listener.start(self.settings.timeout)

    def stop_listening(self) -> None:
        """Stop the event listener; hooks stay, and `listen()` goes on from `last_event_id`."""
        if self._listener is not None:
            self._since = self._listener.last
            self._listener.stop()
            self._listener = None

    @property
    def last_event_id(self) -> int | None:
        """The id of the last event the hooks got (keep it to catch up in a later run).
        Set it before the first hook to resume there: the listener starts after it."""
        return self._listener.last if self._listener is not None else self._since

    @last_event_id.setter
    def last_event_id(self, since: int | None) -> None:
        rules.check_event_id(since)
        if self._listener is not None:
            raise BadInput(
                "events are being listened to already: stop_listening() first, or listen(since=...)"
            )
        self._since = since

    def _dispatch_event(self, event: Event) -> None:
        kind = event.get("event")
        for kinds, name, fn in list(self._hooks):
            if kind in kinds and (name is None or name == event.get("name")):
                try:
                    fn(event)
                except Exception:  # one hook's bug must cost neither the other hooks nor later events
                    log.exception(
                        "the %s hook %s raised on event %s (task %s)",
                        kind, getattr(fn, "__name__", fn), event.get("event_id"), event.get("id"),
                    )  # fmt: skip


# Hook names and the event kinds each gets (events.KINDS; "gap" is the client's own:
# the daemon no longer keeps events it would have replayed).
HOOKS: dict[str, tuple[str, ...]] = {
    "complete": ("succeeded",),
    "progress": ("progress",),
    "retry": ("failed",),
    "dead": ("dead",),
    "error": ("failed", "dead", "stalled"),
    "cancelled": ("cancelled",),
    "stalled": ("stalled",),
    "released": ("released",),
    "interrupted": ("interrupted",),
    "malformed": ("malformed",),
    "gap": ("gap",),
    "any": ("progress", "succeeded", "failed", "dead", "cancelled", "stalled", "released",
            "interrupted", "malformed", "gap"),
}  # fmt: skip
