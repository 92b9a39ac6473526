"""Settings: defaults < config file < environment < flags."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from martinet.config import Settings, load, read_env, read_file
from martinet.errors import ConfigError

CONF = Path(__file__).resolve().parent.parent / "conf" / "martinet.toml"


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
