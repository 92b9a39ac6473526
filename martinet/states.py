"""The vocabulary of the state machine: task states, schedule states, attempt outcomes.

StrEnums whose values are the strings the database and the wire have always held:
a member equals its string (TaskState.QUEUED == "queued"), is stored and sent as
it, and a value read back from the database compares equal to the member.
Pure: clients import it without peewee.
"""

from __future__ import annotations

from enum import StrEnum


class TaskState(StrEnum):
    """A task's status (models.Task.status). The terminal ones never change again on
    their own; failed is a retry waiting for its run_at."""

    WAITING = "waiting"  # on the tasks it was submitted `after`
    SCHEDULED = "scheduled"  # its run_at is still to come
    QUEUED = "queued"  # ready: a worker may claim it
    LEASED = "leased"  # sent to a worker (its lease held), no handler on it yet: in its prefetch
    RUNNING = "running"  # a handler started it
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # its attempt failed; it runs again at run_at
    DEAD = "dead"  # failed with no attempt left (or for good)
    CANCELLED = "cancelled"
    STALLED = "stalled"  # held until an operator retries it


class ScheduleState(StrEnum):
    """A schedule's status (models.Schedule.status)."""

    ACTIVE = "active"  # makes its runs as they come due
    PAUSED = "paused"  # makes none until resumed (and owes none it skipped)
    FINISHED = "finished"  # its until or count is spent
    REMOVED = "removed"  # revoked: its key is free


class AttemptOutcome(StrEnum):
    """How an attempt ended (models.Attempt.outcome; also a worker's outcome kind)."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    LOST = "lost"  # its worker died, went silent, or its lease ran out
    INTERRUPTED = "interrupted"  # its worker shut down on purpose: no attempt spent
    RELEASED = "released"  # the handler gave it back (martinet.Release): no attempt spent
    CANCELLED = "cancelled"  # it was asked to stop; however it ended, it is cancelled


class Revoked(StrEnum):
    """What `revoke` did to a task besides leaving it in its state."""

    CANCELLED = "cancelled"  # it had not started: cancelled now
    CANCELLING = "cancelling"  # held by a worker: asked to stop, cancelled when its attempt ends


UPDATED = "updated"  # what `update` answers when it changed a task or schedule

STATES = tuple(TaskState)
TERMINAL = (TaskState.SUCCEEDED, TaskState.DEAD, TaskState.CANCELLED)
# Held by a worker: leased or running. Leases, fencing, reaping and time limits treat
# both alike; only `started_at` and what users see tell them apart.
HELD = (TaskState.LEASED, TaskState.RUNNING)
TIMED = (TaskState.SCHEDULED, TaskState.FAILED)  # states that become queued when run_at comes
REVOCABLE = (TaskState.WAITING, TaskState.SCHEDULED, TaskState.QUEUED, TaskState.FAILED, TaskState.STALLED)
RETRYABLE = (TaskState.DEAD, TaskState.STALLED, TaskState.CANCELLED, TaskState.FAILED)
STALLABLE = (TaskState.SCHEDULED, TaskState.QUEUED, TaskState.FAILED)


def sql_list(states: tuple[str, ...]) -> str:
    """States as a SQL list of literals: "'leased', 'running'" (for statements written once)."""
    return ", ".join(f"'{state}'" for state in states)
