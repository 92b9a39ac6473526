"""`martinet top`: a live view of the daemon in the terminal, redrawn in place every
--every seconds: its queues (ready, running, the oldest wait), its workers (slots, what
they hold, when last heard), the running tasks with their progress bars, and the
tasks that died last. q or Ctrl-C quits; `--once` prints one frame and exits (for a pipe or
a script, and what it does when stdout is no terminal).

Plain ANSI escape codes and the standard library's terminal modes: no dependency, and
nothing to install for an operator on a server. A frame is five requests to the daemon,
as a client makes them (reads: a short turn each, no write)."""

from __future__ import annotations

import argparse
import os
import select
import shutil
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any

from martinet.cli.admin import WORKERS_HEADER, worker_line
from martinet.errors import MartinetError

if TYPE_CHECKING:
    from martinet.api import Martinet

RUNNING_SHOWN = 15  # running tasks in a frame at most
FAILURES_SHOWN = 5
BAR = 20  # a progress bar's width, in characters
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen
HIDE, SHOW = "\x1b[?25l", "\x1b[?25h"


def frame(m: Martinet, width: int, now: float) -> list[str]:
    """One frame's lines, at most `width` characters each."""
    queues, workers = m.queues(), m.workers()
    running = m.search(status="running", limit=RUNNING_SHOWN + 1).items
    failures = m.search(status="dead", limit=FAILURES_SHOWN, sort="finished").items
    ping = m.ping()
    lines = [
        f"martinet top: daemon {ping.get('epoch')}, {len(workers)} worker(s), "
        f"database {'ok' if not ping.get('database') else 'FAILING: ' + ping['database'].get('error', '?')}"
        f"   {datetime.fromtimestamp(now).strftime('%H:%M:%S')}   (q quits)",
        "",
        f"{'QUEUE':<20} {'READY':>7} {'RUNNING':>7} {'SCHEDULED':>9} {'DEAD':>6} {'OLDEST WAIT':>11}",
    ]
    for q in queues:
        counts = q["counts"]
        oldest = q["oldest_waiting_seconds"]
        paused = "  paused" if q["paused"] else ""
        lines.append(
            f"{q['name'][:20]:<20} {counts.get('queued', 0):>7} {q['running']:>7} {counts.get('scheduled', 0):>9} "
            f"{counts.get('dead', 0):>6} {_seconds(oldest):>11}{paused}"
        )
    lines += ["", WORKERS_HEADER, *map(worker_line, workers)]
    if not workers:
        lines.append("(no worker connected)")
    lines += ["", "RUNNING"]
    for task in running[:RUNNING_SHOWN]:
        lines.append(
            f"{task['id']:>8} {task['name'][:24]:<24} {bar(task.get('progress'))} {task.get('progress_message') or ''}"
        )
    if len(running) > RUNNING_SHOWN:
        lines.append("         ... and more (martinet list --status running)")
    if not running:
        lines.append("(none)")
    lines += ["", "LATEST DEAD TASKS"]
    for task in failures:
        error = task.get("error") or {}
        lines.append(
            f"{task['id']:>8} {task['name'][:24]:<24} {task['status']:<7} attempt {task['attempt']}: "
            f"{error.get('type') or ''}: {error.get('message') or ''}"
        )
    if not failures:
        lines.append("(none)")
    return [line[:width] for line in lines]


def bar(progress: float | None) -> str:
    """[#######.............]  35%, or a blank bar when the task reports no progress."""
    if progress is None:
        return "[" + " " * BAR + "]     "
    done = max(0.0, min(1.0, float(progress)))
    filled = round(done * BAR)
    return f"[{'#' * filled}{'.' * (BAR - filled)}] {done * 100:3.0f}%"


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f}s"
    if value < 7200:
        return f"{value / 60:.0f}m"
    return f"{value / 3600:.1f}h"


def cmd_top(m: Martinet, args: argparse.Namespace) -> int:
    """`martinet top`: see the module."""
    if args.every <= 0:
        raise MartinetError(f"--every must be more than 0 seconds, got {args.every:g}")
    return run(m, args)


def run(m: Martinet, args: argparse.Namespace) -> int:
    """Redraw every `args.every` seconds until q, Ctrl-C (or one frame with --once)."""
    out = sys.stdout
    if args.once or not out.isatty():
        out.write("\n".join(frame(m, 200, time.time())) + "\n")
        return 0
    with _keys() as pressed:
        out.write(HIDE)
        try:
            while True:
                size = shutil.get_terminal_size()
                lines = frame(m, size.columns, time.time())[: size.lines - 1]
                out.write(CLEAR + "\n".join(lines) + "\n")
                out.flush()
                if pressed(args.every) in ("q", "Q"):
                    return 0
        finally:
            out.write(SHOW)
            out.flush()


@contextmanager
def _keys() -> Iterator[Any]:
    """A function that waits up to N seconds for a key and returns it ("" for none), with
    the terminal in cbreak mode meanwhile (keys come without Enter; restored after)."""
    if not sys.stdin.isatty():

        def no_keys(seconds: float) -> str:
            time.sleep(seconds)
            return ""

        yield no_keys
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def key(seconds: float) -> str:
        if select.select([fd], [], [], seconds)[0]:
            return os.read(fd, 1).decode(errors="replace")
        return ""

    try:
        yield key
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
