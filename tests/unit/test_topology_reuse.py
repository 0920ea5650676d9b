"""A mesh topology built from the previous one (controlplane/xds/topology.py, `previous=`: what was computed for
the very same Dataplane objects and for services whose endpoints did not change is reused) equals one built
from scratch, after random series of changes: dataplanes coming, going, moving, turning unhealthy, changing
services, protocols and ports, other zones' ingresses changing, the zone itself changing."""

from __future__ import annotations

import random

from controlplane.resources import Resource, from_wire
from controlplane.xds.topology import MeshTopology, build_topology
from tests.unit.test_crosszone_xds import ingress, offer
from tests.unit.xds_fixtures import CA_PEM, mesh

SERVICES = ("backend", "billing", "cache", "reports")


def random_dataplane(rnd: random.Random, name: str) -> Resource:
    inbounds = []
    for i in range(rnd.randrange(0, 3)):
        inbound = {"port": 10000 + i, "servicePort": rnd.choice((8080, 8081)),
                   "tags": {"kuma.io/service": rnd.choice(SERVICES), "kuma.io/protocol": rnd.choice(("http", "tcp")),
                            "version": rnd.choice(("v1", "v2"))}}
        if rnd.random() < 0.2:
            inbound["health"] = {"ready": False}
        inbounds.append(inbound)
    return from_wire({"type": "Dataplane", "mesh": "default", "name": name, "networking": {
        "address": f"10.0.{rnd.randrange(3)}.{rnd.randrange(1, 4)}", "inbound": inbounds}})


def fields(topo: MeshTopology) -> tuple[object, ...]:
    return (dict(topo.endpoints), dict(topo.endpoint_keys), dict(topo.protocols), dict(topo.service_ports),
            dict(topo.dataplanes), topo.zone)


def test_a_topology_built_from_the_previous_one_equals_one_built_from_scratch() -> None:
    rnd = random.Random(99)
    the_mesh = mesh(mtls="STRICT")
    dataplanes = {f"dp-{i}": random_dataplane(rnd, f"dp-{i}") for i in range(12)}
    ingresses = [ingress("z2", "zone-2", [offer("backend", 2)])]
    zone = "zone-1"
    previous = build_topology(the_mesh, list(dataplanes.values()), {}, 1, CA_PEM, zone=zone, ingresses=ingresses)
    reused = 0
    for step in range(2, 300):
        roll = rnd.random()
        if roll < 0.5:
            for _ in range(rnd.randrange(1, 3)):
                name = f"dp-{rnd.randrange(15)}"
                if name in dataplanes and rnd.random() < 0.3:
                    del dataplanes[name]
                else:
                    dataplanes[name] = random_dataplane(rnd, name)
        elif roll < 0.8:
            pass  # nothing changed: the same objects
        elif roll < 0.95:
            ingresses = [ingress("z2", "zone-2", [offer(rnd.choice(SERVICES), rnd.randrange(0, 3))])]
        else:
            zone = rnd.choice(("zone-1", "zone-3", ""))
        ordered = sorted(dataplanes.values(), key=lambda d: d.meta.name)
        built = build_topology(the_mesh, ordered, {}, step, CA_PEM, zone=zone, ingresses=ingresses, previous=previous)
        fresh = build_topology(the_mesh, ordered, {}, step, CA_PEM, zone=zone, ingresses=ingresses)
        assert fields(built) == fields(fresh), f"step {step}"
        reused += sum(1 for name, (dp, _) in built.contributions.items()
                      if name in previous.contributions and previous.contributions[name][0] is dp
                      and previous.zone == zone)
        previous = built
    assert reused > 1000  # most dataplanes were the same objects from one step to the next
