"""The heart of the mesh, for real: kuma-cp's dp-server drives real Envoys; traffic between two services
crosses both Envoys with mTLS; permissions, certificate rotation and a control-plane restart."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable
from typing import Any

import pytest

from agent.bootstrap_client import BootstrapError, CpAddress, fetch_bootstrap
from controlplane.tls import ensure_cp_tls
from tests.apps.runner import App
from tests.integration.cp_process import CpProcess, start_cp
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http
from tests.ports import free_port

MTLS_MESH = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends:
  - name: ca-1
    type: builtin
    dpCert: {rotation: {expiration: %s}}
"""

ALLOW_ALL = """
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from:
  - targetRef: {kind: Mesh}
    default: {action: Allow}
"""

DENY_WEB = """
type: MeshTrafficPermission
mesh: default
name: deny-web
spec:
  targetRef: {kind: MeshService, name: backend}
  from:
  - targetRef: {kind: MeshService, name: web}
    default: {action: Deny}
"""


@pytest.fixture
def mesh(cp_factory: Callable[..., CpProcess], envoy_factory: Callable[..., EnvoyProcess],
         app_factory: Callable[..., App]) -> MeshHarness:
    cp = cp_factory(KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD="1", KUMA_DP_SERVER_NACK_BACKOFF="1")
    return MeshHarness(cp, envoy_factory, app_factory)


def two_services(mesh: MeshHarness, *, api_type: str | None = None) -> int:
    """backend (echo_http) and web; returns web's outbound port for backend."""
    backend = mesh.app("echo_http", "--name", "backend")
    web_app = mesh.app("echo_http", "--name", "web")
    mesh.dataplane("backend-1", "backend", app_port=backend.port, api_type=api_type)
    web = mesh.dataplane("web-1", "web", app_port=web_app.port, outbounds={"backend": 0}, api_type=api_type)
    return web.outbounds["backend"]


@pytest.mark.parametrize("api_type", ["delta", "sotw"])
def test_plaintext_traffic_through_both_envoys(mesh: MeshHarness, api_type: str) -> None:
    port = two_services(mesh, api_type=api_type)
    _, body = eventually(lambda: (r := http(port, "/hello")) and r[0] == 200 and r, message="web -> backend")
    assert isinstance(body, dict) and body["service"] == "backend" and body["path"] == "/hello"
    assert "x-forwarded-client-cert" not in body["headers"]  # no mTLS: no identity to forward


def test_mtls_identity_and_permissions(mesh: MeshHarness) -> None:
    mesh.apply(MTLS_MESH % "24h")
    port = two_services(mesh)
    # mTLS on and no MeshTrafficPermission: denied by default, as in Kuma.
    eventually(lambda: http(port)[0] == 403, message="deny by default")
    mesh.apply(ALLOW_ALL)
    _, body = eventually(lambda: (r := http(port)) and r[0] == 200 and r, message="allowed")
    assert isinstance(body, dict)
    xfcc = body["headers"]["x-forwarded-client-cert"]
    assert "URI=spiffe://default/web" in xfcc  # the callee sees the caller's SPIFFE identity
    # A more specific deny beats the mesh-wide allow.
    mesh.apply(DENY_WEB)
    eventually(lambda: http(port)[0] == 403, message="web denied")
    mesh.delete("meshtrafficpermissions", "deny-web")
    eventually(lambda: http(port)[0] == 200, message="allowed again")
    # Both proxies report online, with their certificates.
    overview = mesh.api("GET", "/meshes/default/dataplanes/_overview").json
    assert {i["name"]: i["status"] for i in overview["items"]} == {"backend-1": "online", "web-1": "online"}
    insight = eventually(lambda: (r := mesh.api("GET", "/meshes/default/dataplane-insights/web-1")).status == 200
                         and r.json)
    assert insight["mTLS"]["certificateExpirationTime"]

    def acked() -> int:  # the counters are written at least every dataplaneStatusFlushInterval (10 s)
        doc = mesh.api("GET", "/meshes/default/dataplane-insights/web-1").json
        return int(doc["subscriptions"][-1]["status"]["total"]["responsesAcknowledged"] >= 4)
    eventually(acked, timeout=30, message="web-1's ACK counters in its insight")


