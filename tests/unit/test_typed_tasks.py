"""@martinet.task makes a typed handle: its execute, schedule and every take the handler's
own parameters (checked before anything is sent, and by mypy at the call site), and it
still calls the handler when called."""

from __future__ import annotations

import pytest

import martinet
from martinet.testing import Harness
from tests.harness import ROOT
from tests.unit.test_types import mypy


@martinet.task("typed.add")
def add(task: object, a: int, b: int = 0) -> int:
    return a + b


@martinet.task("typed.tag")
def tag(task: object, label: str, **extra: object) -> dict[str, object]:
    return {"label": label, **extra}


def test_a_handle_submits_with_the_handlers_own_parameters(make_martinet_harness, monkeypatch):
    h: Harness = make_martinet_harness(handlers=["typed.add", "typed.tag"])
    monkeypatch.setattr(martinet, "_default", h.m)  # the module's handle (martinet.connect's)
    first = add.execute(2, b=40)
    second = add.options(queue="math", priority=5).execute(a=1)
    third = tag.on(h.m).execute("x", colour="red")  # **extra go as args too
    assert add(None, 1, 2) == 3  # calling it calls the handler
    ended = {t["id"]: t for t in h.drain()}
    assert (ended[first]["result"], ended[second]["result"]) == (42, 1)
    assert (ended[second]["queue"], ended[second]["priority"]) == ("math", 5)
    assert ended[third]["result"] == {"label": "x", "colour": "red"}
    later = add.schedule("in 1 hour", 5, 5)
    sid = add.options(key="hourly-add").every("1 hour", a=1, b=1)
    assert h.m.get(later)["status"] == "scheduled" and h.m.show(sid)["args"] == {"a": 1, "b": 1}
    with pytest.raises(martinet.BadInput, match="task 'typed.add': too many positional arguments"):
        add.execute(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(martinet.BadInput, match="missing a required argument: 'a'"):
        add.execute()  # type: ignore[call-arg]


@pytest.mark.timeout(180)
def test_mypy_checks_a_call_site_against_the_handler(tmp_path):
    code = tmp_path / "calls.py"
    code.write_text(
        "import martinet\n\n\n"
        "@martinet.task('resize')\n"
        "def resize(task: object, image_id: int, width: int = 800) -> str:\n"
        "    return 'ok'\n\n\n"
        "resize.execute(7, width=640)\n"
        "resize.options(queue='images').schedule('in 1 hour', image_id=8)\n"
        "resize.execute('seven')\n"  # a str for an int
        "resize.every('1 hour', 7, height=3)\n"  # no such parameter
    )
    _report, errors = mypy("--strict", "--follow-imports=silent", str(code), cwd=tmp_path, MYPYPATH=str(ROOT))
    assert len(errors) == 2, errors
    assert 'Argument 1 to "execute" of "TaskHandle" has incompatible type "str"; expected "int"' in errors[0]
    assert 'Unexpected keyword argument "height"' in errors[1]
