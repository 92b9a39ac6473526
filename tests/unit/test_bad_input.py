"""Bad input gets a clear, specific error: the parts that need no process (a missing
driver, an embedded daemon's port clash); the rest is tests/e2e/test_bad_input.py."""

from __future__ import annotations

import sys

import pytest
import zmq

import martinet


@pytest.mark.parametrize(
    ("url", "module", "extra"),
    [
        ("postgresql://nobody@127.0.0.1:1/none", "psycopg2", "postgres"),
        ("postgres://nobody@127.0.0.1:1/none", "psycopg2", "postgres"),
        ("mysql://root@127.0.0.1:1/none", "pymysql", "mysql"),
        ("mariadb://root@127.0.0.1:1/none", "pymysql", "mysql"),
    ],
)
def test_a_missing_database_driver_names_the_extra_to_install(monkeypatch, url, module, extra):
    from martinet.errors import StoreError
    from martinet.store import open_database

    monkeypatch.setitem(sys.modules, module, None)  # `import psycopg2` raises ImportError
    with pytest.raises(StoreError) as info:
        open_database(url)
    assert str(info.value) == (
        f"the {url.split(':')[0]} driver ({module}) is not installed: pip install 'martinet[{extra}]'"
    )


def test_an_embedded_daemons_port_clash_names_the_python_argument(tmp_path):
    ctx = zmq.Context()
    busy = ctx.socket(zmq.ROUTER)
    busy.setsockopt(zmq.LINGER, 0)
    port = busy.bind_to_random_port("tcp://127.0.0.1")
    try:
        with pytest.raises(martinet.MartinetError) as info:
            martinet.Martinet(
                db=f"sqlite:///{tmp_path / 'm.db'}", client_port=0, worker_port=port, status_port=0
            )
    finally:
        busy.close(0)
        ctx.term()
    message = str(info.value)
    assert f"the worker port {port} on 127.0.0.1 is already in use" in message
    assert "Martinet(db=..., worker_port=N)" in message and "--worker-port" not in message
