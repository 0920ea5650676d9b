"""The port-80 promise through real Envoy: the proxy that owns its host's VIPs listens on VIP:80 and
VIP:<service port> for every service of its mesh, and both reach the service on its real port, with mTLS."""

from __future__ import annotations

from collections.abc import Callable

from tests.apps.runner import App
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.integration.mesh_harness import MeshHarness, eventually, http

MTLS = """
type: Mesh
name: default
mtls:
  enabledBackend: ca-1
  backends: [{name: ca-1, type: builtin}]
---
type: MeshTrafficPermission
mesh: default
name: allow-all
spec:
  targetRef: {kind: Mesh}
  from: [{targetRef: {kind: Mesh}, default: {action: Allow}}]
"""


def test_vip_80_reaches_the_real_port(cp_factory: Callable[..., CpProcess],
                                      envoy_factory: Callable[..., EnvoyProcess],
                                      app_factory: Callable[..., App]) -> None:
    mesh = MeshHarness(cp_factory(), envoy_factory, app_factory)
    mesh.apply(MTLS)
    backend = mesh.app("echo_http", "--name", "backend")  # listens on some port, not 80
    client_app = mesh.app("echo_http", "--name", "client")
    mesh.dataplane("backend-1", "backend", app_port=backend.port)
    client = mesh.dataplane("client-1", "client", app_port=client_app.port, vip_listeners=True)
    vip = eventually(lambda: mesh.api("GET", "/meshes/default/vips").json["vips"].get("backend"),
                     message="backend has a VIP")
    client.envoy.wait_listener(f"outbound:{vip}:80", timeout=20)
    client.envoy.wait_listener(f"outbound:{vip}:{backend.port}", timeout=20)
    for port in (80, backend.port):
        _, body = eventually(lambda p=port: (r := http(p, host=vip)) and r[0] == 200 and r,
                                  message=f"{vip}:{port} -> backend")
        assert isinstance(body, dict) and body["service"] == "backend"
        assert "URI=spiffe://default/client" in body["headers"]["x-forwarded-client-cert"]
    # Only the VIP owner gets them: the backend's proxy has no VIP listeners.
    backend_dp = mesh.dataplanes["backend-1"]
    assert not [n for n in backend_dp.envoy.listeners() if n.startswith("outbound:127.24")]

