"""`martinet web`: the dashboard's pages, actions and guards, through Starlette's test
client, against an embedded daemon with worker threads (tests/live.py)."""

from __future__ import annotations

import json
import re
import threading
import time

import pytest
from starlette.testclient import TestClient

import martinet
from martinet import cli
from martinet.web import app as web_app
from martinet.web.app import WebOptions, create_app
from tests.harness import wait_for
from tests.live import HANDLERS

released = threading.Event()


def hold(task, note="x"):
    """Says it is 40 % done, then waits (bounded) until the test lets it go."""
    task.progress(0.4, "halfway")
    released.wait(20)
    return "held"


@pytest.fixture
def site(make_live, sqlite_url):
    """A daemon with a dead task, a held one at 40 % and a succeeded one, and a dashboard
    factory: site(**options) -> (TestClient, live, ids)."""
    released.clear()
    live = make_live(sqlite_url)
    live.worker(handlers={**HANDLERS, "hold": hold}, worker_id="w-web")
    m = live.m
    ids = {"dead": m.execute({"name": "boom", "max_attempts": 1}), "done": m.execute("add", {"a": 2, "b": 3})}
    with pytest.raises(martinet.TaskFailed):
        m.wait(ids["dead"], timeout=20)
    m.wait(ids["done"], timeout=20)
    ids["held"] = m.execute("hold", {"note": "secret-token-123"})
    wait_for(lambda: m.get(ids["held"])["progress"] == 0.4, what="the held task's progress")
    clients = []

    def make(**options):
        client = TestClient(create_app(m, WebOptions(**options)), base_url="http://127.0.0.1")
        clients.append(client)
        return client, live, ids

    yield make
    released.set()
    for client in clients:
        client.close()


def csrf_of(html: str) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', html).group(1)


def test_the_overview_shows_queues_running_progress_workers_and_the_dead(site):
    client, _live, ids = site()
    page = client.get("/")
    assert page.status_code == 200
    html = page.text
    assert f'id="progress-{ids["held"]}"' in html and 'style="width: 40%"' in html and "halfway" in html
    assert "w-web" in html and f'href="/tasks/{ids["dead"]}"' in html and "ValueError: kaboom" in html


def test_a_task_s_page_has_its_args_result_error_traceback_and_attempts(site):
    client, _live, ids = site()
    dead = client.get(f"/tasks/{ids['dead']}").text
    assert "ValueError" in dead and "kaboom" in dead and "Traceback" in dead and "failed" in dead
    done = client.get(f"/tasks/{ids['done']}").text
    assert "&#34;a&#34;: 2" in done or '"a": 2' in done.replace("&#34;", '"')
    assert ">5<" in done.replace("\n", "").replace(" ", "") or "5</pre>" in done
    held = client.get(f"/tasks/{ids['held']}").text
    assert "secret-token-123" in held
    hidden, *_ = site(hide_args=True)
    page = hidden.get(f"/tasks/{ids['held']}").text
    assert "secret-token-123" not in page and "hidden (--hide-args)" in page
    assert client.get("/tasks/999999").status_code == 404


def test_the_task_list_filters_and_pages_with_cursors(site, monkeypatch):
    client, _live, ids = site()
    dead = client.get("/tasks", params={"status": "dead"}).text
    assert f'href="/tasks/{ids["dead"]}"' in dead and f'href="/tasks/{ids["done"]}"' not in dead
    monkeypatch.setattr(web_app, "PAGE", 2)
    first = client.get("/tasks").text
    more = re.search(r'href="/tasks(\?[^"]+)" rel="next"', first).group(1).replace("&amp;", "&")
    second = client.get("/tasks" + more).text
    shown = set(re.findall(r'href="/tasks/(\d+)"', first)) | set(re.findall(r'href="/tasks/(\d+)"', second))
    assert shown == {str(i) for i in ids.values()}


