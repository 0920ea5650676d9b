"""Cross-zone config from stored resources as KDS leaves them: other zones' ZoneIngresses become priority-1
endpoints of the caller's clusters (weighted by the instances they front, merged per ingress), local endpoints
carry the zone's kuma.io/zone tag, and the zone ingress's own config routes Kuma's SNI names to local instances
(subsets named by the mesh's routes included) without terminating TLS. Golden files: KUMA_UPDATE_GOLDEN=1."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from google.protobuf import json_format
from google.protobuf.any_pb2 import Any as AnyPb

from controlplane.resources import Resource, from_wire
from controlplane.xds.generate.envoy import sni
from controlplane.xds.generate.ingress import generate_ingress
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.resources import CLUSTER, ENDPOINT, LISTENER
from controlplane.xds.snapshot import Snapshot
from tests.unit.xds_fixtures import context, dataplane, mesh, res, topology

GOLDEN = Path(__file__).parent / "golden" / "xds" / "crosszone"
UPDATE = os.environ.get("KUMA_UPDATE_GOLDEN") == "1"


def ingress(name: str, zone: str, services: list[dict[str, Any]], *, address: str = "10.2.0.1",
            advertised: str | None = "203.0.113.7", port: int = 10001) -> Resource:
    networking: dict[str, Any] = {"address": address, "port": port}
    if advertised:
        networking.update(advertisedAddress=advertised, advertisedPort=port + 1000)
    return from_wire({"type": "ZoneIngress", "name": name, "zone": zone, "networking": networking,
                      "availableServices": services})


def offer(service: str, instances: int, *, ports: list[int] | None = None, **tags: str) -> dict[str, Any]:
    return {"mesh": "default", "instances": instances, "ports": ports or [],
            "tags": {"kuma.io/service": service, "kuma.io/protocol": "http", **tags}}


ZONE_2 = [
    ingress("z2-a", "zone-2", [offer("invoices", 2, version="v1"), offer("invoices", 1, version="v2"),
                               offer("billing", 2, ports=[8080])]),
    ingress("z2-b", "zone-2", [offer("invoices", 3, version="v1"), offer("billing", 2, ports=[8080])],
            advertised=None, address="10.2.0.2"),
    # zone-1's own ingress (skipped: local traffic goes direct) and another mesh's service (skipped).
    ingress("z1", "zone-1", [offer("invoices", 1)]),
    ingress("z3", "zone-3", [{"mesh": "other", "instances": 4, "tags": {"kuma.io/service": "billing"}}]),
]


def zone1_dataplanes() -> list[Resource]:
    return [
        dataplane("invoices-1", "invoices", port=10010, service_port=9010, protocol="http",
                  extra_tags={"kuma.io/zone": "elsewhere", "version": "v1"}),  # claims another zone
        dataplane("users-1", "users", port=10020, service_port=9020, protocol="http",
                  outbounds=[(20001, "invoices"), (20002, "billing")]),
    ]


def as_dict(r: Any) -> dict[str, Any]:
    return json_format.MessageToDict(AnyPb(type_url=r.type_url, value=r.body), preserving_proto_field_name=True)


def check_golden(name: str, snap: Snapshot) -> dict[str, Any]:
    doc = {t.rsplit(".", 1)[-1]: {n: as_dict(r) for n, r in sorted(snap.of_type(t).items())}
           for t in (CLUSTER, ENDPOINT, LISTENER)}
    text = json.dumps(doc, indent=2, sort_keys=True) + "\n"
    golden = GOLDEN / f"{name}.json"
    if UPDATE:
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"{golden} is missing: run with KUMA_UPDATE_GOLDEN=1 to create it, then review it"
    assert text == golden.read_text(), f"config differs from {golden} (KUMA_UPDATE_GOLDEN=1 to update)"
    return doc


def test_sni_is_kumas_form_with_the_subset_tags_sorted_with_the_mesh() -> None:
    assert sni("default", "billing") == "billing{mesh=default}"
    assert sni("default", "invoices", (("version", "v2"), ("kuma.io/zone", "zone-2"))) == \
        "invoices{kuma.io/zone=zone-2,mesh=default,version=v2}"
    assert sni("m", "a", (("kuma.io/service", "a"),)) == "a{mesh=m}"  # the service is not a tag of its SNI


def test_other_zones_ingresses_are_failover_endpoints_weighted_by_instances() -> None:
    topo = topology(mesh(mtls="STRICT"), zone1_dataplanes(), zone="zone-1", ingresses=ZONE_2)
    # The zone overrides what a dataplane claims: kuma.io/zone is where it runs.
    local = topo.endpoints["invoices"][0]
    assert not local.remote and dict(local.tags)["kuma.io/zone"] == "zone-1"
    # billing lives only in zone-2: known here with its protocol and its real port (for VIP:8080).
    assert topo.protocol("billing") == "http" and topo.service_ports["billing"] == (8080,)
    snap = generate_snapshot(context(topo, "users-1"))
    doc = check_golden("caller-zone-1", snap)
    invoices = doc["ClusterLoadAssignment"]["invoices"]["endpoints"]
    assert [(g.get("priority", 0), g.get("locality", {}).get("zone")) for g in invoices] == \
        [(0, "zone-1"), (1, "zone-2")]
    # z2-a fronts 3 instances (two tag sets, one endpoint), z2-b 3, at its own address (no advertised one).
    remote = {e["endpoint"]["address"]["socket_address"]["address"]: e["load_balancing_weight"]
              for e in invoices[1]["lb_endpoints"]}
    assert remote == {"203.0.113.7": 3, "10.2.0.2": 3}
    billing = doc["ClusterLoadAssignment"]["billing"]["endpoints"]
    assert [g["priority"] for g in billing] == [1] and len(billing[0]["lb_endpoints"]) == 2
    cluster = doc["Cluster"]["billing"]
    assert cluster["outlier_detection"]["consecutive_5xx"] == 3  # a dead ingress is ejected
    assert cluster["transport_socket"]["typed_config"]["sni"] == "billing{mesh=default}"


def test_no_remote_endpoints_without_mtls_and_none_in_a_single_zone() -> None:
    plain = topology(mesh(), zone1_dataplanes(), zone="zone-1", ingresses=ZONE_2)
    assert "billing" not in plain.endpoints and all(not e.remote for e in plain.endpoints["invoices"])
    single = topology(mesh(mtls="STRICT"), zone1_dataplanes())
    eps = single.endpoints["invoices"]
    assert len(eps) == 1 and dict(eps[0].tags)["kuma.io/zone"] == "elsewhere"  # unnamed zone: left alone
    snap = generate_snapshot(context(single, "users-1"))
    cla = as_dict(snap.of_type(ENDPOINT)["invoices"])
    assert "locality" not in cla["endpoints"][0] and "load_balancing_weight" not in cla["endpoints"][0][
        "lb_endpoints"][0]  # one group, as before multi-zone
    assert "outlier_detection" not in as_dict(snap.of_type(CLUSTER)["invoices"])


SPLIT = """
type: MeshHTTPRoute
mesh: default
name: invoices-by-zone
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: invoices}
    rules:
    - matches: [{path: {type: PathPrefix, value: /}}]
      default:
        backendRefs:
        - {kind: MeshServiceSubset, name: invoices, tags: {kuma.io/zone: zone-1}, weight: 80}
        - {kind: MeshServiceSubset, name: invoices, tags: {kuma.io/zone: zone-2}, weight: 20}
        - {kind: MeshServiceSubset, name: invoices, tags: {version: v3}, weight: 1}
