"""Steps and compositions the end-to-end tests of martinet.compose run in real workers."""

from __future__ import annotations

import time

import martinet

PAUSE = 0.05  # lets each step's progress report go out on its own


@martinet.task("fetch")
def fetch(task, url, rows=3):
    time.sleep(PAUSE)
    return [f"{url}#{i}" for i in range(rows)]  # a list: the next step gets it as one argument


def reshape(task, rows):
    """A plain function, not a registered task."""
    time.sleep(PAUSE)
    if any("bad" in row for row in rows):
        raise ValueError("bad row")
    return {"rows": rows, "count": len(rows)}  # a dict: the next step gets keyword arguments


@martinet.task("targz")
def targz(task, rows, count):
    time.sleep(PAUSE)
    return {"archive": f"{rows[0].split('#')[0]}.tar.gz", "count": count}


martinet.compose("download_and_archive", ["fetch", reshape, "targz"])


@martinet.task("note_run")
def note_run(task, marker):
    with open(marker, "a") as fh:
        fh.write(f"{task.attempt}\n")
    return {"marker": marker}


def wobble(task, marker):
    if task.attempt == 1:
        raise martinet.Retry(in_=0.1, message="not yet")
    return None  # None: the next step gets no arguments


def finish(task):
    return task.attempt


martinet.compose("again_from_the_top", ["note_run", wobble, finish])