def test_actions_ask_a_csrf_token_and_say_what_they_did(site):
    client, live, ids = site()
    page = client.get(f"/tasks/{ids['dead']}").text
    assert 'onsubmit="return confirm(' in page
    refused = client.post(f"/tasks/{ids['dead']}/retry", data={"csrf": "forged"}, follow_redirects=False)
    assert refused.status_code == 403 and live.m.get(ids["dead"])["status"] == "dead"
    done = client.post(f"/tasks/{ids['dead']}/retry", data={"csrf": csrf_of(page)}, follow_redirects=True)
    assert done.status_code == 200 and f"task {ids['dead']} will run again" in done.text
    wait_for(lambda: live.m.get(ids["dead"])["attempt"] == 2, what="the retried task's second attempt")
    queues = client.get("/queues").text
    client.post("/queues/default/pause", data={"csrf": csrf_of(queues)})
    assert [q["paused"] for q in live.m.queues() if q["name"] == "default"] == [True]
    resumed = client.post("/queues/default/resume", data={"csrf": csrf_of(queues)}, follow_redirects=True)
    assert "queue default resumed" in resumed.text


def test_read_only_offers_and_takes_no_action(site):
    client, live, ids = site(read_only=True)
    page = client.get(f"/tasks/{ids['dead']}").text
    assert '<form method="post"' not in page and "read-only" in page
    client.cookies.set(web_app.CSRF_COOKIE, "c")
    assert client.post(f"/tasks/{ids['dead']}/retry", data={"csrf": "c"}).status_code == 403
    assert live.m.get(ids["dead"])["status"] == "dead"