def test_plaintext_caller_is_refused_by_a_strict_mesh(mesh: MeshHarness) -> None:
    mesh.apply(MTLS_MESH % "24h")
    mesh.apply(ALLOW_ALL)
    backend = mesh.app("echo_http", "--name", "backend")
    dp = mesh.dataplane("backend-1", "backend", app_port=backend.port)
    # Plain HTTP straight at the inbound listener: the TLS handshake fails, no request gets through.
    try:
        status, _ = http(dp.inbound_port, timeout=3)
    except OSError:
        return
    raise AssertionError(f"a plaintext request reached the application through a STRICT mesh: HTTP {status}")


def test_certificate_rotation_keeps_long_lived_connections(mesh: MeshHarness) -> None:
    mesh.apply(MTLS_MESH % "6s")  # renewed at 4/5 of the lifetime: about every 5 s
    mesh.apply(ALLOW_ALL)
    tcp_app = mesh.app("echo_tcp", "--banner", "db")
    client_app = mesh.app("echo_http", "--name", "client")
    mesh.dataplane("db-1", "db", app_port=tcp_app.port, protocol="tcp")
    client = mesh.dataplane("client-1", "client", app_port=client_app.port, outbounds={"db": 0})
    port = client.outbounds["db"]

    def connect() -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        assert s.recv(64).startswith(b"db")
        return s

    conn = eventually(connect, message="TCP through the mesh")
    first = insight_regenerations(mesh, "client-1")
    eventually(lambda: insight_regenerations(mesh, "client-1") >= first + 2, timeout=30,
               message="two certificate renewals")
    conn.sendall(b"still here\n")  # the connection opened before the renewals still works
    assert conn.recv(64) == b"still here\n"
    conn.close()
    fresh = connect()  # and new connections use the new certificates
    fresh.close()


def insight_regenerations(mesh: MeshHarness, name: str) -> int:
    r = mesh.api("GET", f"/meshes/default/dataplane-insights/{name}")
    if r.status != 200:
        return 0
    return int(r.json.get("mTLS", {}).get("certificateRegenerations", 0))


def test_control_plane_restart_keeps_traffic_and_reconnects(mesh: MeshHarness, tmp_path: Any) -> None:
    mesh.apply(MTLS_MESH % "24h")
    mesh.apply(ALLOW_ALL)
    port = two_services(mesh)
    eventually(lambda: http(port)[0] == 200, message="traffic before restart")
    env = {k: v for k, v in mesh.cp.env.items() if k.startswith("KUMA_")}
    mesh.cp.stop()
    for _ in range(5):  # Envoys keep their last config while the control plane is away
        assert http(port)[0] == 200
    again = start_cp(tmp_path / "restarted", **env)
    try:
        mesh.cp = again
        # Envoy reconnects by itself, and config changes flow again.
        mesh.apply(DENY_WEB)
        eventually(lambda: http(port)[0] == 403, timeout=30, message="change after restart reached Envoy")
    finally:
        again.stop()


def test_registered_dataplane_is_removed_after_disconnect(mesh: MeshHarness) -> None:
    app = mesh.app("echo_http", "--name", "api")
    dp = mesh.dataplane("api-1", "api", app_port=app.port)
    got = mesh.api("GET", "/meshes/default/dataplanes/api-1")
    assert got.status == 200 and got.json["labels"]["kuma.io/managed-by"] == "kuma-dp"
    dp.envoy.stop()
    eventually(lambda: mesh.api("GET", "/meshes/default/dataplanes/api-1").status == 404, timeout=15,
               message="dataplane deleted after the grace period")


def test_operator_created_dataplane_stays(mesh: MeshHarness) -> None:
    app = mesh.app("echo_http", "--name", "api")
    doc = {"type": "Dataplane", "mesh": "default", "name": "api-1",
           "networking": {"address": "127.0.0.1",
                          "inbound": [{"port": free_port(), "servicePort": app.port,
                                       "tags": {"kuma.io/service": "api"}}]}}
    mesh.apply(__import__("json").dumps(doc))
    bootstrap = mesh.bootstrap("api-1", mesh.token("api-1"), None)  # no definition: use the stored one
    envoy = mesh.envoy_factory(bootstrap, name="api-1")
    eventually(lambda: envoy.listeners(), message="config arrived")
    envoy.stop()
    time.sleep(2.5)  # past the 1 s grace period
    assert mesh.api("GET", "/meshes/default/dataplanes/api-1").status == 200


