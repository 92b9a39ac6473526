"""A quick run of every benchmark scenario with tiny numbers: the benchmark keeps working.

It checks that each scenario runs and reports what it should, never how fast:
speed targets live in scripts/bench.py's figures, not in tests.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from martinet.keys import is_loopback
from tests import backends

ROOT = Path(__file__).resolve().parents[2]
TIME_LIMIT = 50  # seconds: under the suite's time limit a test, so that a hang says what it held
# The runs that start a daemon and workers a dozen times over (the users scenario: 17-27 s
# alone on a slow machine, near 50 beside the rest of the suite there) have longer.
LONG_LIMIT = 100
TINY = ["--repeat", "1", "--tasks", "300", "--paced", "40", "--timers", "20", "--timers-ahead", "1",
        "--pending", "3000", "--schedules", "50", "--due", "300", "--users-tasks", "150",
        "--users-clients", "3", "--users-calls", "40"]  # fmt: skip


def bench(*args: str, limit: float = TIME_LIMIT) -> dict[str, dict[str, float]]:
    """Run scripts/bench.py; the medians of each scenario's JSON line. It runs in a process
    group of its own, killed after `limit` seconds, so that the daemons and workers it
    started go with it even when the test is cut short: none is left behind."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, start_new_session=True,
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=limit)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(
            f"scripts/bench.py {' '.join(args)} ran over {limit:g} s; its stderr ends:\n{stderr[-3000:]}"
        )
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
    assert proc.returncode == 0, stderr[-3000:]
    assert "median" in stdout  # the human table
    records = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    return {r["scenario"]: {k: v["median"] for k, v in r["results"].items()} for r in records}


USERS = {
    f"{backend}_{figure}"
    for backend in ("sqlite", "pg")
    for figure in (
        "enqueue_per_s",
        "c1_drain_per_s",
        "c1_steady_per_s",
        "default_drain_per_s",
        "default_steady_per_s",
        "c1_latency_p50_ms",
        "c1_latency_p99_ms",
        "enqueue_of_round_trips_pct",
        "clients3_per_s",  # --users-clients 3 (TINY)
        "clients3_x",
        "c1_first_task_s",
        "c1_drain_daemon_cpu_us",
        "c1_drain_workers_cpu_us",
        "c1_drain_cores_busy",
    )
}
EXPECTED = {
    "users": {k for k in USERS if k.startswith("sqlite_")} | {"zmq_round_trips_per_s", "zmq_clients3_x"},
    "throughput": {"submit_seq_per_s", "submit_bulk_per_s", "drain_per_s"},
    "web": {"drain_without_web_per_s", "drain_with_web_per_s", "web_drain_x", "web_live_messages"},
    "curve": {
        "drain_plain_per_s",
        "drain_curve_per_s",
        "curve_drain_x",
        "latency_curve_p99_ms",
        "curve_latency_p99_x",
    },
    "shaping": {"submit_seq_per_s", "submit_bulk_per_s", "drain_per_s"},
    "latency": {"latency_p50_ms", "latency_p99_ms", "latency_max_ms"},
    "floor": {"zmq_floor_per_s", "sqlite_floor_per_s", "relay_latency_p50_ms", "relay_latency_p99_ms"},
    "store": {"store_us_per_task", "store_commit_us", "store_one_task_turn_us", "store_one_task_commit_us"},
    "timers": {"late_p50_ms", "late_p99_ms", "late_max_ms"},
    "scale": {
        "start_to_first_dispatch_s",
        "drain_due_per_s",
        "drain_vs_empty_pct",
        "peak_rss_mb",
        "late_p50_ms",
    },
    "search": {"status_name_ms", "where_ms", "count_name_ms"},
    "daemons": {
        "daemons1_workers2_drain_per_s",
        "daemons1_drain_per_s",
        "daemons2_drain_per_s",
        "daemons3_drain_per_s",
        "daemons2_vs_1_workers2_x",
    },
    "prune": {"drain_plain_per_s", "drain_pruning_per_s", "drain_cost_pct", "prune_s"},
    "idle": {
        f"{variant}_{figure}"
        for variant in ("alone", "other", "same")
        for figure in ("p50_ms", "p99_ms", "calls_per_s", "cpu_pct", "net_cpu_ms_per_call", "quiet_cpu_pct")
    }
    | {f"{variant}_{figure}_x" for variant in ("other", "same") for figure in ("p50_ms", "calls_per_s")}
    | {"other_connect_s", "same_connect_s"},
    "instructions": {"sqlite_call_instr_k", "sqlite_c1_drain_task_instr_k"},
}


