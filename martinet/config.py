"""Settings, in rising order of precedence: defaults < config file < environment < flags.

Every tunable lives in DEFAULTS with a comment saying why it has that value.
The config file is TOML (`martinet config --sample` prints every setting: sample.toml); each key may also be set
with an environment variable named MARTINET_<KEY> (MARTINET_DB, MARTINET_URL,
MARTINET_CLIENT_PORT, ...), and the CLI flags win over both.
"""

from __future__ import annotations

import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from martinet import logs, rules, when
from martinet.errors import BadInput, ConfigError
from martinet.files import refuse_if_others_read, refuse_if_others_write

ENV_PREFIX = "MARTINET_"
# What a [queues.NAME] table may set; a queue not in the file has the defaults
# (fifo, weight 1, no concurrency cap, no rate limit, not paused).
QUEUE_KEYS = ("order", "weight", "concurrency", "rate", "paused")
QUEUE_ORDERS = rules.QUEUE_ORDERS
MAX_QUEUE_NAME = rules.MAX_QUEUE_NAME


@dataclass(frozen=True)
class Settings:
    # Where tasks live. SQLite needs no server; a URL picks another backend.
    db: str = "sqlite:///martinet.db"
    # Loopback by default: nothing is exposed to the network unless asked.
    bind: str = "127.0.0.1"
    client_port: int = 8008
    worker_port: int = 8009
    status_port: int = 18009
    # Where workers find the daemon, and how many tasks each runs at once.
    connect: str = "127.0.0.1"
    concurrency: int = 4
    # Seconds a handler gets to unwind after its time limit before the worker abandons its thread.
    timeout_grace: float = 2.0
    # Where clients find the daemon's client socket.
    url: str = "tcp://127.0.0.1:8008"
    # A client that gets no answer in this many seconds raises DaemonUnavailable.
    timeout: float = 10.0
    # Heartbeats both ways every second: cheap, and a dead peer is seen in a few.
    heartbeat_interval: float = 1.0
    # A peer silent for this many intervals is gone (Paranoid Pirate uses 3-5).
    liveness: int = 3
    # A running task's lease; renewed by its worker's heartbeats long before it ends.
    lease: float = 30.0
    # The daemon ends an attempt itself (failed, TaskTimeout) when it has had no answer this
    # long after the task's time limit (its timeout): its worker is stuck, or lies, and
    # heartbeats alone would keep the lease for ever. Longer than a worker needs to report
    # its own timeout (timeout_grace, 2 s, then an outcome's trip and a heartbeat or two),
    # so a healthy worker always answers first. Keep it above the workers' timeout_grace.
    time_limit_grace: float = 10.0
    # Limits on what one request may carry, so one client cannot exhaust memory.
    max_payload: int = 1_048_576
    max_name_length: int = 200
    # Messages a second one connection may send to one socket (a second's worth at once);
    # more are refused: a request is told so. 0: no limit (server/budget.py).
    peer_rate: int = 20_000
    # Connections open at once on the daemon's three sockets together; more are refused at
    # their handshake. 0: what the process's open-files limit leaves, with keys or
    # insecure_bind, and no bound on loopback without keys (server/loop.py).
    max_connections: int = 0
    # Failed attempts are retried with exponential backoff and full jitter.
    max_attempts: int = 3
    retry_base: float = 1.0
    retry_factor: float = 2.0
    retry_cap: float = 300.0
    # A task whose attempts were lost this many times (its worker died or went
    # silent running it) is stalled, so one poison task cannot take down the fleet.
    poison_after: int = 3
    # A task given back (martinet.Release) more often than this is stalled for an operator.
    max_releases: int = 10
    # Retention: finished tasks (succeeded, cancelled) and dead ones are deleted, with
    # their attempts, this long after they finished ("0" or "never": kept for good).
    # A week answers "what happened last night"; dead tasks wait longer for an operator.
    keep_finished: str = "7 days"
    keep_dead: str = "30 days"
    # Events (progress, attempt ends, malformed messages) are deleted this long after they
    # happened: a client that was away for less catches up on what it missed.
    keep_events: str = "1 day"
    # The shortest interval a schedule may have, in seconds (a cron's seconds field too):
    # each run is a task stored in the database, so "every 0.001 seconds" made a thousand
    # rows a second. Anything faster belongs in a loop inside one task.
    min_interval: float = 1.0
    # The zone of naive datetimes and wall-clock expressions ("tomorrow at 9am").
    timezone: str = "UTC"
    log_level: str = "INFO"
    # "text": a line a record; "json": one JSON object a line, with a task's id, name,
    # attempt and worker as fields when the line is about one (martinet/logs.py).
    log_format: str = "text"
    # Prometheus metrics and health checks (/metrics, /healthz, /readyz) on HOST:PORT, such
    # as 127.0.0.1:9108; empty: none (server/metrics.py). Port 0: any free one.
    metrics: str = ""
    # CURVE keys (keys.py; docs/security.md). The daemon's: its key pair (a NAME.key_secret
    # file; "": no keys, plain text, and it binds loopback only) and the public keys it
    # allows in each role (NAME.key files, folders of them, or Z85 keys; comma-separated).
    server_secret_key: str = ""
    worker_keys: str = ""
    client_keys: str = ""
    admin_keys: str = ""
    # Bind another address than loopback without keys: anyone who reaches the ports may
    # then submit, read, change and run tasks. Said at every start.
    insecure_bind: bool = False
    # A client's or a worker's: its own key pair (NAME.key_secret) and the daemon's public
    # key (NAME.key or Z85). Both or neither.
    key_file: str = ""
    server_key: str = ""
    # A worker's health checks (/healthz, /readyz) on HOST:PORT, for an orchestrator; "": none.
    health: str = ""
    # Per-queue settings from the config file's [queues.NAME] tables:
    # {name: {"order": "fifo", "weight": 2, "concurrency": 8, "rate": "100/minute", "paused": False}},
    # only the keys the file sets. Not read from the environment.
    queues: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Task names' fleet-wide limits from the config file's [task_limits.NAME] tables:
    # {name: {"concurrency": 2, "rate": "10/second"}}, applied at every start (a key left
    # out: no such limit). Also set by admins (`martinet limits set`); never by a worker.
    task_limits: dict[str, dict[str, Any]] = field(default_factory=dict)

    def with_overrides(self, values: dict[str, Any]) -> Settings:
        """A copy with the given keys replaced (None values are ignored)."""
        current = {f.name: getattr(self, f.name) for f in fields(self)}
        for key, value in values.items():
            if value is None:
                continue
            if key not in current:
                raise ConfigError(f"unknown setting {key!r}; known settings: {', '.join(current)}")
            if key == "queues":
                current[key] = check_queues(value)
            elif key == "task_limits":
                current[key] = check_task_limits(value)
            else:
                current[key] = _coerce(key, value, type(getattr(self, key)))
        return Settings(**current)