def bootstrap_error(harness: MeshHarness, **request: Any) -> BootstrapError:
    base = {"mesh": "default", "name": "web-1", "adminPort": free_port(), "dataplaneToken": "x"}
    base.update(request)
    cp = CpAddress("127.0.0.1", harness.cp.ports["KUMA_DP_SERVER_PORT"])
    with pytest.raises(BootstrapError) as e:
        asyncio.run(fetch_bootstrap(cp, harness.cp.ca_file.read_bytes(), base))
    return e.value


def forged_token(mesh_name: str) -> str:
    """A well-formed dataplane token for `mesh_name`, signed by a key no control plane has."""
    import uuid

    import jwt
    from cryptography.hazmat.primitives.asymmetric import rsa

    now = int(time.time())
    claims = {"Mesh": mesh_name, "Name": "web-1", "Tags": {}, "Type": "dataplane", "iat": now, "nbf": now,
              "exp": now + 60, "jti": str(uuid.uuid4())}
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "1"})


def test_bootstrap_refusals_say_why(mesh: MeshHarness, tmp_path: Any) -> None:
    dp = {"type": "Dataplane", "mesh": "default", "name": "web-1",
          "networking": {"address": "127.0.0.1", "inbound": [{"port": 1234, "tags": {"kuma.io/service": "web"}}]}}
    e = bootstrap_error(mesh, dataplane=dp, dataplaneToken="garbage")
    assert e.code == "UNAUTHENTICATED" and "token" in e.message
    e = bootstrap_error(mesh, dataplane=dp, dataplaneToken=mesh.token("other-name"))
    assert e.code == "PERMISSION_DENIED"
    bad = {**dp, "networking": {"address": "127.0.0.1", "inbound": [{"port": 99999, "tags": {}}]}}
    e = bootstrap_error(mesh, dataplane=bad, dataplaneToken=mesh.token("web-1"))
    assert e.code == "INVALID_ARGUMENT" and "networking.inbound[0].port" in e.message
    e = bootstrap_error(mesh, dataplaneToken=mesh.token("web-1"))  # no definition and none stored
    assert e.code == "NOT_FOUND" and "--dataplane-file" in e.message
    # Without a valid token, the answer does not say whether a mesh exists (the dp-server needs no credentials).
    answers = []
    for name in ("default", "nope"):
        for token in ("x", forged_token(name)):
            e = bootstrap_error(mesh, mesh=name, dataplane={**dp, "mesh": name}, dataplaneToken=token)
            answers.append((e.code, e.message.replace(f"'{name}'", "M").replace(f"--mesh {name}", "--mesh M")))
    assert answers[:2] == answers[2:] and all(code == "UNAUTHENTICATED" for code, _ in answers)
    # A token for the service web cannot take over backend-1 (created by an operator, service backend).
    backend = {**dp, "name": "backend-1", "networking": {"address": "127.0.0.1", "inbound": [
        {"port": 1235, "tags": {"kuma.io/service": "backend"}}]}}
    mesh.apply(json.dumps(backend))
    web_token = mesh.token("", tags={"kuma.io/service": ["web"]})
    as_web = {**dp, "name": "backend-1"}
    e = bootstrap_error(mesh, name="backend-1", dataplane=as_web, dataplaneToken=web_token)
    assert e.code == "PERMISSION_DENIED" and "stored Dataplane default/backend-1" in e.message
    assert mesh.api("GET", "/meshes/default/dataplanes/backend-1").json["networking"]["inbound"][0]["port"] == 1235
    e = bootstrap_error(mesh, adminPort=0)
    assert e.code == "INVALID_ARGUMENT" and "adminPort" in e.message
    # A wrong CA: the TLS handshake fails, reported as unavailable (retryable: the operator fixes --ca-cert-file).
    cp = CpAddress("127.0.0.1", mesh.cp.ports["KUMA_DP_SERVER_PORT"])
    other_ca = ensure_cp_tls(tmp_path / "other-cp").ca_pem  # another control plane's CA
    assert other_ca is not None
    with pytest.raises(BootstrapError) as err:
        asyncio.run(fetch_bootstrap(cp, other_ca, {"mesh": "default", "name": "x", "adminPort": 1,
                                                   "dataplaneToken": "x"}, timeout=3))
    assert err.value.code == "UNAVAILABLE"