def test_a_token_guards_every_page_and_is_kept_in_a_cookie(site):
    client, _live, _ids = site(token="s3cret")
    assert client.get("/").status_code == 401
    assert client.get("/?token=wrong").status_code == 401
    entered = client.get("/?token=s3cret", follow_redirects=False)
    assert entered.status_code == 303 and "token" not in entered.headers["location"]
    assert client.get("/").status_code == 200  # the cookie
    bare, *_ = site(token="s3cret")
    assert bare.get("/workers", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_live_streams_what_changed_task_by_task(site):
    client, live, ids = site()
    with client.stream("GET", "/live") as stream:
        lines = stream.iter_lines()
        assert next(lines).startswith(": connected")
        tid = live.m.execute("steps", {"n": 2})
        seen: dict = {}
        deadline = time.monotonic() + 20  # (a line comes at least every 15 s: a keep-alive)
        for line in lines:
            assert time.monotonic() < deadline, seen
            if line.startswith("data: "):
                for item in json.loads(line[6:]):
                    seen.setdefault(item["id"], {}).update(item)
            if seen.get(tid, {}).get("status") == "succeeded":
                break
    assert seen[tid]["progress"] == 1.0 and seen[tid]["message"] == "step 2 of 2"


def test_web_refuses_an_open_address_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("MARTINET_WEB_TOKEN", raising=False)
    assert cli.main(["web", "--bind", "0.0.0.0:8010"]) == 1
    assert "would serve 0.0.0.0 without a token" in capsys.readouterr().err


def test_a_task_s_page_shows_what_it_waits_on_and_what_waits_on_it(site):
    client, live, ids = site()
    child = live.m.execute("add", {"a": 1, "b": 1}, after=[ids["done"]])
    live.m.wait(child, timeout=20)
    parent_page = client.get(f"/tasks/{ids['done']}").text
    assert "waited on by" in parent_page and f'href="/tasks/{child}"' in parent_page
    child_page = client.get(f"/tasks/{child}").text
    assert "waits on" in child_page and f'href="/tasks/{ids["done"]}"' in child_page
    assert live.m.show(child)["parents"] == [{"id": ids["done"], "name": "add", "status": "succeeded"}]


def test_schedules_show_their_next_five_due_times_and_queues_can_be_changed(site):
    client, live, _ids = site()
    live.m.every("1 hour", "add", {"a": 1, "b": 2})
    page = client.get("/schedules").text
    assert page.count("<br>") >= 5  # its next five due times
    queues = client.get("/queues").text
    changed = client.post("/queues/default/set", data={"csrf": csrf_of(queues), "concurrency": "3", "rate": "5/second"},
                          follow_redirects=True)  # fmt: skip
    assert "queue default: concurrency 3, rate 5/second" in changed.text
    (default,) = [q for q in live.m.queues() if q["name"] == "default"]
    assert default["concurrency"] == 3 and default["rate"] == "5/1s"
    refused = client.post("/queues/default/set", data={"csrf": csrf_of(queues), "weight": "heavy"},
                          follow_redirects=True)  # fmt: skip
    assert "refused: weight must be a whole number, got &#39;heavy&#39;" in refused.text


def test_every_dead_task_that_matches_is_retried_at_once(site):
    client, live, ids = site()
    other = live.m.execute({"name": "flaky", "max_attempts": 1}, {"succeed_on": 5})
    with pytest.raises(martinet.TaskFailed):
        live.m.wait(other, timeout=20)
    page = client.get("/tasks", params={"status": "dead", "name": "boom"}).text
    assert "Retry all dead tasks that match" in page
    done = client.post("/dead/retry", data={"csrf": csrf_of(page), "name": "boom"}, follow_redirects=True)
    assert "1 dead task(s) will run again" in done.text
    wait_for(lambda: live.m.get(ids["dead"])["attempt"] == 2, what="the boom task's second attempt")
    assert live.m.get(other)["status"] == "dead"  # not a boom: left alone


def test_the_overview_charts_the_tasks_finished_each_minute(site):
    client, live, _ids = site()
    minutes = live.m.finished_per_minute()
    assert len(minutes) == 60 and minutes[-1]["minute"] >= minutes[0]["minute"]
    assert sum(m["succeeded"] for m in minutes) == 1 and sum(m["dead"] for m in minutes) == 1  # done, dead
    html = client.get("/").text
    assert "Finished per minute, the last hour (2)" in html
    labels = re.findall(r"<title>\d\d:\d\d UTC: (\d+) succeeded, (\d+) dead, (\d+) cancelled</title>", html)
    assert len(labels) == 60 and [sum(int(n[i]) for n in labels) for i in range(3)] == [1, 1, 0]


def test_the_minutes_count_committed_ends_and_forget_after_an_hour():
    from martinet.server.finished import FinishedPerMinute

    counts = FinishedPerMinute()
    counts.stage(
        [
            {"event": "succeeded", "id": 1, "status": "succeeded"},
            {"event": "failed", "id": 2, "status": "failed"},
        ]
    )
    counts.commit(600.0)
    counts.stage([{"event": "dead", "id": 3, "status": "dead"}])
    counts.drop()  # rolled back: never happened
    counts.stage([{"event": "cancelled", "id": 4, "status": "cancelled"}])
    counts.commit(670.0)  # the next minute
    hour = counts.last_hour(680.0)
    assert hour[-1] == {"minute": "1970-01-01T00:11:00.000+00:00", "succeeded": 0, "dead": 0, "cancelled": 1}
    assert hour[-2]["succeeded"] == 1 and sum(m["dead"] for m in hour) == 0
    counts.stage([{"event": "succeeded", "id": 5, "status": "succeeded"}])
    counts.commit(670.0 + 3600)
    assert sorted(counts.minutes) == [71]  # an hour later, the old minutes are gone


def test_the_task_list_finds_tasks_by_a_payload_field_and_says_what_is_wrong(site):
    client, _live, ids = site()
    found = client.get("/tasks", params={"where": "a=2"}).text
    assert f'href="/tasks/{ids["done"]}"' in found and f'href="/tasks/{ids["held"]}"' not in found
    bad = client.get("/tasks", params={"where": "nothing"})
    assert bad.status_code == 400 and "must look like FIELD=VALUE" in bad.text


def test_a_task_s_latest_events_are_on_its_page_and_in_show(site):
    client, live, ids = site()
    tid = live.m.execute("steps", {"n": 2})
    live.m.wait(tid, timeout=20)
    events = live.m.show(tid)["events"]
    assert [e["event"] for e in events] == ["progress", "progress", "succeeded"]
    assert events[0]["progress"] == 0.5 and events[0]["event_id"] < events[-1]["event_id"]
    page = client.get(f"/tasks/{tid}").text
    assert "Events (the latest 3)" in page and "50% step 1 of 2" in page


def test_a_stalled_task_is_released_back_to_the_queue(site):
    client, live, _ids = site()
    later = live.m.schedule("in 1 hour", "add", {"a": 4, "b": 4})
    page = client.get(f"/tasks/{later}").text
    client.post(f"/tasks/{later}/stall", data={"csrf": csrf_of(page)})
    stalled = client.get(f"/tasks/{later}").text
    assert live.m.get(later)["status"] == "stalled" and ">Release<" in stalled and ">Retry<" not in stalled
    done = client.post(f"/tasks/{later}/release", data={"csrf": csrf_of(stalled)}, follow_redirects=True)
    assert f"task {later} released: back to the queue" in done.text
    assert live.m.wait(later, timeout=20) == 8  # released now, not in an hour