def _coerce(key: str, value: Any, kind: type) -> Any:
    try:
        if kind is bool:
            return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes")
        # int(True) is 1 and int(2.5) is 2: refuse rather than silently change the value.
        if isinstance(value, bool) or (kind is int and isinstance(value, float) and not value.is_integer()):
            raise ValueError(value)
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"setting {key!r} must be a {kind.__name__}, got {value!r}") from None


def check_queue_name(name: Any) -> str:
    """A queue name given as a setting or a flag (rules.check_queue_name, as a ConfigError)."""
    return rules.check_queue_name(name, ConfigError)


def check_queues(queues: Any) -> dict[str, dict[str, Any]]:
    """The [queues.NAME] tables, checked: a new dict of queue name -> its settings."""
    if not isinstance(queues, dict):
        raise ConfigError(f"setting 'queues' must be a table of queues like [queues.images], got {queues!r}")
    out: dict[str, dict[str, Any]] = {}
    for name, table in queues.items():
        check_queue_name(name)
        if not isinstance(table, dict):
            raise ConfigError(f"queue {name!r} must be a table like [queues.{name}], got {table!r}")
        out[name] = {key: _queue_value(name, key, value) for key, value in table.items()}
    return out


def check_task_limits(limits: Any) -> dict[str, dict[str, Any]]:
    """The [task_limits.NAME] tables, checked: a new dict of task name -> concurrency and rate."""
    if not isinstance(limits, dict):
        raise ConfigError(
            f"setting 'task_limits' must be a table of task names like [task_limits.charge], got {limits!r}"
        )
    out: dict[str, dict[str, Any]] = {}
    for name, table in limits.items():
        if not isinstance(table, dict):
            raise ConfigError(f"limits of {name!r} must be a table like [task_limits.{name}], got {table!r}")
        unknown = set(table) - {"concurrency", "rate"}
        if unknown:
            raise ConfigError(
                f"unknown setting {sorted(unknown)[0]!r} in [task_limits.{name}]; a task name's limits are "
                "concurrency and rate"
            )
        out[name] = {key: _queue_value(name, key, value, "limits of") for key, value in table.items()}
    return out


