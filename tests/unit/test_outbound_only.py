"""Outbound-only dataplanes (Kuma 2.14: no inbounds, no gateway): their identity, how policies select them,
the config they get (golden files), what MADS calls them; and policy tag maps read as Kuma reads them."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import pytest
import yaml
from cryptography import x509

from controlplane.ca import issue_identity
from controlplane.ca.manager import MeshCa
from controlplane.kds.codec import decode, encode
from controlplane.mads.assignments import compute
from controlplane.resources import Resource, ResourceValidationError, from_wire, load_all, to_wire
from controlplane.resources.dataplane import identifying_service, identity_tags, no_identity_reason
from controlplane.resources.mesh import membership_refusal
from controlplane.xds.generate.proxy import generate_snapshot
from controlplane.xds.generate.targeting import TargetRef
from tests.unit.test_ca import mesh_ca, store  # noqa: F401  (fixtures)
from tests.unit.test_xds_generate import as_json, check_golden, demo_dataplanes
from tests.unit.xds_fixtures import context, mesh, res, topology

REGISTRY = load_all()


def job(name: str = "job-1", labels: dict[str, str] | None = None, *, transparent: bool = False) -> Resource:
    networking: dict[str, Any] = {"address": "127.0.0.1",
                                  "outbound": [{"port": 20001, "tags": {"kuma.io/service": "backend"}}]}
    if transparent:
        networking["transparentProxying"] = {"redirectPortInbound": 15006, "redirectPortOutbound": 15001}
    return from_wire({"type": "Dataplane", "mesh": "default", "name": name, "labels": labels or {},
                      "networking": networking})


BATCH = {"kuma.io/workload": "batch"}


# --- identity ---------------------------------------------------------------------------------------------------


def test_identity_comes_from_the_workload_label_as_in_kuma() -> None:
    assert identity_tags(job(labels=BATCH)) == {"kuma.io/service": {"batch"}}
    assert identifying_service(job(labels=BATCH)) == "batch"
    assert no_identity_reason(job(labels=BATCH)) is None


def test_without_the_label_there_is_no_identity_and_the_reason_says_how_to_fix_it() -> None:
    assert identity_tags(job()) == {}
    assert identifying_service(job()) == "unknown"  # Kuma's mesh_proto.ServiceUnknown
    reason = no_identity_reason(job())
    assert reason is not None and "'job-1'" in reason and "kuma.io/workload: <name>" in reason


def test_a_dataplane_with_inbounds_keeps_its_services_whatever_its_labels() -> None:
    web = demo_dataplanes()[0].with_meta(labels=BATCH)
    assert identity_tags(web)["kuma.io/service"] == {"web"} and identifying_service(web) == "web"
    assert no_identity_reason(web) is None


async def test_the_certificate_names_the_workload(mesh_ca: MeshCa) -> None:  # noqa: F811
    tags = identity_tags(job(labels=BATCH))
    cert = issue_identity(mesh_ca, "m", tags["kuma.io/service"], timedelta(hours=1), tags=tags)
    leaf = x509.load_pem_x509_certificate(cert.cert_pem)
    uris = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert uris.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://m/batch",
                                                                        "kuma://kuma.io/service/batch"]


def test_mesh_constraints_do_not_keep_it_out_as_in_kuma() -> None:
    # Kuma's membership validator checks each inbound's (or the gateway's) tag set: an outbound-only proxy has
    # none, so requirements and restrictions do not apply to it.
    constrained = from_wire({"type": "Mesh", "name": "default", "constraints": {"dataplaneProxy": {
        "requirements": [{"tags": {"kuma.io/zone": "east"}}], "restrictions": [{"tags": {"kuma.io/service": "*"}}]}}})
    assert membership_refusal(constrained.spec, "default", job().spec.tag_sets()) is None  # type: ignore[arg-type]


# --- what policies select ---------------------------------------------------------------------------------------

SELECTS = [
    ({"kind": "Mesh"}, True, True),
    ({"kind": "Mesh", "proxyTypes": ["Sidecar"]}, True, True),
    ({"kind": "Mesh", "proxyTypes": ["Gateway"]}, False, False),
    ({"kind": "MeshSubset"}, True, True),
    ({"kind": "MeshSubset", "tags": {"kuma.io/service": "batch"}}, True, False),
    ({"kind": "MeshSubset", "tags": {"version": "v1"}}, False, False),
    ({"kind": "MeshService", "name": "batch"}, True, False),
    ({"kind": "MeshService", "name": "backend"}, False, False),  # an outbound is not what the proxy is
    ({"kind": "Dataplane", "name": "job-1"}, True, True),
]


@pytest.mark.parametrize("ref, with_label, without_label", SELECTS, ids=[str(c[0]) for c in SELECTS])
def test_which_top_level_target_refs_select_an_outbound_only_proxy(ref: dict[str, Any], with_label: bool,
                                                                   without_label: bool) -> None:
    target = TargetRef.model_validate(ref)
    assert target.selects_dataplane(job(labels=BATCH)) is with_label
    assert target.selects_dataplane(job()) is without_label


# --- generation (golden files: KUMA_UPDATE_GOLDEN=1, see tests/unit/test_xds_generate.py) ------------------------

TIMEOUT = res("""
type: MeshTimeout
mesh: default
name: job-timeouts
spec:
  targetRef: {kind: MeshService, name: batch}
  to:
  - targetRef: {kind: Mesh}
    default: {connectionTimeout: 2s, idleTimeout: 30s}
