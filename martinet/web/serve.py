"""`martinet web`: the dashboard served by uvicorn, refusing an address beyond this host
without a token."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import os

from martinet.api import Martinet
from martinet.config import parse_address
from martinet.errors import ConfigError, MartinetError

log = logging.getLogger("martinet.web")


def cmd_web(m: Martinet, args: argparse.Namespace) -> int:
    try:
        import uvicorn

        from martinet.web.app import WebOptions, create_app
    except ImportError as exc:
        raise MartinetError(
            f"the dashboard needs its extra: pip install 'martinet[web]' ({exc.name} is missing)"
        ) from None
    host, port = parse_address(args.bind, "bind")
    token = args.token or os.environ.get("MARTINET_WEB_TOKEN") or None
    if token is None and not _loopback(host):
        raise ConfigError(
            f"the dashboard would serve {host} without a token: anyone who reaches it could read "
            "every task and act on them. Give --token (or MARTINET_WEB_TOKEN), or bind 127.0.0.1"
        )
    app = create_app(m, WebOptions(token=token, read_only=args.read_only, hide_args=args.hide_args))
    print(f"martinet web: http://{host}:{port}/ (the daemon at {m.client.url}); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
    return 0


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
