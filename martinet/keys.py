"""CURVE keys: making a pair, reading one, and the daemon's keyring of allowed keys by role.

A key pair is two files in ZeroMQ's certificate format (what `zmq.auth` reads):
NAME.key holds the public key, NAME.key_secret both keys and is readable by its owner
only. A public key can also be given as its 40 characters of Z85 text.

The daemon allows keys by role: workers (hello, tasks, outcomes and progress), clients
(submit and read) and admins (what clients do, and revoke, retry, prune, change queues,
limits and schedules). A role's keys come from files and folders of NAME.key files;
the keyring reads them again when they change (or on SIGHUP), so a key is added or
removed without a restart.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import zmq
import zmq.auth

from martinet.errors import ConfigError
from martinet.files import create_private, refuse_if_others_read, refuse_if_others_write
from martinet.logs import Z85

log = logging.getLogger("martinet.keys")

ROLES = ("worker", "client", "admin")
# Who may connect to each of the daemon's sockets: the handshake refuses the others.
SOCKET_ROLES = {"client": frozenset({"client", "admin"}), "worker": frozenset({"worker"}),
                "status": frozenset({"worker"})}  # fmt: skip
# Client requests only an admin's key may make (any other needs a client's or an admin's).
ADMIN_OPS = frozenset({
    "revoke", "retry", "stall", "update", "pause", "resume", "pause_queue", "resume_queue",
    "set_queue", "set_limit", "prune",
})  # fmt: skip
Z85_KEY = re.compile(rf"[{Z85}]{{40}}")  # a CURVE key as Z85 text
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


@dataclass(frozen=True)
class KeyPair:
    """A public and a secret CURVE key, as Z85 text (bytes, as pyzmq takes them)."""

    public: bytes
    secret: bytes


def new_pair(name: str, folder: str | os.PathLike = ".") -> tuple[Path, Path]:
    """Write NAME.key (the public key) and NAME.key_secret (both, its owner's only) in
    `folder`; refuse to replace either. Returns their paths."""
    if not _NAME.fullmatch(name):
        raise ConfigError(f"a key's name is letters, digits, '.', '_' and '-', up to 64, got {name!r}")
    folder = Path(folder)
    public_path, secret_path = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public_path, secret_path):
        if path.exists():
            raise ConfigError(f"{path} exists already; remove it first, or choose another name")
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = zmq.curve_keypair()
    head = f"#   martinet CURVE key {name!r}, made by `martinet keys new`\n"
    create_private(secret_path)
    with open(secret_path, "w", encoding="ascii") as fh:
        fh.write(f"{head}#   SECRET: keep it readable by its owner only.\nmetadata\n    name = \"{name}\"\ncurve\n"
                 f"    public-key = \"{public.decode()}\"\n    secret-key = \"{secret.decode()}\"\n")  # fmt: skip
    with open(public_path, "w", encoding="ascii") as fh:
        fh.write(f'{head}metadata\n    name = "{name}"\ncurve\n    public-key = "{public.decode()}"\n')
    return public_path, secret_path


def load_pair(path: str | os.PathLike) -> KeyPair:
    """A key pair from its NAME.key_secret file, refused when others may read it."""
    try:
        refuse_if_others_read(path, "secret key file", "a CURVE secret key")
        public, secret = zmq.auth.load_certificate(path)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the key pair {path}: {exc}") from None
    if not secret or not Z85_KEY.fullmatch(secret.decode("ascii", "replace")):
        raise ConfigError(
            f"{path} holds no secret key: give the NAME.key_secret file `martinet keys new` wrote"
        )
    return KeyPair(public, secret)


def load_public(source: str) -> bytes:
    """A public key: its 40 characters of Z85, or a NAME.key file (refused when others
    may write it: whoever changes it decides whom we trust)."""
    if Z85_KEY.fullmatch(source):
        return source.encode()
    try:
        refuse_if_others_write(source, "public key file")
        public, _secret = zmq.auth.load_certificate(source)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read the public key {source}: {exc}") from None
    return public


def _public_keys(source: str) -> dict[str, str]:
    """The public keys of a NAME.key file, a folder of them, or a Z85 key: {key: name}."""
    path = Path(source)
    if Z85_KEY.fullmatch(source) and not path.exists():
        return {source: source[:8] + "..."}
    if path.is_dir():
        refuse_if_others_write(path, "key folder")
        return {load_public(str(f)).decode(): f.stem for f in sorted(path.glob("*.key"))}
    return {load_public(source).decode(): path.stem}


def sources_of(value: str) -> list[str]:
    """A setting's list of key sources (comma-separated)."""
    return [part.strip() for part in value.split(",") if part.strip()]


class Keyring:
    """The keys the daemon allows, by role, read from the settings' sources; reread when a
    source changes (refresh) or when asked (reload). A key in two roles is refused: a
    worker's key must not submit, a client's must not receive tasks."""

    def __init__(self, sources: dict[str, list[str]]) -> None:
        self.sources = {role: list(sources.get(role, ())) for role in ROLES}
        self.roles: dict[str, str] = {}  # key (Z85 text) -> role; replaced whole, never changed
        self.names: dict[str, str] = {}  # key -> the name of its file, for the log
        self._stamps: tuple[tuple[str, float], ...] = ()
        self.load()

    def load(self) -> None:
        roles: dict[str, str] = {}
        names: dict[str, str] = {}
        for role, sources in self.sources.items():
            for source in sources:
                for key, name in _public_keys(source).items():
                    if roles.get(key, role) != role:
                        raise ConfigError(
                            f"the key {name} ({key[:8]}...) is allowed as a {roles[key]} and as a {role}: "
                            "give each role keys of its own (an admin's key may also do what a client does)"
                        )
                    roles[key], names[key] = role, name
        self.roles, self.names = roles, names  # (one assignment each: the handshake thread reads them)
        self._stamps = self._stamp()

    def _stamp(self) -> tuple[tuple[str, float], ...]:
        stamps = []
        for source in (s for sources in self.sources.values() for s in sources):
            path = Path(source)
            try:
                stamps.append((source, path.stat().st_mtime))
                if path.is_dir():
                    stamps.extend((str(f), f.stat().st_mtime) for f in sorted(path.glob("*.key")))
            except OSError:
                stamps.append((source, -1.0))
        return tuple(stamps)

    def refresh(self, force: bool = False) -> bool:
        """Read the sources again if they changed (or `force`); True when the keys did.
        A source that cannot be read keeps the keys as they were, and says why."""
        if not force and self._stamp() == self._stamps:
            return False
        before = self.roles
        try:
            self.load()
        except ConfigError as exc:
            self._stamps = self._stamp()  # said once, until it changes again
            log.error("keys not reloaded, the ones loaded before still apply: %s", exc)
            return False
        if self.roles != before:
            log.info("keys reloaded: %s", self.summary())
        return self.roles != before

    def role_of(self, key: str | None) -> str | None:
        return None if key is None else self.roles.get(key)

    def summary(self) -> str:
        counts = {role: sum(1 for r in self.roles.values() if r == role) for role in ROLES}
        return ", ".join(f"{n} {role} key(s)" for role, n in counts.items())


@dataclass(frozen=True)
class ClientKeys:
    """What a client or a worker connects with: its key pair and the daemon's public key."""

    pair: KeyPair
    server: bytes

    @classmethod
    def of(cls, key_file: str, server_key: str) -> ClientKeys | None:
        """From the `key_file` and `server_key` settings: both, or neither (None: plain text)."""
        if not key_file and not server_key:
            return None
        if not key_file or not server_key:
            missing = (
                "key_file (this side's NAME.key_secret)"
                if not key_file
                else "server_key (the daemon's NAME.key)"
            )
            raise ConfigError(f"CURVE needs both key_file and server_key; {missing} is not set")
        return cls(load_pair(key_file), load_public(server_key))

    def apply(self, sock: zmq.Socket) -> None:
        """Make `sock` (not yet connected) a CURVE client of the daemon."""
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.curve_serverkey = self.server


def serve_with(sock: zmq.Socket, pair: KeyPair) -> None:
    """Make `sock` (not yet bound) a CURVE server."""
    sock.curve_server = True
    sock.curve_secretkey = pair.secret
    sock.curve_publickey = pair.public


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the ports on this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