def _queue_value(queue: str, key: str, value: Any, kind: str = "queue") -> Any:
    where = f"{kind} {queue!r} setting {key!r}"
    if key == "order":
        if value not in QUEUE_ORDERS:
            raise ConfigError(f'{where} must be "fifo" or "random", got {value!r}')
    elif key in ("weight", "concurrency"):
        rules.check_count(value, where, most=rules.MAX_QUEUE_LIMIT, error=ConfigError)
    elif key == "rate":
        try:
            when.parse_rate(value)
        except BadInput as exc:
            raise ConfigError(f"{where}: {exc}") from None
    elif key == "paused":
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
    else:
        raise ConfigError(f"unknown setting {key!r} in queue {queue!r}; a queue has {', '.join(QUEUE_KEYS)}")
    return value


def as_toml(settings: Settings) -> str:
    """The settings as a TOML file sets them (read_file reads it back the same), the
    database URL's password masked."""
    lines, tables = [], []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if isinstance(value, dict):
            tables += [f"\n[{f.name}.{name}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in table.items())
                       for name, table in value.items()]  # fmt: skip
        else:
            lines.append(f"{f.name} = {_toml(logs.mask(value) if f.name == 'db' else value)}\n")
    return "".join(lines) + "".join(tables)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def read_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a TOML config file into a flat dict of settings.

    Sections only group keys, except the top-level [queues] and [task_limits] tables:
    their tables ([queues.images], [task_limits.charge]) are per-queue settings and task
    names' limits, kept whole as the `queues` and `task_limits` settings.
    """
    try:
        refuse_if_others_write(path, "config file")
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if key in ("queues", "task_limits") and isinstance(value, dict):
            flat[key] = value  # checked by check_queues, check_task_limits when applied
        elif isinstance(value, dict):  # sections only group keys for the reader
            flat.update(value)
        else:
            flat[key] = value
    return flat


def read_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    if environ is None:
        environ = os.environ
    names = {f.name for f in fields(Settings)} - {"queues", "task_limits"}  # from the file only
    out = {}
    for var, value in environ.items():
        if var.startswith(ENV_PREFIX):
            key = var[len(ENV_PREFIX) :].lower()
            if key in names:
                out[key] = value
    return out


def load(
    config_file: str | Path | None = None,
    flags: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
) -> Settings:
    """Settings from defaults, then the config file, then MARTINET_* variables, then flags."""
    settings = Settings()
    if config_file is None:
        config_file = (os.environ if environ is None else environ).get("MARTINET_CONFIG")
    if config_file:
        settings = settings.with_overrides(read_file(config_file))
    settings = settings.with_overrides(read_env(environ))
    settings = settings.with_overrides(flags or {})
    if settings.db.startswith("@"):  # the URL in a file: no password on a command line
        settings = settings.with_overrides({"db": read_db_file(settings.db[1:])})
    return check(settings)


def read_db_file(path: str) -> str:
    """The database URL kept in a file (`--db @FILE`, `db = "@FILE"`, MARTINET_DB=@FILE),
    so that its password is on no command line and in no environment: its first line.
    Refused when others may write it, or read it (it holds a password)."""
    try:
        refuse_if_others_read(path, "database URL file", "the database's password")
        with open(path, encoding="utf-8") as fh:
            url = fh.readline().strip()
    except OSError as exc:
        raise ConfigError(f"cannot read the database URL file {path}: {exc.strerror or exc}") from None
    if not url:
        raise ConfigError(f"database URL file {path} is empty; write the URL on its first line")
    return url


def keep_seconds(key: str, value: Any) -> float | None:
    """A retention setting in seconds; None for "never" (or 0, "off", "none"): keep for good."""
    if str(value).strip().lower() in ("never", "off", "none", "false", ""):
        return None
    try:
        seconds = when.parse_age(value)
    except BadInput as exc:
        raise ConfigError(f"setting {key!r}: {exc}") from None
    return seconds or None


_HOST = re.compile(r"\[[0-9a-fA-F:.]+\]|[A-Za-z0-9_.\-]+")


def _address(value: str, key: str, example: str) -> tuple[str, str, int | None]:
    """(scheme or "", host, port or None) of "tcp://host:port", "host:port" or "host";
    ConfigError saying what a good one looks like."""
    text = value.strip() if isinstance(value, str) else ""
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    m = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?:(:)(.*))?", rest)
    host, colon, port_text = m.groups("") if m else ("", "", "")
    port: int | None = None
    if colon:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ConfigError(
                f"setting {key!r}: {value!r} has a bad port {port_text!r} (1 to 65535); write {example}"
            )
        port = int(port_text)
    if scheme not in ("", "tcp") or not _HOST.fullmatch(host):
        raise ConfigError(f"setting {key!r}: cannot read {value!r} as an address; write {example}")
    return scheme, host, port


def daemons(value: str) -> list[str]:
    """The addresses of a `url` or `connect` that lists several daemons on one database,
    comma-separated ("tcp://a:8008,tcp://b:8008"; "host-a,host-b"); one is a list of one."""
    return [one.strip() for one in value.split(",") if one.strip()] or [value]


def hosts_of(url: str) -> str:
    """The hosts of a client URL (or of several, comma-separated), as a worker's `connect`
    names them; ConfigError when one is not an address."""
    return ",".join(_address(one, "url", "tcp://HOST:PORT")[1] for one in daemons(url))


def check_url(url: str, key: str = "url") -> str:
    """A client URL, tcp://host:port (the scheme and the port are not optional), or
    several, comma-separated: daemons on one database, tried in turn (client.Client)."""
    for one in daemons(url):
        scheme, host, port = _address(one, key, "tcp://HOST:PORT, like tcp://127.0.0.1:8008")
        if scheme != "tcp" or port is None:
            fixed = f"tcp://{host}:{port or Settings.client_port}"
            missing = "no tcp:// in front" if scheme != "tcp" else "no port"
            raise ConfigError(f"setting {key!r}: {one!r} has {missing}; write {fixed!r}")
    return url


def worker_endpoint(settings: Settings) -> tuple[str, int, int]:
    """(host, worker port, status port) the worker connects to. `connect` is a host, or
    a URL as clients take it whose port is the daemon's worker port (tcp://host:8009):
    then the status port is that port plus the default distance between them (10000),
    unless a status_port other than the default is set. Several daemons on one database,
    comma-separated, listen on the same ports: their hosts come back comma-separated."""
    if "," in settings.connect:
        ends = [
            worker_endpoint(settings.with_overrides({"connect": one})) for one in daemons(settings.connect)
        ]
        if len({(w, s) for _h, w, s in ends}) > 1:
            raise ConfigError(
                f"setting 'connect' (--connect) {settings.connect}: the daemons of a list share their "
                "worker and status ports; name hosts, and the ports once (--worker-port, --status-port)"
            )
        return ",".join(h for h, _w, _s in ends), ends[0][1], ends[0][2]
    _scheme, host, port = _address(settings.connect, "connect", "a host, or tcp://HOST:WORKER_PORT")
    if port is None:
        return host, settings.worker_port, settings.status_port
    if port == settings.client_port:
        raise ConfigError(
            f"setting 'connect' (--connect) {settings.connect}: port {port} is the daemon's client port; a worker"
            f" connects to its worker port (tcp://{host}:{settings.worker_port} by default)"
        )
    if settings.worker_port not in (port, Settings.worker_port):
        raise ConfigError(
            f"setting 'connect' (--connect) {settings.connect} names worker port {port}, and the worker port is set"
            f" to {settings.worker_port}: give one of them"
        )
    status = settings.status_port
    if status == Settings.status_port:
        status = port + Settings.status_port - Settings.worker_port
    if status > 65535:
        raise ConfigError(
            f"setting 'connect' (--connect) {settings.connect}: give the status port too (--status-port)"
        )
    return host, port, status


def metrics_address(value: str) -> tuple[str, int] | None:
    """(host, port) of the `metrics` setting, or None when it is empty (no metrics)."""
    return parse_address(value, "metrics") if value else None


def parse_address(value: str, key: str) -> tuple[str, int]:
    """(host, port) of a HOST:PORT setting that an HTTP server binds (`metrics`, a
    worker's `health`); port 0: any free one."""
    example = "HOST:PORT, like 127.0.0.1:9108"
    head, _sep, tail = value.rpartition(":")
    if tail == "0" and head:
        scheme, host, _port = _address(head, key, example)
        port: int | None = 0
    else:
        scheme, host, port = _address(value, key, example)
    if scheme or port is None or not host:
        raise ConfigError(f"setting {key!r}: {value!r} is not HOST:PORT; write {example}")
    return host.strip("[]"), port


def check(settings: Settings) -> Settings:
    """Refuse values that would make the daemon or a worker misbehave."""
    s = settings
    for key in ("client_port", "worker_port", "status_port"):
        if not 0 <= getattr(s, key) <= 65535:
            raise ConfigError(f"setting {key!r} must be a port from 0 to 65535, got {getattr(s, key)}")
    for key in (
        "timeout",
        "heartbeat_interval",
        "lease",
        "retry_base",
        "retry_factor",
        "retry_cap",
        "timeout_grace",
        "time_limit_grace",
        "min_interval",
    ):
        rules.check_seconds(getattr(s, key), f"setting {key!r}", ConfigError)
    for key in (
        "liveness",
        "max_payload",
        "max_name_length",
        "max_attempts",
        "concurrency",
        "poison_after",
        "max_releases",
    ):
        rules.check_count(getattr(s, key), f"setting {key!r}", error=ConfigError)
    for key, zero in (("peer_rate", "no limit"), ("max_connections", "the open-files limit")):
        if getattr(s, key) != 0:
            rules.check_count(getattr(s, key), f"setting {key!r} (0: {zero})", error=ConfigError)
    for key in ("keep_finished", "keep_dead", "keep_events"):
        keep_seconds(key, getattr(s, key))
    check_url(s.url)
    metrics_address(s.metrics)
    if s.health:
        parse_address(s.health, "health")
    if s.log_format not in logs.FORMATS:
        raise ConfigError(
            f"setting 'log_format' must be one of {', '.join(logs.FORMATS)}, got {s.log_format!r}"
        )
    worker_endpoint(s)
    check_queues(s.queues)
    check_task_limits(s.task_limits)
    return s