""")


def test_golden_outbound_only_plaintext() -> None:
    topo = topology(mesh(), [*demo_dataplanes(), job(transparent=True)])
    check_golden("outbound-only-plaintext", generate_snapshot(context(topo, "job-1")))


def test_golden_outbound_only_mtls_with_a_policy_on_its_workload() -> None:
    topo = topology(mesh(mtls="STRICT"), [*demo_dataplanes(), job(labels=BATCH)], [TIMEOUT])
    check_golden("outbound-only-mtls-timeout", generate_snapshot(context(topo, "job-1")))


def test_an_outbound_only_proxy_is_no_endpoint_and_gets_no_vip_of_its_own() -> None:
    with_job = topology(mesh(), [*demo_dataplanes(), job(labels=BATCH)])
    without = topology(mesh(), demo_dataplanes())
    for name in ("web-1", "backend-1", "db-1"):  # the others' config does not change when it joins
        assert (as_json(generate_snapshot(context(with_job, name)))
                == as_json(generate_snapshot(context(without, name))))


# --- MADS / metrics ---------------------------------------------------------------------------------------------

METRIC = res("""
type: MeshMetric
mesh: default
name: all
spec:
  targetRef: {kind: Mesh}
  default:
    backends:
    - type: Prometheus
      prometheus: {port: 5670, path: /metrics}
""")


def test_mads_names_an_outbound_only_proxy_by_its_workload_or_unknown() -> None:
    found = compute([job("job-1", BATCH), job("job-2")], {"default": [METRIC]}, "zone-1")
    assert found[("default", "job-1")].service == "batch"
    assert found[("default", "job-2")].service == "unknown"
    assert found[("default", "job-2")].labels == {"kuma.io/zone": "zone-1"}


# --- policy tag maps: YAML scalars are the strings Kuma reads -------------------------------------------------

TCP_ROUTE = """
type: MeshTCPRoute
mesh: default
name: route-1
spec:
  targetRef:
    kind: MeshGateway
    name: edge
    tags: {TAGS}
  to:
  - targetRef: {kind: Mesh}
    rules:
    - default:
        backendRefs:
        - {kind: MeshService, name: backend}
