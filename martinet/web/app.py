"""The dashboard's pages and actions, a Starlette app that talks to the daemon as a client
does (martinet.Martinet: every read and action is a request to the daemon, which stays
the only writer of the database).

- Pages: the overview (queues by state, workers, running tasks with their progress,
  the latest dead tasks), tasks (the filters and cursors of `martinet list`), a task
  (args, result, error and traceback, every attempt, live progress), workers, queues
  and schedules.
- Actions: retry, revoke, stall and release (a stalled task, back to the queue) a task;
  retry every dead task that matches a filter; pause, resume and change a queue; pause
  and resume a schedule. Each
  is a POST from a form that asks to confirm, checked against a CSRF token (a random
  value in a cookie and in the form, which another site can read neither of), and
  answered by a redirect to the page with a line saying what it did.
- Live: /live streams what changed (server-sent events): the daemon's events, folded
  every FLUSH_EVERY seconds into one message, the latest progress, message and state of
  each task that changed; the pages' script moves progress bars and states with it. A
  drain sends thousands of events a second: sent one by one to each page, they cost
  the machine's cores a third of the drain (bench.py web).
- Safe by default: on a loopback address it serves anyone on this host; on any other
  one it needs a token (`--token`), given once as ?token= (kept in a cookie) or as a
  bearer header. `read_only` hides and refuses the actions; `hide_args` shows no task's
  args or result (they may hold secrets).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import secrets
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from martinet.api import Martinet
from martinet.errors import BadInput, MartinetError, TaskNotFound
from martinet.query import parse_where
from martinet.states import TaskState

log = logging.getLogger("martinet.web")

HERE = Path(__file__).parent
PAGE = 50  # tasks a page
SCHEDULES_SHOWN = 100  # schedules on their page (each read with its next due times)
RETRY_AT_MOST = 1000  # dead tasks one "retry all" retries
FLUSH_EVERY = 0.25  # seconds between two messages of /live
TOKEN_COOKIE, CSRF_COOKIE = "martinet_token", "martinet_csrf"
STATES = tuple(state.value for state in TaskState)  # the list's filter, in their order


@dataclass(frozen=True)
class WebOptions:
    token: str | None = None  # required of every request when set
    read_only: bool = False  # no actions
    hide_args: bool = False  # no task's args or result shown


def create_app(m: Martinet, options: WebOptions | None = None) -> Starlette:
    """The dashboard of the daemon that `m` talks to."""
    web = _Web(m, options or WebOptions())
    routes = [
        Route("/", web.overview),
        Route("/tasks", web.tasks),
        Route("/tasks/{task_id:int}", web.task),
        Route("/tasks/{task_id:int}/{action:str}", web.task_action, methods=["POST"]),
        Route("/dead/retry", web.retry_dead, methods=["POST"]),
        Route("/workers", web.workers),
        Route("/queues", web.queues),
        Route("/queues/{name:str}/{action:str}", web.queue_action, methods=["POST"]),
        Route("/schedules", web.schedules),
        Route("/schedules/{sid:str}/{action:str}", web.schedule_action, methods=["POST"]),
        Route("/live", web.live),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        yield
        web.close()  # the event listener's thread

    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(_Guard, web=web)
    return app


class _Web:
    def __init__(self, m: Martinet, options: WebOptions) -> None:
        self.m, self.options = m, options
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape())
        self.env.filters["bar"] = lambda p: 0 if p is None else max(0, min(100, round(float(p) * 100)))
        self._listeners: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[str]]] = set()
        self._lock = threading.Lock()
        self._hooked = False
        self._changed: dict[int, dict[str, Any]] = {}  # task id -> its latest progress, message, state
        self._closing = threading.Event()

    # ---- pages -------------------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        def read() -> dict[str, Any]:
            return {
                "queues": self.m.queues(),
                "workers": self.m.workers(),
                "running": self.m.search(status="running", limit=20).items,
                "dead": self.m.search(status="dead", limit=10, sort="finished").items,
                "chart": chart(self.m.finished_per_minute()),
            }

        return await self._page(request, "overview.html", read)

    async def tasks(self, request: Request) -> Response:
        q = request.query_params
        filters = {key: q[key] for key in ("status", "name", "queue", "text", "where") if q.get(key)}

        def read() -> dict[str, Any]:
            search: dict[str, Any] = {k: v for k, v in filters.items() if k != "where"}
            if "where" in filters:  # a payload field: FIELD=VALUE, as `martinet list --where`
                field, value = parse_where(filters["where"])
                search["where"] = {field: value}
            page = self.m.search(limit=PAGE, after=q.get("after") or None, **search)
            more = None if page.next is None else "?" + urlencode({**filters, "after": page.next})
            return {"items": page.items, "filters": filters, "more": more, "states": STATES}

        return await self._page(request, "tasks.html", read)

    async def task(self, request: Request) -> Response:
        task_id = request.path_params["task_id"]
        return await self._page(request, "task.html", lambda: {"task": self.m.show(task_id)})

    async def workers(self, request: Request) -> Response:
        return await self._page(request, "workers.html", lambda: {"workers": self.m.workers()})

    async def queues(self, request: Request) -> Response:
        return await self._page(request, "queues.html", lambda: {"queues": self.m.queues()})

    async def schedules(self, request: Request) -> Response:
        def read() -> dict[str, Any]:  # each with its next five due times (show)
            return {"schedules": [self.m.show(s["id"]) for s in self.m.schedules()[:SCHEDULES_SHOWN]]}

        return await self._page(request, "schedules.html", read)

    async def _page(self, request: Request, template: str, read: Any) -> Response:
        try:
            data = await run_in_threadpool(read)
        except MartinetError as exc:  # the daemon's answer, or its silence, said on the page
            status = 404 if isinstance(exc, TaskNotFound) else 400 if isinstance(exc, BadInput) else 502
            return self._render(request, "error.html", {"error": str(exc)}, status=status)
        return self._render(request, template, data)

    def _render(self, request: Request, template: str, data: dict[str, Any], status: int = 200) -> Response:
        csrf = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(24)
        body = self.env.get_template(template).render(
            **data,
            options=self.options,
            csrf=csrf,
            done=request.query_params.get("done"),
            path=request.url.path,
        )
        response = HTMLResponse(body, status_code=status)
        if request.cookies.get(CSRF_COOKIE) != csrf:
            response.set_cookie(CSRF_COOKIE, csrf, httponly=True, samesite="strict")
        return response

    # ---- actions -----------------------------------------------------------------------

    async def task_action(self, request: Request) -> Response:
        task_id, action = request.path_params["task_id"], request.path_params["action"]
        calls = {
            "retry": (lambda: self.m.retry(task_id), f"task {task_id} will run again"),
            "release": (lambda: self.m.retry(task_id), f"task {task_id} released: back to the queue"),
            "revoke": (lambda: self.m.revoke(task_id), f"task {task_id} revoked"),
            "stall": (lambda: self.m.stall(task_id, "stalled from the dashboard"), f"task {task_id} stalled"),
        }
        return await self._act(request, calls.get(action), f"/tasks/{task_id}")

    async def queue_action(self, request: Request) -> Response:
        name, action = request.path_params["name"], request.path_params["action"]
        form = await request.form()
        changes = {
            k: str(form[k]).strip() for k in ("concurrency", "rate", "weight") if str(form.get(k, "")).strip()
        }

        def change() -> None:
            weight = changes.get("weight")
            concurrency: int | str | None = changes.get("concurrency")
            if isinstance(concurrency, str) and concurrency.lower() != "none":  # ("none" clears it)
                concurrency = _int(concurrency, "concurrency")
            self.m.set_queue(name, concurrency=concurrency, rate=changes.get("rate"),
                             weight=None if weight is None else _int(weight, "weight"))  # fmt: skip

        said = ", ".join(f"{k} {v}" for k, v in changes.items()) or "nothing to change"
        calls = {
            "pause": (lambda: self.m.pause_queue(name), f"queue {name} paused"),
            "resume": (lambda: self.m.resume_queue(name), f"queue {name} resumed"),
            "set": (change, f"queue {name}: {said}"),
        }
        return await self._act(request, calls.get(action), "/queues")

    async def retry_dead(self, request: Request) -> Response:
        """Every dead task that matches the list's filters (RETRY_AT_MOST at most), again."""
        form = await request.form()
        filters = {k: str(form[k]) for k in ("name", "queue", "text") if str(form.get(k, "")).strip()}

        def retry_all() -> str:
            done, after = 0, None
            while done < RETRY_AT_MOST:
                page = self.m.search(
                    status="dead", limit=min(PAGE, RETRY_AT_MOST - done), after=after, **filters
                )
                for task in page.items:
                    self.m.retry(task["id"])
                    done += 1
                after = page.next
                if after is None:
                    break
            return f"{done} dead task(s) will run again"

        return await self._act(request, (retry_all, ""), "/tasks?" + urlencode({"status": "dead", **filters}))

    async def schedule_action(self, request: Request) -> Response:
        sid, action = request.path_params["sid"], request.path_params["action"]
        calls = {
            "pause": (lambda: self.m.pause(sid), f"schedule {sid} paused"),
            "resume": (lambda: self.m.resume(sid), f"schedule {sid} resumed"),
        }
        return await self._act(request, calls.get(action), "/schedules")

    async def _act(self, request: Request, call: tuple[Any, str] | None, back: str) -> Response:
        """An action's POST: refused when read-only or without the form's CSRF token; else
        `call` = (what to do, what to say: or what it returns, when a str)."""
        if self.options.read_only:
            return JSONResponse({"error": "this dashboard is read-only (--read-only)"}, status_code=403)
        if call is None:
            return JSONResponse({"error": "no such action"}, status_code=404)
        form = await request.form()
        cookie = request.cookies.get(CSRF_COOKIE) or ""
        if not cookie or not hmac.compare_digest(str(form.get("csrf", "")), cookie):
            return JSONResponse(
                {"error": "the form's CSRF token is missing or wrong: reload the page"}, status_code=403
            )
        fn, message = call
        try:
            result = await run_in_threadpool(fn)
            if isinstance(result, str):
                message = result
        except MartinetError as exc:
            message = f"refused: {exc}"
        separator = "&" if "?" in back else "?"
        return RedirectResponse(f"{back}{separator}{urlencode({'done': message})}", status_code=303)

    # ---- live --------------------------------------------------------------------------

    async def live(self, request: Request) -> Response:
        """Server-sent events: a JSON list of the tasks that changed, each with its latest
        progress, message and state (see the module)."""
        queue: asyncio.Queue[str] = asyncio.Queue(maxsize=1000)
        entry = (asyncio.get_running_loop(), queue)
        with self._lock:
            self._listeners.add(entry)
            if not self._hooked:
                self.m.on("any", self._event)
                threading.Thread(target=self._flush, name="martinet-web-live", daemon=True).start()
                self._hooked = True

        async def stream() -> Any:
            try:
                yield ": connected\n\n"
                while True:
                    try:
                        data = await asyncio.wait_for(queue.get(), 15)
                    except TimeoutError:
                        yield ": keep-alive\n\n"  # (and a closed connection is noticed)
                        continue
                    yield f"data: {data}\n\n"
            finally:
                with self._lock:
                    self._listeners.discard(entry)

        return StreamingResponse(stream(), media_type="text/event-stream")

    def _event(self, event: dict[str, Any]) -> None:
        """An event from the daemon (the listener's thread): folded into its task's latest."""
        task_id = event.get("id")
        if not isinstance(task_id, int):
            return
        with self._lock:
            item = self._changed.setdefault(task_id, {"id": task_id})
            if event.get("event") == "progress":
                item["progress"], item["message"] = event.get("progress"), event.get("message")
            elif isinstance(event.get("status"), str):
                item["status"] = event["status"]

    def _flush(self) -> None:
        """Every FLUSH_EVERY seconds, what changed, in one message to every live page."""
        while not self._closing.wait(FLUSH_EVERY):
            with self._lock:
                changed, self._changed = self._changed, {}
                listeners = list(self._listeners)
            if changed and listeners:
                data = json.dumps(list(changed.values()), default=str)
                for loop, queue in listeners:
                    loop.call_soon_threadsafe(_offer, queue, data)

    def close(self) -> None:
        self._closing.set()
        self.m.stop_listening()


