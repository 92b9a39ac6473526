"""Health checks over HTTP, for an orchestrator's probes: a small server on a thread of
its own (the standard library's, a thread a request), answering each path it is given
with 200 or 503 and a short JSON body saying why. The daemon serves its metrics beside
them (server/metrics.py); a worker serves only these (`martinet-worker --health`)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from martinet.errors import MartinetError

log = logging.getLogger("martinet")

HEALTHY_WITHIN = 10.0  # seconds (or 3 heartbeats, if longer): a loop that has not turned for longer is stuck
Check = Callable[[], tuple[bool, str]]  # (healthy, why)
App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]  # a WSGI application


def loop_turning(turned_at: Callable[[], float], within: Callable[[], float]) -> Check:
    """/healthz's check: the loop turned (its last turn, time.monotonic()) within so long."""

    def check() -> tuple[bool, str]:
        quiet = time.monotonic() - turned_at()
        return quiet <= within(), f"the loop last turned {quiet:.1f}s ago"

    return check


class HealthServer:
    def __init__(self, checks: dict[str, Check], other: App | None = None) -> None:
        self.checks = checks  # path -> check
        self.other = other  # what answers the other paths (404 without)
        self._server: WSGIServer | None = None

    def start(self, host: str, port: int, option: str, what: str = "health checks") -> int:
        """Serve `what` on host:port (0: a free port); returns the port. `option` names
        the setting to change when the port is taken."""
        try:
            server = make_server(host, port, self._app, server_class=_Server, handler_class=_Quiet)
        except OSError as exc:
            raise MartinetError(
                f"cannot serve {what} on {host}:{port}: {exc.strerror or exc}; choose another with {option}"
            ) from None
        self._server = server
        threading.Thread(target=server.serve_forever, name="martinet-health", daemon=True).start()
        bound: int = server.server_address[1]
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def _app(self, environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        check = self.checks.get(environ.get("PATH_INFO", ""))
        if check is not None:
            ok, why = check()
            start("200 OK" if ok else "503 Service Unavailable", [("Content-Type", "application/json")])
            return [json.dumps({"ok": ok, "why": why}).encode()]
        if self.other is not None:
            return self.other(environ, start)
        start("404 Not Found", [("Content-Type", "application/json")])
        return [json.dumps({"ok": False, "why": f"try {', '.join(self.checks)}"}).encode()]


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # a probe every few seconds: not a log line each
        pass