def check_figures(results: dict[str, dict[str, float]]) -> None:
    for scenario in set(results) - {"targets"}:
        assert EXPECTED[scenario] <= set(results[scenario]), (scenario, results[scenario])
        figures = results[scenario]
        assert all(v > 0 for k, v in figures.items() if k.endswith(("_per_s", "_us"))), figures


@pytest.mark.timeout(LONG_LIMIT + 10)
def test_a_quick_run_runs_every_scenario_but_those_that_build_a_million_rows():
    results = bench(*TINY, "--quick", "--postgres", "", limit=LONG_LIMIT)
    quick = {
        "users",
        "throughput",
        "latency",
        "store",
        "floor",
        "shaping",
        "timers",
        "web",
        "curve",
        "targets",
    }
    assert set(results) == quick  # no backends without --postgres
    check_figures(results)
    assert {
        "throughput.drain_per_s",
        "floor.drain_of_floor_pct",
        "floor.seq_of_round_trips_pct",
        "floor.latency_p50_of_relay_x",
        "latency.latency_p99_ms",
    } <= set(results["targets"])
    assert 0 < results["floor"]["relay_latency_p50_ms"] <= results["floor"]["relay_latency_p99_ms"]
    assert results["curve"]["curve_drain_x"] > 0 and results["curve"]["latency_curve_p99_ms"] > 0


def test_the_scenarios_that_build_a_million_rows_run_with_tiny_numbers():
    results = bench(*TINY, "scale", "search", "prune")
    assert set(results) == {"scale", "search", "prune", "targets"}
    check_figures(results)
    assert "scale.peak_rss_mb" in results["targets"]


def test_the_backends_store_and_floor_scenarios_run_on_postgresql():
    results = bench(*TINY, "--postgres", backends.check("postgresql"), "backends", "floor", "store")
    assert {"pg_store_us_per_task", "pg_store_one_task_turn_us"} <= set(results["store"])
    assert {"pg_drain_per_s", "pg_submit_seq_per_s", "pg_submit_bulk_per_s", "pg_latency_p99_ms"} <= set(
        results["backends"]
    )
    assert results["backends"]["pg_drain_per_s"] > 0 and results["floor"]["postgres_floor_per_s"] > 0


@pytest.mark.timeout(LONG_LIMIT + 10)
def test_the_users_scenario_runs_on_postgresql_too():
    url = backends.check("postgresql")
    results = bench(*TINY, "--postgres", url, "users", limit=LONG_LIMIT)
    assert USERS <= set(results["users"])  # as users run it, on SQLite and PostgreSQL
    direct = {
        "pg_enqueue_in_per_s",
        "pg_insert_commit_per_s",
        "pg_enqueue_in_of_insert_pct",
        "pg_enqueue_of_insert_pct",
    }
    host = urlsplit(url).hostname
    if host is None or is_loopback(host):  # its processes are on this machine
        direct.add("pg_c1_drain_server_cpu_us")
    assert direct <= set(results["users"]) and all(results["users"][k] > 0 for k in direct)


def test_the_daemons_scenario_drains_through_one_two_and_three_daemons_on_postgresql():
    results = bench(*TINY, "--postgres", backends.check("postgresql"), "daemons")
    check_figures(results)


def test_the_idle_scenario_connects_idle_workers_and_compares_calls_with_them_and_without():
    results = bench("idle", "--repeat", "1", "--idle", "20", "--idle-window", "0.5")
    assert set(results) == {"idle"}  # no targets of its own
    check_figures(results)
    idle = results["idle"]
    for variant in ("other", "same"):
        assert idle[f"{variant}_connect_s"] > 0 and idle[f"{variant}_calls_per_s_x"] > 0


@pytest.mark.skipif(
    shutil.which("valgrind") is None or shutil.which("callgrind_control") is None,
    reason="needs valgrind (callgrind and callgrind_control), absent here",
)
def test_the_instructions_scenario_counts_the_daemons_work_under_callgrind():
    results = bench("instructions", "--repeat", "1", "--instr-tasks", "60", "--instr-calls", "5")
    assert set(results) == {"instructions"}  # no targets of its own
    check_figures(results)
    assert all(value > 0 for value in results["instructions"].values()), results