CHART_HEIGHT = 80  # pixels of the overview's chart; a bar a minute, 8 pixels wide


def chart(minutes: list[dict[str, Any]]) -> dict[str, Any]:
    """The overview's bars, one a minute: each minute's succeeded and dead-or-cancelled
    tasks, scaled to CHART_HEIGHT, with a label to hover."""
    top = max([m["succeeded"] + m["dead"] + m["cancelled"] for m in minutes] + [1])
    bars = []
    for i, m in enumerate(minutes):
        bad = m["dead"] + m["cancelled"]
        ok_h, bad_h = (round(CHART_HEIGHT * n / top) for n in (m["succeeded"], bad))
        label = f"{m['minute'][11:16]} UTC: {m['succeeded']} succeeded, {m['dead']} dead, {m['cancelled']} cancelled"
        bars.append({"x": i * 8, "ok": ok_h, "bad": bad_h, "label": label})
    total = sum(m["succeeded"] + m["dead"] + m["cancelled"] for m in minutes)
    return {"bars": bars, "top": top, "height": CHART_HEIGHT, "total": total}


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise MartinetError(f"{what} must be a whole number, got {text!r}") from None


def _offer(queue: asyncio.Queue[str], data: str) -> None:
    if not queue.full():  # a page that stopped reading misses events, and reloads to catch up
        queue.put_nowait(data)


class _Guard:
    """Every request carries the token when one is set (?token= once: then a cookie)."""

    def __init__(self, app: Any, web: _Web) -> None:
        self.app, self.web = app, web

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        token = self.web.options.token
        if scope["type"] != "http" or token is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope)
        given = request.query_params.get("token") or request.cookies.get(TOKEN_COOKIE) or ""
        bearer = request.headers.get("authorization", "")
        if bearer.lower().startswith("bearer "):
            given = bearer[7:]
        if not hmac.compare_digest(given, token):
            response: Response = JSONResponse(
                {"error": "this dashboard needs its token (?token=...)"}, status_code=401
            )
        elif request.query_params.get("token"):  # kept in a cookie, and out of the address bar
            response = RedirectResponse(request.url.remove_query_params("token"), status_code=303)
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="strict")
        else:
            await self.app(scope, receive, send)
            return
        await response(scope, receive, send)
