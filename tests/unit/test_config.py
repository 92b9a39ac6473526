"""Settings: defaults < config file < environment < flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from martinet.config import Settings, load, read_env, read_file, worker_endpoint
from martinet.errors import ConfigError

CONF = Path(__file__).resolve().parents[2] / "martinet" / "sample.toml"  # `martinet config --sample`


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "martinet.toml"
    path.write_text(text)
    return path


def test_defaults():
    s = load(environ={})
    assert s == Settings()
    assert s.db == "sqlite:///martinet.db"
    assert s.bind == "127.0.0.1"
    assert (s.client_port, s.worker_port, s.status_port) == (8008, 8009, 18009)
    assert s.url == "tcp://127.0.0.1:8008"
    assert s.max_attempts == 3 and s.lease == 30.0 and s.timezone == "UTC"


def test_file_sections_are_flattened(tmp_path):
    path = write(
        tmp_path,
        'top = 1\n[daemon]\nclient_port = 9000\ndb = "sqlite:///x.db"\n[timing]\nlease = 12.5\n',
    )
    assert read_file(path) == {"top": 1, "client_port": 9000, "db": "sqlite:///x.db", "lease": 12.5}
    path = write(
        tmp_path, 'client_port = 9000\n[limits]\nmax_payload = 10\n[time]\ntimezone = "Asia/Tokyo"\n'
    )
    s = load(path, environ={})
    assert (s.client_port, s.max_payload, s.timezone) == (9000, 10, "Asia/Tokyo")
    assert s.worker_port == 8009  # untouched keys keep their defaults


def test_config_file_from_the_environment(tmp_path):
    path = write(tmp_path, "[daemon]\nworker_port = 9100\n")
    assert load(environ={"MARTINET_CONFIG": str(path)}).worker_port == 9100


def test_environment_overrides_file(tmp_path):
    path = write(tmp_path, "[daemon]\nclient_port = 9000\nworker_port = 9001\n")
    s = load(path, environ={"MARTINET_CLIENT_PORT": "9500", "MARTINET_LEASE": "7.5", "OTHER": "x"})
    assert (s.client_port, s.worker_port, s.lease) == (9500, 9001, 7.5)


def test_read_env_takes_only_known_martinet_keys():
    env = {
        "MARTINET_DB": "postgresql://h/db",
        "MARTINET_TIMEOUT": "2",
        "MARTINET_CONFIG": "/etc/x.toml",
        "MARTINET_NOT_A_SETTING": "1",
        "DB": "nope",
    }
    assert read_env(env) == {"db": "postgresql://h/db", "timeout": "2"}


def test_flags_override_environment_and_file(tmp_path):
    path = write(tmp_path, "[client]\ntimeout = 3.0\n[worker]\nconcurrency = 2\n")
    env = {"MARTINET_TIMEOUT": "4", "MARTINET_CONCURRENCY": "5"}
    s = load(path, flags={"timeout": 6, "concurrency": None, "bind": "0.0.0.0"}, environ=env)
    assert s.timeout == 6.0 and isinstance(s.timeout, float)
    assert s.concurrency == 5  # None flags are ignored
    assert s.bind == "0.0.0.0"


def test_none_flags_are_ignored():
    flags = {f.name: None for f in dataclasses.fields(Settings)}
    assert load(flags=flags, environ={}) == Settings()


def test_values_are_coerced_to_the_setting_type():
    s = load(environ={"MARTINET_LIVENESS": "5", "MARTINET_RETRY_CAP": "60", "MARTINET_DB": "sqlite:///a.db"})
    assert s.liveness == 5 and isinstance(s.liveness, int)
    assert s.retry_cap == 60.0 and isinstance(s.retry_cap, float)
    assert Settings().with_overrides({"lease": 10}).lease == 10.0


@pytest.mark.parametrize(
    "source, key, value",
    [
        ("env", "client_port", "eighty"),
        ("env", "lease", "soon"),
        ("env", "max_payload", "1.5"),
        ("flag", "liveness", "three"),
        ("flag", "timeout", [1]),
        ("flag", "concurrency", {"n": 4}),
        ("file", "worker_port", '"abc"'),
        ("file", "retry_base", '"fast"'),
        ("file", "liveness", "2.5"),
        ("file", "concurrency", "true"),
        ("file", "lease", "false"),
    ],
)
def test_bad_values_name_the_key(tmp_path, source, key, value):
    kwargs: dict = {"environ": {}}
    if source == "env":
        kwargs["environ"] = {f"MARTINET_{key.upper()}": value}
    elif source == "flag":
        kwargs["flags"] = {key: value}
    else:
        kwargs["config_file"] = write(tmp_path, f"[section]\n{key} = {value}\n")
    with pytest.raises(ConfigError, match=repr(key)):
        load(**kwargs)


def test_unknown_key_in_file_is_an_error(tmp_path):
    path = write(tmp_path, "[daemon]\nclient_prot = 9000\n")
    with pytest.raises(ConfigError, match="unknown setting 'client_prot'"):
        load(path, environ={})


def test_unknown_flag_is_an_error():
    with pytest.raises(ConfigError, match="unknown setting 'nope'"):
        load(flags={"nope": 1}, environ={})


def test_missing_file_is_an_error(tmp_path):
    missing = tmp_path / "nowhere.toml"
    with pytest.raises(ConfigError, match="does not exist"):
        load(missing, environ={})
    with pytest.raises(ConfigError, match="nowhere.toml"):
        load(environ={"MARTINET_CONFIG": str(missing)})


@pytest.mark.parametrize("text", ["[daemon\n", "client_port = \n", "a = 1\na = 2\n", "= 3\n"])
def test_invalid_toml_is_an_error(tmp_path, text):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(path, environ={})


def test_a_file_that_is_not_text_is_an_error(tmp_path):
    path = tmp_path / "binary.toml"
    path.write_bytes(b'db = "\xff\xfe"\n')
    with pytest.raises(ConfigError, match="binary.toml"):
        load(path, environ={})


def test_a_directory_is_not_a_config_file(tmp_path):
    with pytest.raises(ConfigError, match=str(tmp_path)):
        load(tmp_path, environ={})


def test_the_shipped_config_file_sets_every_setting_to_its_default():
    values = read_file(CONF)
    names = {f.name for f in dataclasses.fields(Settings)}
    assert set(values) == names
    defaults = dataclasses.asdict(Settings())
    for key, value in values.items():
        assert value == defaults[key], key
        assert type(value) is type(defaults[key]), key
    assert load(CONF, environ={}) == Settings()


@pytest.mark.parametrize(
    "flags, message",
    [
        ({"client_port": 70000}, "must be a port"),
        ({"worker_port": -1}, "must be a port"),
        ({"lease": 0}, "positive number"),
        ({"timeout": float("nan")}, "positive number"),
        ({"heartbeat_interval": float("inf")}, "positive number"),
        ({"concurrency": 0}, "1 or more"),
        ({"liveness": 0}, "1 or more"),
    ],
)
def test_out_of_range_values_are_refused(flags, message):
    with pytest.raises(ConfigError, match=message):
        load(flags=flags, environ={})


# ---- addresses: the client's URL and the worker's --connect ---------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("localhost:8008", "'localhost:8008' has no tcp:// in front; write 'tcp://localhost:8008'"),
        ("tcp://localhost", "'tcp://localhost' has no port; write 'tcp://localhost:8008'"),
        ("tcp://localhost:0", "bad port '0' (1 to 65535)"),
        ("tcp://localhost:80800", "bad port '80800' (1 to 65535)"),
        ("tcp://localhost:port", "bad port 'port'"),
        ("http://localhost:8008", "cannot read 'http://localhost:8008' as an address"),
        ("tcp://my host:8008", "cannot read"),
        ("", "cannot read"),
    ],
)
def test_a_bad_url_is_refused_when_given(url, message):
    with pytest.raises(ConfigError, match="setting 'url'") as info:
        load(flags={"url": url}, environ={})
    assert message in str(info.value)


def test_configure_checks_the_url_at_once(monkeypatch):
    import martinet

    monkeypatch.setattr(martinet, "_default", None)
    with pytest.raises(ConfigError, match="no tcp:// in front"):
        martinet.configure(url="localhost:8008")
    with pytest.raises(ConfigError, match="has no port"):
        martinet.Martinet.connect("tcp://127.0.0.1")
    assert martinet._default is None


@pytest.mark.parametrize("url", ["tcp://127.0.0.1:8008", "tcp://daemon.example.com:9000", "tcp://[::1]:8008"])
def test_good_urls_pass(url):
    assert load(flags={"url": url}, environ={}).url == url


@pytest.mark.parametrize(
    ("connect", "flags", "endpoint"),
    [
        ("10.0.0.5", {}, ("10.0.0.5", 8009, 18009)),
        ("tcp://10.0.0.5", {}, ("10.0.0.5", 8009, 18009)),
        ("tcp://10.0.0.5:8009", {}, ("10.0.0.5", 8009, 18009)),
        ("tcp://10.0.0.5:9009", {}, ("10.0.0.5", 9009, 19009)),  # the default distance, 10000
        ("10.0.0.5:9009", {"status_port": 7000}, ("10.0.0.5", 9009, 7000)),
        ("tcp://10.0.0.5:9009", {"worker_port": 9009}, ("10.0.0.5", 9009, 19009)),
        ("10.0.0.5", {"worker_port": 9009, "status_port": 7000}, ("10.0.0.5", 9009, 7000)),
    ],
)
def test_the_worker_connects_to_a_host_or_a_url_of_its_worker_port(connect, flags, endpoint):
    assert worker_endpoint(load(flags={"connect": connect, **flags}, environ={})) == endpoint


@pytest.mark.parametrize(
    ("connect", "flags", "message"),
    [
        ("tcp://10.0.0.5:8008", {}, "port 8008 is the daemon's client port"),
        ("tcp://10.0.0.5:9009", {"worker_port": 9100}, "give one of them"),
        ("tcp://10.0.0.5:60000", {}, "give the status port too"),
        ("tcp://10.0.0.5:x", {}, "bad port 'x'"),
        ("udp://10.0.0.5:8009", {}, "cannot read"),
    ],
)
def test_a_bad_worker_address_says_why(connect, flags, message):
    with pytest.raises(ConfigError, match="setting 'connect'") as info:
        load(flags={"connect": connect, **flags}, environ={})
    assert message in str(info.value)


def test_martinet_worker_takes_a_url_and_a_bad_one_is_one_line(monkeypatch, capsys):
    from martinet import cli, worker

    made = []

    class FakeWorker:
        handlers = {"x": None}

        def __init__(self, options):
            made.append(options)

        def run(self):
            import zmq

            raise zmq.ZMQError(22)

        def stop(self):
            pass

    monkeypatch.setattr(worker, "Worker", FakeWorker)
    monkeypatch.setattr(cli.signal, "signal", lambda *_: None)  # keep pytest's handlers
    assert cli.worker_main(["tests.tasks", "--connect", "tcp://127.0.0.1:9009", "--log-level", "ERROR"]) == 1
    assert [(o.connect, o.worker_port, o.status_port) for o in made] == [("127.0.0.1", 9009, 19009)]
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "martinet-worker: error: cannot connect to 127.0.0.1" in err
    assert cli.worker_main(["tests.tasks", "--connect", "tcp://127.0.0.1:8008"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "client port" in err and "Traceback" not in err


def test_a_config_file_others_can_write_is_refused_with_the_reason(tmp_path):
    path = write(tmp_path, 'db = "sqlite:///x.db"\n')
    path.chmod(0o644)
    assert load(path, environ={}).db == "sqlite:///x.db"
    path.chmod(0o666)
    with pytest.raises(ConfigError, match=r"can be written by anyone on this host \(mode 666\).*chmod go-w"):
        load(path, environ={})
    path.chmod(0o664)
    with pytest.raises(ConfigError, match="can be written by its group"):
        load(path, environ={})


def test_a_new_sqlite_database_and_its_wal_are_readable_by_their_owner_only(tmp_path):
    from martinet.store import open_database

    path = tmp_path / "private.db"
    db = open_database(f"sqlite:///{path}")
    try:
        db.execute_sql("INSERT INTO database_identity (database_id, created_at) VALUES ('x', 0)")
        wal = tmp_path / "private.db-wal"
        assert wal.exists()
        assert {p.name: p.stat().st_mode & 0o777 for p in (path, wal)} == {path.name: 0o600, wal.name: 0o600}
    finally:
        db.close()


def test_an_in_memory_sqlite_database_leaves_no_file(tmp_path, monkeypatch):
    from martinet.store import open_database

    monkeypatch.chdir(tmp_path)
    open_database("sqlite:///:memory:").close()
    assert list(tmp_path.iterdir()) == []


def test_the_database_url_can_come_from_a_private_file(tmp_path):
    secret = tmp_path / "db-url"
    secret.write_text("postgresql://martinet:s3cret@db.internal/martinet\n")
    secret.chmod(0o600)
    assert (
        load(flags={"db": f"@{secret}"}, environ={}).db == "postgresql://martinet:s3cret@db.internal/martinet"
    )
    assert load(environ={"MARTINET_DB": f"@{secret}"}).db.endswith("@db.internal/martinet")
    secret.chmod(0o644)
    with pytest.raises(
        ConfigError,
        match=r"can be read by anyone on this host \(mode 644\), and it holds the database's password",
    ):
        load(flags={"db": f"@{secret}"}, environ={})
    with pytest.raises(ConfigError, match="cannot read the database URL file .*missing"):
        load(flags={"db": f"@{tmp_path / 'missing'}"}, environ={})
