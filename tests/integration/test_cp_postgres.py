"""kuma-cp processes on a real PostgreSQL: migrations, leader election across processes, shared state."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from controlplane.store.postgres_config import PostgresConfig
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess, CpStartError, start_cp

pytestmark = pytest.mark.postgres


def pg_env(cfg: PostgresConfig) -> dict[str, str]:
    return {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_HOST": cfg.host,
            "KUMA_STORE_POSTGRES_PORT": str(cfg.port), "KUMA_STORE_POSTGRES_USER": cfg.user,
            "KUMA_STORE_POSTGRES_PASSWORD": cfg.password, "KUMA_STORE_POSTGRES_DB_NAME": cfg.db_name}


def is_leader(cp: CpProcess) -> bool:
    metrics = call("GET", cp.diagnostics_url + "/metrics").raw.decode()
    m = re.search(r"^leader (\S+)$", metrics, re.M)
    assert m, metrics[:500]
    return float(m.group(1)) == 1.0


def wait_for(cond: Callable[[], bool], timeout: float) -> float:
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if cond():
            return time.monotonic() - start
        time.sleep(0.1)
    raise AssertionError(f"condition not met within {timeout}s")


def kuma_cp(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "controlplane.cli", *args], env={**os.environ, **env},
                          capture_output=True, text=True, timeout=60)


def test_start_refuses_an_unmigrated_schema_then_migrate_up(postgres_config: PostgresConfig,
                                                            cp_factory: Callable[..., CpProcess],
                                                            tmp_path: Path) -> None:
    env = pg_env(postgres_config)
    with pytest.raises(CpStartError) as e:
        start_cp(tmp_path / "refused", **env)
    assert "kuma-cp migrate up" in str(e.value)
    first = kuma_cp("migrate", "up", env=env)
    assert first.returncode == 0, first.stderr
    assert "applied migrations" in first.stdout
    again = kuma_cp("migrate", "up", env=env)
    assert again.returncode == 0 and "up to date" in again.stdout
    cp = cp_factory(**env)
    # The leader creates the default mesh once it wins the election, shortly after /ready.
    wait_for(lambda: call("GET", cp.http_url + "/meshes/default").status == 200, 10)


def test_two_instances_one_leader_and_failover(postgres_migrated_config: PostgresConfig,
                                               cp_factory: Callable[..., CpProcess]) -> None:
    env = pg_env(postgres_migrated_config)
    a = cp_factory(**env)
    b = cp_factory(**env)
    wait_for(lambda: is_leader(a) or is_leader(b), 10)
    time.sleep(1.5)  # a second elector poll: still exactly one
    assert [is_leader(a), is_leader(b)].count(True) == 1
    leader, follower = (a, b) if is_leader(a) else (b, a)

    # Both serve the same store: a write through one is read through the other.
    assert call("PUT", follower.http_url + "/meshes/shared", {"type": "Mesh", "name": "shared"}).status == 201
    assert call("GET", leader.http_url + "/meshes/shared").status == 200

    os.kill(leader.pid, signal.SIGKILL)  # no clean release: the lock goes with its session
    leader.stop()
    took = wait_for(lambda: is_leader(follower), 15)
    assert took < 15
    assert call("GET", follower.http_url + "/meshes/shared").status == 200


def test_bad_postgres_settings_are_named(tmp_path: Path) -> None:
    r = kuma_cp("validate", env={"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_PORT": "none"})
    assert r.returncode == 2 and "KUMA_STORE_POSTGRES_PORT" in r.stderr
    r = kuma_cp("validate", env={"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_TLS_MODE": "maybe"})
    assert r.returncode == 2 and "store.postgres.tlsMode" in r.stderr


def test_a_frozen_leader_is_replaced_within_seconds_and_steps_down(postgres_migrated_config: PostgresConfig,
                                                                  cp_factory: Callable[..., CpProcess]) -> None:
    """SIGSTOP stands in for a host crash or partition: the leader's socket stays open (the kernel still
    answers TCP), so only the lease on its lock session (idle_session_timeout) can free the lock."""
    env = pg_env(postgres_migrated_config)
    a = cp_factory(**env)
    b = cp_factory(**env)
    wait_for(lambda: is_leader(a) or is_leader(b), 10)
    leader, follower = (a, b) if is_leader(a) else (b, a)
    os.kill(leader.pid, signal.SIGSTOP)
    try:
        # The lease is 5 s; a few more for the follower's poll, its one-interval wait and a loaded machine.
        wait_for(lambda: is_leader(follower), 20)
    finally:
        os.kill(leader.pid, signal.SIGCONT)
    # Thawed, the old leader finds its session gone and steps down; exactly one leader again.
    wait_for(lambda: not is_leader(leader), 15)
    assert is_leader(follower)
    assert "leadership lost" in leader.logs(tail=400)
