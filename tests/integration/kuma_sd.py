"""Prometheus' `kuma_sd_configs` client, for Prometheus builds that lack it.

Debian's `prometheus` package (2.42 on bookworm) is built without the xDS discoveries, so its config loader
refuses `kuma_sd_configs` ("field kuma_sd_configs not found in type config.ScrapeConfig"). Where the installed
Prometheus has it (`supports_kuma_sd`), tests use it directly. Where it does not, `KumaSdBridge` does what
Prometheus' discovery/xds/client.go and kuma.go do, as strictly: a DiscoveryRequest in proto3 JSON
(versionInfo, responseNonce, typeUrl, node.id) POSTed to `/v3/discovery:monitoringassignments?fetch-timeout=`,
304 for "no change", the DiscoveryResponse parsed with protobuf's JSON parser (unknown fields and unresolvable
Any types are errors, as with Go's protojson), the MonitoringAssignment message declared from Kuma's
observability/v1/mads.proto, and the same `__meta_kuma_*` labels; it writes the target groups to a file the
real Prometheus reads with `file_sd_configs`. Prometheus then scrapes the real kuma-dp endpoints.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import yaml
from envoy.service.discovery.v3 import discovery_pb2
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory

TYPE_URL = "type.googleapis.com/kuma.observability.v1.MonitoringAssignment"
PATH = "/v3/discovery:monitoringassignments"


def _assignment_class() -> Any:
    """kuma.observability.v1.MonitoringAssignment (field names and numbers from Kuma's mads.proto)."""
    pool = descriptor_pool.Default()
    try:
        return message_factory.GetMessageClass(pool.FindMessageTypeByName("kuma.observability.v1.MonitoringAssignment"))
    except KeyError:
        pass
    f = descriptor_pb2.FileDescriptorProto(name="kuma_vm_tests/observability/v1/mads.proto",
                                           package="kuma.observability.v1", syntax="proto3")
    string, message, optional, repeated = (descriptor_pb2.FieldDescriptorProto.TYPE_STRING,
                                           descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE,
                                           descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL,
                                           descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED)

    def labels_entry(parent: descriptor_pb2.DescriptorProto) -> None:
        entry = parent.nested_type.add(name="LabelsEntry")
        entry.options.map_entry = True
        entry.field.add(name="key", number=1, type=string, label=optional, json_name="key")
        entry.field.add(name="value", number=2, type=string, label=optional, json_name="value")

    ma = f.message_type.add(name="MonitoringAssignment")
    target = ma.nested_type.add(name="Target")
    for name, number, json_name in (("name", 1, "name"), ("scheme", 2, "scheme"), ("address", 3, "address"),
                                    ("metrics_path", 4, "metricsPath")):
        target.field.add(name=name, number=number, type=string, label=optional, json_name=json_name)
    labels_entry(target)
    target.field.add(name="labels", number=5, type=message, label=repeated, json_name="labels",
                     type_name=".kuma.observability.v1.MonitoringAssignment.Target.LabelsEntry")
    ma.field.add(name="mesh", number=2, type=string, label=optional, json_name="mesh")
    ma.field.add(name="service", number=3, type=string, label=optional, json_name="service")
    ma.field.add(name="targets", number=4, type=message, label=repeated, json_name="targets",
                 type_name=".kuma.observability.v1.MonitoringAssignment.Target")
    labels_entry(ma)
    ma.field.add(name="labels", number=5, type=message, label=repeated, json_name="labels",
                 type_name=".kuma.observability.v1.MonitoringAssignment.LabelsEntry")
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("kuma.observability.v1.MonitoringAssignment"))


def _sanitize(name: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in name)


def target_groups(response: Any) -> list[dict[str, Any]]:
    """Prometheus' convertKumaV1MonitoringAssignment: one target group per target, `__meta_kuma_*` labels."""
    cls = _assignment_class()
    groups = []
    for resource in response.resources:
        assert resource.type_url == TYPE_URL, resource.type_url
        a = cls()
        resource.Unpack(a)
        common = {f"__meta_kuma_label_{_sanitize(k)}": v for k, v in a.labels.items()}
        common.update({"__meta_kuma_mesh": a.mesh, "__meta_kuma_service": a.service})
        for t in a.targets:
            labels = {f"__meta_kuma_label_{_sanitize(k)}": v for k, v in t.labels.items()}
            labels.update(common)
            labels.update({"__meta_kuma_dataplane": t.name, "instance": t.name, "__scheme__": t.scheme,
                           "__metrics_path__": t.metrics_path})
            groups.append({"targets": [t.address], "labels": labels})
    return groups


class KumaSdClient:
    def __init__(self, server: str, client_id: str, fetch_timeout: str = "5s") -> None:
        self.endpoint = f"{server.rstrip('/')}{PATH}?fetch-timeout={fetch_timeout}"
        self.client_id, self.version, self.nonce = client_id, "", ""

    def fetch(self, timeout: float = 20.0) -> list[dict[str, Any]] | None:
        """The target groups when they changed; None for 304 (no change within the fetch timeout)."""
        request = discovery_pb2.DiscoveryRequest(version_info=self.version, response_nonce=self.nonce,
                                                 type_url=TYPE_URL)
        request.node.id = self.client_id
        body = json_format.MessageToJson(request).encode()
        req = urllib.request.Request(self.endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            if e.code == 304:
                return None
            raise
        _assignment_class()
        response = discovery_pb2.DiscoveryResponse()
        json_format.Parse(raw, response)  # strict: unknown fields or an unresolvable Any fail here
        self.version, self.nonce = response.version_info, response.nonce
        return target_groups(response)


class KumaSdBridge:
    """Follows MADS like Prometheus' kuma_sd and writes the target groups to `file` for file_sd_configs."""

    def __init__(self, server: str, file: Path, client_id: str = "prometheus") -> None:
        self.client, self.file = KumaSdClient(server, client_id), file
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kuma-sd-bridge", daemon=True)
        self.file.write_text("[]")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                groups = self.client.fetch()
            except Exception as e:  # kept for the test's failure message; the loop goes on like Prometheus'
                self.errors.append(f"{type(e).__name__}: {e}")
                self._stop.wait(0.5)
                continue
            if groups is not None:
                tmp = self.file.with_suffix(".tmp")
                tmp.write_text(json.dumps(groups))
                tmp.replace(self.file)

    def __enter__(self) -> KumaSdBridge:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def supports_kuma_sd(directory: Path) -> bool:
    """Does the installed Prometheus accept `kuma_sd_configs`? (promtool checks a config that uses it)."""
    directory.mkdir(parents=True, exist_ok=True)
    config = directory / "probe.yml"
    config.write_text(yaml.safe_dump({"scrape_configs": [{"job_name": "probe", "kuma_sd_configs": [
        {"server": "http://127.0.0.1:5676"}]}]}))
    try:
        result = subprocess.run(["promtool", "check", "config", str(config)], capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0
