"""A worker's outcomes that the daemon has not acknowledged yet, and how they are sent.

Each is kept as its body (messages.Outcome.body: the ENDED item as sent, and as
the journal keeps it) until the daemon acknowledges it. Every outcome is for the
database its task came from (the identity the daemon's welcome gives): `pending`
holds those for the database of the daemon the worker talks to, and only those
are sent or said held in a hello; `parked` holds the others until the worker
talks to a daemon of their database again.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from martinet import protocol
from martinet.errors import JournalError
from martinet.journal import UNKNOWN, Journal
from martinet.messages import Held, Outcome, OutcomeKind

log = logging.getLogger("martinet.worker")

FRAME_ROOM = 1024  # bytes of a message beside its outcomes (the command, worker id, commas)
BATCH_ITEMS = 500  # outcomes in one ENDED message at most
BATCH_BYTES = 256 * 1024  # and about this many bytes (one larger outcome still goes alone)
# Seconds between attempts to write a journal that could not be written (a full disk,
# say): each is one small SQLite transaction, so the worker takes tasks again about a
# second after there is room, at no cost worth counting meanwhile.
JOURNAL_RETRY = 1.0
JOURNAL_REMIND = 60.0  # seconds between log lines while the journal still cannot be written


@dataclass
class Pending:
    """An outcome the daemon has not acknowledged yet, encoded once (Outcome.body): as
    sent, and as its journal keeps it."""

    task_id: int
    attempt: int
    body: bytes
    sent_at: float = 0.0
    database: str = UNKNOWN  # the identity of the database its task came from


class Outbox:
    """The unacknowledged outcomes of worker `worker_id`, written ahead to `journal` if any."""

    def __init__(self, worker_id: str, journal: Journal | None) -> None:
        self.worker_id = worker_id
        self.journal = journal
        self.pending: dict[tuple[int, int], Pending] = {}  # by (id, attempt)
        self.parked: dict[tuple[str, int, int], Pending] = {}  # by (database, id, attempt)
        self._told: set[str] = set()  # databases whose waiting outcomes the log has named
        # While the journal cannot be written: why, since when, when to try again. The
        # worker then takes no tasks (its outcomes could not be kept) and says so.
        self.trouble: str | None = None
        self.since = self.retry_at = self._logged_at = 0.0

    def recover(self) -> None:
        """Take over the outcomes a previous run of this worker left unacknowledged: those
        for the database of the daemon it talked to last are pending (its hello says it
        holds them; a daemon of another database does not take them, and its welcome
        puts them aside), the others wait aside. Those whose database is not known (a
        journal of an older martinet) are kept in the journal and never sent."""
        journal = self.journal
        if journal is None:
            return
        last = journal.database()
        unknown = 0
        for database, task_id, attempt, body in journal.recover():
            if database == UNKNOWN:
                unknown += 1
            elif database == last:
                self.pending[(task_id, attempt)] = Pending(task_id, attempt, body, database=database)
            else:
                self.parked[(database, task_id, attempt)] = Pending(task_id, attempt, body, database=database)
        if self.pending or self.parked:
            log.info(
                "worker %s: journal %s holds %d unacknowledged outcome(s) from a previous run; "
                "sending them to the daemon of their database",
                self.worker_id, journal.path, len(self.pending) + len(self.parked),
            )  # fmt: skip
        if unknown:
            log.warning(
                "worker %s: journal %s holds %d outcome(s) written by an older martinet, which does "
                "not say which database they are for: they are kept there and never sent (sent to "
                "a daemon of another database, they would end its tasks with results not theirs); "
                "their tasks run again. Once no daemon waits for them, stop this worker and delete "
                "the file to drop them",
                self.worker_id, journal.path, unknown,
            )  # fmt: skip

    def add(self, outcome: Outcome, daemon_database: str) -> Pending | None:
        """An attempt's end, journaled (written with the journal's next commit): pending
        if its task came from the database of the daemon the worker talks to now (returned,
        to be sent), else aside (None)."""
        pending = Pending(outcome.task_id, outcome.attempt, outcome.body(), database=outcome.database)
        if self.journal is not None:
            self.journal.ended(pending.database, pending.task_id, pending.attempt, pending.body)
        if pending.database != daemon_database:  # its daemon was of another database
            self.parked[(pending.database, pending.task_id, pending.attempt)] = pending
            return None
        self.pending[(pending.task_id, pending.attempt)] = pending
        return pending

    def acked(self, key: tuple[int, int], now: float) -> None:
        """The daemon committed this outcome (id, attempt): it goes."""
        pending = self.pending.pop(key, None)
        if pending is not None and self.journal is not None:
            self.journal.acked(pending.database, key[0], key[1], now)

    def kept(self) -> tuple[Held, ...]:
        """The outcomes kept for other databases, for a hello: a daemon of one of them
        takes its own as held (readopted), the others are not its tasks."""
        return tuple(Held(i, a, database=d) for d, i, a in self.parked if d)

    def sort(self, database: str | None) -> None:
        """Outcomes for `database` (the welcoming daemon's) pending, the others aside (those
        it takes back were in the hello's `kept`: the daemon readopted them)."""
        ours = database or UNKNOWN
        for (task_id, attempt), pending in list(self.pending.items()):
            if pending.database != ours:
                self.parked[(pending.database, task_id, attempt)] = self.pending.pop((task_id, attempt))
        back = [key for key in self.parked if key[0] == ours] if ours != UNKNOWN else []
        for key in back:
            self.pending[key[1:]] = self.parked.pop(key)
        if back:
            log.info(
                "worker %s: sending %d outcome(s) kept for this daemon's database (%s)",
                self.worker_id, len(back), ours,
            )  # fmt: skip
        self.tell_parked(database)

    def tell_parked(self, database: str | None) -> None:
        """Say once for each database that outcomes for it wait aside: where, why, what to do."""
        path = self.journal.path if self.journal is not None else None
        where = f"in the journal {path}" if path else "in memory"
        drop = (
            f"stop this worker and delete {path} to drop them" if path else "they go when this worker stops"
        )
        for other, count in Counter(key[0] for key in self.parked).items():
            if other not in self._told:
                self._told.add(other)
                log.warning(
                    "worker %s: %d unacknowledged outcome(s) are for tasks of another database (id %s) "
                    "than this daemon's (id %s): they are kept %s, not sent here, where tasks with the "
                    "same ids are other tasks. They go to a daemon of that database when this worker "
                    "talks to one again; if that database is gone, %s",
                    self.worker_id, count, other or "unknown", database or "unknown", where, drop,
                )  # fmt: skip

    def batches(
        self,
        pendings: list[Pending],
        started: list[list[int]] | None,
        now: float,
        max_message: int,
        max_payload: int,
    ) -> Iterator[tuple[list[bytes], list[list[int]] | None]]:
        """The bodies of `pendings` in ENDED messages of bounded size, each within what the
        daemon's sockets take (`max_message`), stamped as sent `now`; the first carries
        `started` (starts are not resent: see Worker._held_list)."""
        budget = min(BATCH_BYTES, max_message - FRAME_ROOM)
        batch: list[bytes] = []
        size = len(protocol.dumps(started)) + 12 if started else 0  # ',"started":' and its list
        for pending in pendings:
            if len(pending.body) > max_message - FRAME_ROOM:
                self._too_large(pending, max_message, max_payload)
            if batch and (len(batch) >= BATCH_ITEMS or size + len(pending.body) > budget):
                yield batch, started
                batch, size, started = [], 0, None
            pending.sent_at = now
            batch.append(pending.body)
            size += len(pending.body) + 1
        if batch:
            yield batch, started

    def _too_large(self, pending: Pending, max_message: int, max_payload: int) -> None:
        """An outcome no message to the daemon could carry (a journal's, written under a
        larger limit, say): sent as the failure it is, never again as it was."""
        size = len(pending.body)
        task_id, attempt = pending.task_id, pending.attempt
        error = {"type": "ValueError", "message": f"the outcome is {size} bytes as JSON, over the limit "
                 f"of {max_message - FRAME_ROOM} of a message to the daemon (max_payload "
                 f"{max_payload})"}  # fmt: skip
        log.error("task %s attempt %s: %s; sent as a failure", task_id, attempt, error["message"])
        # Still for its own database only.
        failure = Outcome(
            task_id, attempt, self.worker_id, OutcomeKind.FAILED, error=error, database=pending.database
        )
        pending.body = failure.body()
        if self.journal is not None:  # replaces it with the next commit
            self.journal.ended(pending.database, task_id, attempt, pending.body)

    def commit(self, now: float, force: bool = False) -> bool | None:
        """Write what the journal buffers. False when it just became unwritable (a full
        disk, say), True when it is written again after that, else None. A failure never
        stops the worker: it takes no tasks until a write succeeds again (tried every
        JOURNAL_RETRY seconds), and the outcomes in hand are sent without the journal.

        Sent, not held back: the journal only guards an outcome until the daemon commits
        it, a matter of milliseconds once sent; held back, it would wait in memory alone
        for as long as the disk stays full, its task's lease kept alive, its result kept
        from whoever waits for it. Sent, the worst case is the journal's absence (killed
        before the ack, the task runs again), which at-least-once allows. The journal
        keeps it buffered and writes it when it can (deleted at once if acked by then)."""
        if self.journal is None:
            return None
        try:
            self.journal.commit(now, force)
        except JournalError as exc:
            return self._failed(str(exc), now)
        if self.trouble is None:
            return None
        log.warning(
            "worker %s: journal written again after %.0fs; taking tasks again",
            self.worker_id,
            now - self.since,
        )
        self.trouble = None
        return True

    def _failed(self, why: str, now: float) -> bool | None:
        self.retry_at = now + JOURNAL_RETRY
        if self.trouble is not None:
            if now - self._logged_at >= JOURNAL_REMIND:
                self._logged_at = now
                log.error(
                    "worker %s: still taking no tasks, the journal cannot be written for %.0fs: %s",
                    self.worker_id, now - self.since, why,
                )  # fmt: skip
            self.trouble = why
            return None
        self.trouble = why
        self.since = self._logged_at = now
        log.error(
            "worker %s: %s; taking no tasks until it can be written (trying every %gs); "
            "results in hand are sent without it, tasks not started go back to the daemon",
            self.worker_id, why, JOURNAL_RETRY,
        )  # fmt: skip
        return False