"""

COERCED = [("port: 8080", "8080"), ("port: '8080'", "8080"), ("enabled: true", "true"), ("ratio: 0.5", "0.5"),
           ("port: 6000.0", "6000")]


@pytest.mark.parametrize("tags, value", COERCED, ids=[c[0] for c in COERCED])
def test_unquoted_tag_values_are_strings_as_in_kuma(tags: str, value: str) -> None:
    route = from_wire(yaml.safe_load(TCP_ROUTE.replace("{TAGS}", "{" + tags + "}")), REGISTRY)
    assert list(route.spec.target_ref.tags.values()) == [value]  # type: ignore[attr-defined]


@pytest.mark.parametrize("tags", ["port: [8080]", "port: {a: 1}", "port: null"])
def test_tag_values_that_are_not_scalars_are_refused_with_their_path(tags: str) -> None:
    with pytest.raises(ResourceValidationError) as e:
        from_wire(yaml.safe_load(TCP_ROUTE.replace("{TAGS}", "{" + tags + "}")), REGISTRY)
    assert [p.field for p in e.value.invalid] == ['spec.targetRef.tags["port"]']


def test_subset_tags_in_to_and_from_are_coerced_too() -> None:
    doc = yaml.safe_load("""
type: MeshTrafficPermission
mesh: default
name: by-version
spec:
  targetRef: {kind: MeshSubset, tags: {version: 2}}
  from:
  - targetRef: {kind: MeshSubset, tags: {build: 1234}}
    default: {action: Allow}
""")
    mtp = from_wire(doc, REGISTRY)
    assert mtp.spec.target_ref.tags == {"version": "2"}  # type: ignore[attr-defined]
    assert mtp.spec.from_[0].target_ref.tags == {"build": "1234"}  # type: ignore[attr-defined]


def test_a_dataplane_tag_is_not_coerced_as_kuma_decodes_dataplanes_as_protobuf_json() -> None:
    doc = {"type": "Dataplane", "mesh": "default", "name": "dp-1", "networking": {
        "address": "10.0.0.1", "inbound": [{"port": 10001, "tags": {"kuma.io/service": "web", "version": 2}}]}}
    with pytest.raises(ResourceValidationError) as e:
        from_wire(doc, REGISTRY)
    assert [p.field for p in e.value.invalid] == ['networking.inbound[0].tags["version"]']


def test_policies_tell_outbound_only_proxies_apart_by_their_workload() -> None:
    # Selections are cached per tag signature; two outbound-only proxies differ by their identity, not by
    # inbounds (they have none), so a policy on one workload must not reach the other.
    topo = topology(mesh(), [*demo_dataplanes(), job("job-1", BATCH), job("job-2", {"kuma.io/workload": "other"}),
                             job("job-3")], [TIMEOUT])
    timeouts = {name: '"2s"' in json.dumps(as_json(generate_snapshot(context(topo, name))))
                for name in ("job-1", "job-2", "job-3")}
    assert timeouts == {"job-1": True, "job-2": False, "job-3": False}


ACCESS_LOG = res("""
type: MeshAccessLog
mesh: default
name: outbound-logs
spec:
  targetRef: {kind: Mesh}
  to:
  - targetRef: {kind: Mesh}
    default:
      backends:
      - type: File
        file: {path: /dev/stdout, format: {type: Plain, plain: "%KUMA_SOURCE_SERVICE%->%KUMA_DESTINATION_SERVICE%"}}
""")


@pytest.mark.parametrize("labels, source", [(BATCH, "batch->backend"), ({}, "unknown->backend")])
def test_access_logs_name_the_source_as_kuma_does(labels: dict[str, str], source: str) -> None:
    topo = topology(mesh(), [*demo_dataplanes(), job(labels=labels)], [ACCESS_LOG])
    assert source in json.dumps(as_json(generate_snapshot(context(topo, "job-1"))))


def test_it_crosses_kds_unchanged() -> None:
    # A zone sends its Dataplanes to global over KDS (Kuma's protobuf specs): no inbounds and the workload
    # label survive the trip, so global's listings see the same outbound-only proxy.
    dp = job(labels=BATCH, transparent=True)
    rtype = REGISTRY.by_name("Dataplane")
    assert rtype is not None
    assert to_wire(decode(rtype, encode(dp).message)) == to_wire(dp)
