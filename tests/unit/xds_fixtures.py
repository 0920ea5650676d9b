"""Building blocks for generator tests: meshes, dataplanes and policies in their universal YAML form."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from controlplane.resources import Resource, from_wire, load_all
from controlplane.xds.generate.context import Identity, ProxyContext
from controlplane.xds.generate.memo import ResourceMemo
from controlplane.xds.topology import MeshTopology, build_topology

load_all()

CA_PEM = b"-----BEGIN CERTIFICATE-----\nMESH-CA\n-----END CERTIFICATE-----\n"


def res(text: str) -> Resource:
    return from_wire(yaml.safe_load(text))


def mesh(name: str = "default", mtls: str | None = None) -> Resource:
    doc: dict[str, Any] = {"type": "Mesh", "name": name}
    if mtls:
        doc["mtls"] = {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin", "mode": mtls}]}
    return from_wire(doc)


def dataplane(name: str, service: str, *, port: int, service_port: int, address: str = "127.0.0.1",
              protocol: str = "tcp", outbounds: Sequence[tuple[int, str]] = (), mesh_name: str = "default",
              extra_tags: dict[str, str] | None = None) -> Resource:
    tags = {"kuma.io/service": service, "kuma.io/protocol": protocol, **(extra_tags or {})}
    return from_wire({
        "type": "Dataplane", "mesh": mesh_name, "name": name,
        "networking": {
            "address": address,
            "inbound": [{"port": port, "servicePort": service_port, "tags": tags}],
            "outbound": [{"port": p, "tags": {"kuma.io/service": s}} for p, s in outbounds],
        },
    })


def topology(mesh_res: Resource, dataplanes: Sequence[Resource], policies: Sequence[Resource] = (),
             generation: int = 1, *, zone: str = "", ingresses: Sequence[Resource] = ()) -> MeshTopology:
    by_type: dict[str, list[Resource]] = {}
    for p in policies:
        by_type.setdefault(p.type.name, []).append(p)
    mtls_on = bool(mesh_res.spec.mtls and mesh_res.spec.mtls.enabled())  # type: ignore[attr-defined]
    return build_topology(mesh_res, dataplanes, by_type, generation, CA_PEM if mtls_on else None, zone=zone,
                          ingresses=ingresses)


def context(topo: MeshTopology, dp_name: str, memo: ResourceMemo | None = None) -> ProxyContext:
    identity = None
    if topo.ca_bundle_pem:
        identity = Identity(cert_pem=f"CERT {dp_name}".encode(), key_pem=f"KEY {dp_name}".encode(),
                            fingerprint=dp_name)
    return ProxyContext(topology=topo, dataplane=topo.dataplanes[dp_name], identity=identity,
                        memo=memo if memo is not None else ResourceMemo())