"""


def zone2_dataplanes() -> list[Resource]:
    return [
        dataplane("billing-1", "billing", port=10030, service_port=8080, address="10.2.1.1", protocol="http"),
        dataplane("invoices-2", "invoices", port=10040, service_port=9040, address="10.2.1.2", protocol="http",
                  extra_tags={"version": "v1"}),
    ]


def test_the_ingress_routes_each_sni_to_local_instances_without_terminating_tls() -> None:
    topo = topology(mesh(mtls="STRICT"), zone2_dataplanes(), [res(SPLIT)], zone="zone-2", ingresses=ZONE_2)
    snap = generate_ingress(ZONE_2[0], [topo], ResourceMemo())
    doc = check_golden("ingress-zone-2", snap)
    (listener,) = doc["Listener"].values()
    assert listener["address"]["socket_address"] == {"address": "10.2.0.1", "port_value": 10001}
    assert [f["name"] for f in listener["listener_filters"]] == ["envoy.filters.listener.tls_inspector"]
    names = [c["filter_chain_match"]["server_names"] for c in listener["filter_chains"]]
    # Every local service, and the zone-2 subset the route names; not zone-1's, not v3 (no instance here).
    assert names == [["billing{mesh=default}"], ["invoices{kuma.io/zone=zone-2,mesh=default}"],
                     ["invoices{mesh=default}"]]
    assert all("transport_socket" not in c for c in listener["filter_chains"])  # passthrough
    assert all("transport_socket" not in c for c in doc["Cluster"].values())
    # Only this zone's instances, never the remote ingresses the same topology holds.
    addresses = {e["endpoint"]["address"]["socket_address"]["address"]
                 for cla in doc["ClusterLoadAssignment"].values() for g in cla["endpoints"] for e in g["lb_endpoints"]}
    assert addresses == {"10.2.1.1", "10.2.1.2"}


def test_an_ingress_serves_only_meshes_with_mtls() -> None:
    plain = topology(mesh(), zone2_dataplanes(), zone="zone-2")
    snap = generate_ingress(ZONE_2[0], [plain], ResourceMemo())
    assert not snap.of_type(LISTENER) and not snap.of_type(CLUSTER)  # no SNI to route by


def test_locality_awareness_disabled_spreads_a_destination_over_every_zone_at_one_priority() -> None:
    spread = res("""
type: MeshLoadBalancingStrategy
mesh: default
name: spread-invoices
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: MeshService, name: invoices}
    default: {localityAwareness: {disabled: true}}
""")
    topo = topology(mesh(mtls="STRICT"), zone1_dataplanes(), [spread], zone="zone-1", ingresses=ZONE_2)
    snap = generate_snapshot(context(topo, "users-1"))
    invoices = as_dict(snap.of_type(ENDPOINT)["invoices"])["endpoints"]
    assert [(g.get("priority", 0), g["locality"]["zone"]) for g in invoices] == [(0, "zone-1"), (0, "zone-2")]
    billing = as_dict(snap.of_type(ENDPOINT)["billing"])["endpoints"]
    assert [g.get("priority", 0) for g in billing] == [1]  # the policy names invoices only
