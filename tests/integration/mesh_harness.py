"""A real mesh on loopback for integration tests: a kuma-cp process, dataplanes whose Envoy got its
bootstrap from the dp-server exactly as kuma-dp gets it, and small apps behind them.

    mesh = MeshHarness(cp, envoy_factory, app_factory)
    backend = mesh.app("echo_http", "--name", "backend")
    mesh.dataplane("backend-1", "backend", app_port=backend.port, protocol="http")
    web = mesh.dataplane("web-1", "web", app_port=..., outbounds={"backend": port})
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

from agent.bootstrap_client import CpAddress, fetch_bootstrap
from controlplane.resources import load_all
from tests.apps.runner import App
from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess
from tests.integration.envoy_harness import EnvoyProcess
from tests.ports import free_port


@dataclass
class Dataplane:
    name: str
    service: str
    inbound_port: int
    outbounds: dict[str, int]
    envoy: EnvoyProcess
    doc: dict[str, Any]


@dataclass
class MeshHarness:
    cp: CpProcess
    envoy_factory: Callable[..., EnvoyProcess]
    app_factory: Callable[..., App]
    mesh: str = "default"
    dataplanes: dict[str, Dataplane] = field(default_factory=dict)

    # --- control plane -------------------------------------------------------------------------------------------

    def api(self, method: str, path: str, body: Any = None) -> Reply:
        return call(method, self.cp.http_url + path, body)

    def apply(self, text: str) -> None:
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            path = (f"/meshes/{doc['mesh']}/{_plural(doc['type'])}/{doc['name']}" if "mesh" in doc
                    else f"/{_plural(doc['type'])}/{doc['name']}")
            r = self.api("PUT", path, doc)
            assert r.status in (200, 201), f"apply {doc['type']} {doc['name']}: {r.status} {r.raw!r}"

    def delete(self, type_plural: str, name: str) -> None:
        r = self.api("DELETE", f"/meshes/{self.mesh}/{type_plural}/{name}")
        assert r.status == 200, r.raw

    def token(self, name: str, *, mesh: str | None = None, tags: dict[str, list[str]] | None = None) -> str:
        body: dict[str, Any] = {"mesh": mesh or self.mesh, "name": name}
        if tags:
            body["tags"] = tags
        r = self.api("POST", "/tokens/dataplane", body)
        assert r.status == 200, r.raw
        return r.raw.decode()

    def bootstrap(self, name: str, token: str, dataplane: dict[str, Any] | None, *,
                  api_type: str | None = None, mesh: str | None = None, vip_listeners: bool = False
                  ) -> dict[str, Any]:
        request: dict[str, Any] = {"mesh": mesh or self.mesh, "name": name, "dataplaneToken": token,
                                   "adminPort": free_port(), "dataplane": dataplane, "vipListeners": vip_listeners}
        if api_type:
            request["apiType"] = api_type
        cp = CpAddress("127.0.0.1", self.cp.ports["KUMA_DP_SERVER_PORT"])
        answer = asyncio.run(fetch_bootstrap(cp, self.cp.ca_file.read_bytes(), request))
        return answer["bootstrap"]  # type: ignore[no-any-return]

    # --- data plane ----------------------------------------------------------------------------------------------

    def app(self, module: str, *args: str) -> App:
        return self.app_factory(module, *args)

    def dataplane(self, name: str, service: str, *, app_port: int, protocol: str = "http",
                  outbounds: dict[str, int] | None = None, api_type: str | None = None,
                  extra_tags: dict[str, str] | None = None, wait: bool = True,
                  vip_listeners: bool = False) -> Dataplane:
        """Register a dataplane through the bootstrap call and run its Envoy; outbound ports are chosen
        (free) when given as 0."""
        inbound_port = free_port()
        chosen = {svc: (p or free_port()) for svc, p in (outbounds or {}).items()}
        doc = {
            "type": "Dataplane", "mesh": self.mesh, "name": name,
            "networking": {
                "address": "127.0.0.1",
                "inbound": [{"port": inbound_port, "servicePort": app_port,
                             "tags": {"kuma.io/service": service, "kuma.io/protocol": protocol,
                                      **(extra_tags or {})}}],
                "outbound": [{"port": p, "tags": {"kuma.io/service": svc}} for svc, p in chosen.items()],
            },
        }
        bootstrap = self.bootstrap(name, self.token(name), doc, api_type=api_type, vip_listeners=vip_listeners)
        envoy = self.envoy_factory(bootstrap, name=name)
        dp = Dataplane(name, service, inbound_port, chosen, envoy, doc)
        self.dataplanes[name] = dp
        if wait:
            envoy.wait_listener(f"inbound:127.0.0.1:{inbound_port}", timeout=20)
            for port in chosen.values():
                envoy.wait_listener(f"outbound:127.0.0.1:{port}", timeout=20)
        return dp


def _plural(type_name: str) -> str:
    rtype = load_all().by_name(type_name)
    assert rtype is not None, type_name
    return rtype.plural


def http(port: int, path: str = "/", *, timeout: float = 5.0, headers: dict[str, str] | None = None,
         host: str = "127.0.0.1") -> tuple[int, dict[str, Any] | str]:
    """GET through an Envoy listener on loopback; (status, JSON body or text)."""
    req = urllib.request.Request(f"http://{host}:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode()
            status = resp.status
    except urllib.error.HTTPError as e:
        body, status = e.read().decode(), e.code
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body


def eventually(check: Callable[[], Any], timeout: float = 15.0, interval: float = 0.1, message: str = "") -> Any:
    """Retry `check` until it returns a truthy value (no assertion error) or the timeout passes."""
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except (AssertionError, OSError) as e:
            last = e
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s: {message} (last error: {last})")

