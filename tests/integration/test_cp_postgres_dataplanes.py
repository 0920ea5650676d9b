"""Two kuma-cp instances on one PostgreSQL serving real kuma-dp: a dataplane that moves from one instance to
the other stays registered; one whose instance is killed -9 shows offline and is cleaned up by the leader."""

from __future__ import annotations

import os
import signal
from collections.abc import Callable

import pytest

from controlplane.store.postgres_config import PostgresConfig
from controlplane.xds.liveness import parse_time
from tests.apps.runner import App
from tests.integration.api_client import call
from tests.integration.cp_process import CpProcess
from tests.integration.test_cp_postgres import is_leader, pg_env, wait_for
from tests.integration.test_kuma_dp_support import (
    DpMesh,
    DpProcess,
    dataplane_doc,
    dp_factory,  # noqa: F401  (fixture)
    eventually,
)
from tests.ports import free_port

pytestmark = pytest.mark.postgres

GRACE = 8  # seconds a disconnected kuma-dp keeps its Dataplane
HEARTBEAT = 1  # an instance's heartbeat record (and its open subscriptions) is stale after 3 of these


def status(cp: CpProcess, name: str) -> str | None:
    items = call("GET", cp.http_url + "/meshes/default/dataplanes/_overview").json["items"]
    return next((i["status"] for i in items if i["name"] == name), None)


def idle_for(cp: CpProcess, instance: str, name: str) -> float:
    """Seconds between the last write of a dataplane's insight and `instance`'s last heartbeat, through `cp`."""
    insight = call("GET", cp.http_url + f"/meshes/default/dataplane-insights/{name}").json
    record = call("GET", cp.http_url + f"/control-plane-instances/{instance}").json
    return (parse_time(record["lastHeartbeatTime"]) - parse_time(insight["modificationTime"])).total_seconds()


def two_instances(cp_factory: Callable[..., CpProcess], cfg: PostgresConfig) -> tuple[CpProcess, CpProcess]:
    env = {**pg_env(cfg), "KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD": str(GRACE),
           "KUMA_DP_SERVER_HEARTBEAT_INTERVAL": str(HEARTBEAT)}
    a, b = cp_factory(**env), cp_factory(**env)
    wait_for(lambda: call("GET", a.http_url + "/meshes/default").status == 200, 15)
    return a, b


def start_dp(mesh: DpMesh, cp: CpProcess, dp_factory: Callable[..., DpProcess], app: App,  # noqa: F811
             inbound: int, name: str) -> DpProcess:
    doc = dataplane_doc(name, "backend", app_port=app.port, inbound_port=inbound)
    dp = dp_factory(name=name, cp=cp, definition=doc, token=mesh.token(name),
                    args=["--drain-time", "1s", "--envoy-log-level", "warning"])
    dp.wait_ready()
    return dp


def test_dataplane_hopping_between_instances_stays_registered(
        postgres_migrated_config: PostgresConfig, cp_factory: Callable[..., CpProcess],
        app_factory: Callable[..., App], dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    a, b = two_instances(cp_factory, postgres_migrated_config)
    mesh = DpMesh(a, app_factory, dp_factory)
    app = app_factory("echo_http", "--name", "backend")
    inbound = free_port()
    first = start_dp(mesh, a, dp_factory, app, inbound, "backend-1")
    eventually(lambda: status(a, "backend-1") == "online" and status(b, "backend-1") == "online",
               message="online on A, seen through both instances")

    # Moved to B within A's grace period: A must see B's newer subscription and keep the Dataplane.
    first.stop()
    start_dp(mesh, b, dp_factory, app, inbound, "backend-1")
    eventually(lambda: "reconnected to another instance" in a.logs(tail=400), timeout=GRACE + 20,
               message="A's grace period ran out and A checked the insight")
    assert call("GET", a.http_url + "/meshes/default/dataplanes/backend-1").status == 200
    assert status(a, "backend-1") == "online" and status(b, "backend-1") == "online"
    insight = call("GET", b.http_url + "/meshes/default/dataplane-insights/backend-1").json
    instances = [s["controlPlaneInstanceId"] for s in insight["subscriptions"]]
    assert len(set(instances)) == 2, insight  # both instances' subscriptions merged, none overwritten
    assert "disconnectTime" in insight["subscriptions"][0] and "disconnectTime" not in insight["subscriptions"][-1]


def test_kill_9_of_the_serving_instance_shows_offline_and_leader_cleans_up(
        postgres_migrated_config: PostgresConfig, cp_factory: Callable[..., CpProcess],
        app_factory: Callable[..., App], dp_factory: Callable[..., DpProcess]) -> None:  # noqa: F811
    a, b = two_instances(cp_factory, postgres_migrated_config)
    mesh = DpMesh(a, app_factory, dp_factory)
    app = app_factory("echo_http", "--name", "backend")
    dp = start_dp(mesh, b, dp_factory, app, free_port(), "backend-1")
    eventually(lambda: status(a, "backend-1") == "online", message="online through A")
    # Idle, its insight is not rewritten; B's heartbeat record is, and keeps it online through A.
    b_id = call("GET", b.http_url + "/").json["instanceId"]
    eventually(lambda: idle_for(a, b_id, "backend-1") > 2 * 3 * HEARTBEAT, timeout=30,
               message="B beating for two staleness windows past the insight's last write")
    assert status(a, "backend-1") == "online"

    os.kill(b.pid, signal.SIGKILL)  # B never writes the disconnect
    b.stop()
    # Its subscription stays open in the store, but B's record stops beating: offline within a few heartbeats.
    eventually(lambda: status(a, "backend-1") == "offline", timeout=HEARTBEAT * 3 + 15, message="offline")
    dp.stop()
    # A is (or becomes) the leader; its GC deletes the kuma-dp-managed Dataplane and its insight.
    wait_for(lambda: is_leader(a), 20)
    eventually(lambda: call("GET", a.http_url + "/meshes/default/dataplanes/backend-1").status == 404,
               timeout=GRACE + 20, message="cleaned up by the leader")
    eventually(lambda: call("GET", a.http_url + "/meshes/default/dataplane-insights/backend-1").status == 404,
               message="insight cleaned up with it")
