"""The dp-server's authenticator on a real store with real tokens: a token binds the service, name and proxy type
it names, against the Dataplane sent and the one stored; an operator's Dataplane is not replaced by a kuma-dp's
own definition without a name-bound token; a bad signature reads the same whether or not the mesh exists."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from controlplane.resources import from_wire, load_all
from controlplane.store.memory import MemoryStore
from controlplane.tokens.service import TokenService
from controlplane.xds.auth import MANAGED_LABEL, MANAGED_VALUE, DataplaneAuthenticator
from controlplane.xds.callbacks import XdsAuthError

load_all()


def dataplane(name: str, service: str, *, labels: dict[str, str] | None = None, port: int = 20001) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "Dataplane", "mesh": "demo", "name": name, "networking": {
        "address": "10.0.0.1", "inbound": [{"port": port, "servicePort": 8080, "tags": {"kuma.io/service": service}}]}}
    if labels:
        doc["labels"] = labels
    return doc


@pytest.fixture
async def rig() -> AsyncIterator[tuple[MemoryStore, TokenService, DataplaneAuthenticator]]:
    store = MemoryStore()
    await store.start()
    for mesh in ("demo", "second"):
        await store.create(from_wire({"type": "Mesh", "name": mesh}))
    tokens = TokenService(store)
    yield store, tokens, DataplaneAuthenticator(store, tokens)
    await store.close()


async def refused(auth: DataplaneAuthenticator, *args: Any, **kwargs: Any) -> XdsAuthError:
    with pytest.raises(XdsAuthError) as e:
        await auth.identify(*args, **kwargs)
    return e.value


async def test_a_service_token_cannot_take_over_another_services_dataplane(rig: Any) -> None:
    store, tokens, auth = rig
    await store.create(from_wire(dataplane("backend-1", "backend", labels={MANAGED_LABEL: MANAGED_VALUE})))
    web_token = await tokens.issuer.issue_dataplane_token("demo", tags={"kuma.io/service": ["web"]})
    # Its own definition says web: fine for the token, but the stored backend-1 is backend's.
    e = await refused(auth, "demo", "backend-1", web_token, dataplane("backend-1", "web"))
    assert e.code == grpc.StatusCode.PERMISSION_DENIED
    assert "stored Dataplane demo/backend-1" in e.message and "kuma.io/service=backend" in e.message
    # A new name of its own service registers.
    caller = await auth.identify("demo", "web-1", web_token, dataplane("web-1", "web"))
    assert caller.registering and caller.name == "web-1"


async def test_an_operators_dataplane_is_replaced_only_with_a_token_bound_to_its_name(rig: Any) -> None:
    store, tokens, auth = rig
    stored = from_wire(dataplane("web-1", "web"))
    await store.create(stored)
    service_token = await tokens.issuer.issue_dataplane_token("demo", tags={"kuma.io/service": ["web"]})
    changed = dataplane("web-1", "web", port=20099)
    e = await refused(auth, "demo", "web-1", service_token, changed)
    assert e.code == grpc.StatusCode.PERMISSION_DENIED and "created by an operator" in e.message
    assert "--name web-1" in e.message
    # The same definition, or none (run the stored one), is fine; a name-bound token may replace it.
    assert (await auth.identify("demo", "web-1", service_token, dataplane("web-1", "web"))).registering
    assert not (await auth.identify("demo", "web-1", service_token, None)).registering
    named = await tokens.issuer.issue_dataplane_token("demo", "web-1")
    assert (await auth.identify("demo", "web-1", named, changed)).dataplane.spec != stored.spec


async def test_the_tokens_proxy_type_is_enforced(rig: Any) -> None:
    _, tokens, auth = rig
    ingress_token = await tokens.issuer.issue_dataplane_token("demo", "web-1", type="ingress")
    e = await refused(auth, "demo", "web-1", ingress_token, dataplane("web-1", "web"))
    assert e.code == grpc.StatusCode.PERMISSION_DENIED and "type 'ingress', not 'dataplane'" in e.message
    # A zone ingress proves its zone with a zone token: a dataplane token does not run one.
    dp_token = await tokens.issuer.issue_dataplane_token("demo", "web-1")
    zoned = DataplaneAuthenticator(auth.store, tokens, zone="zone-1")
    e = await refused(zoned, "", "ingress-1", dp_token, ingress("ingress-1"), proxy_type="ingress")
    assert e.code == grpc.StatusCode.UNAUTHENTICATED and "--zone zone-1 --scope ingress" in e.message


def ingress(name: str, zone: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "ZoneIngress", "name": name, "networking": {
        "address": "10.0.0.9", "port": 10001, "advertisedAddress": "198.18.0.9", "advertisedPort": 443}}
    if zone:
        doc["zone"] = zone
    return doc


async def test_a_zone_ingress_needs_a_zone_token_of_its_zone_with_the_ingress_scope(rig: Any) -> None:
    store, tokens, _ = rig
    auth = DataplaneAuthenticator(store, tokens, zone="zone-1")
    good = await tokens.issuer.issue_zone_token("zone-1", ["ingress"])
    caller = await auth.identify("", "ingress-1", good, ingress("ingress-1"), proxy_type="ingress")
    # The zone control plane fills in its zone; available services are its to compute, never the definition's.
    assert caller.registering and caller.mesh == "" and caller.dataplane.type.name == "ZoneIngress"
    assert caller.dataplane.spec.zone == "zone-1" and caller.dataplane.spec.available_services == []
    other_zone = await tokens.issuer.issue_zone_token("zone-2", ["ingress"])
    e = await refused(auth, "", "ingress-1", other_zone, ingress("ingress-1"), proxy_type="ingress")
    assert e.code == grpc.StatusCode.PERMISSION_DENIED and "'zone-2', not 'zone-1'" in e.message
    cp_only = await tokens.issuer.issue_zone_token("zone-1", ["cp"])
    e = await refused(auth, "", "ingress-1", cp_only, ingress("ingress-1"), proxy_type="ingress")
    assert e.code == grpc.StatusCode.PERMISSION_DENIED and "does not include 'ingress'" in e.message
    e = await refused(auth, "", "ingress-1", good, ingress("ingress-1", zone="zone-2"), proxy_type="ingress")
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "zone 'zone-2'" in e.message
    bad = ingress("ingress-1")
    bad["networking"]["port"] = 0
    e = await refused(auth, "", "ingress-1", good, bad, proxy_type="ingress")
    assert e.code == grpc.StatusCode.INVALID_ARGUMENT and "networking.port" in e.message
    # Another zone's ingress, synced here from global, cannot be taken over under its name.
    await store.create(from_wire(ingress("remote-1", zone="zone-2")))
    e = await refused(auth, "", "remote-1", good, ingress("remote-1"), proxy_type="ingress")
    assert e.code == grpc.StatusCode.PERMISSION_DENIED and "zone 'zone-2'" in e.message
    # Without a definition, the stored one runs; a zone without a name serves no ingress.
    await store.create(from_wire(ingress("ingress-2", zone="zone-1")))
    assert not (await auth.identify("", "ingress-2", good, None, proxy_type="ingress")).registering
    e = await refused(DataplaneAuthenticator(store, tokens), "", "ingress-2", good, None, proxy_type="ingress")
    assert e.code == grpc.StatusCode.FAILED_PRECONDITION and "KUMA_MULTIZONE_ZONE_NAME" in e.message


def forged(mesh: str) -> str:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = int(time.time())
    claims = {"Mesh": mesh, "Name": "x", "Tags": {}, "Type": "dataplane", "iat": now, "nbf": now, "exp": now + 60,
              "jti": str(uuid.uuid4())}
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "1"})


async def test_a_bad_signature_reads_the_same_whatever_the_mesh(rig: Any) -> None:
    _, tokens, auth = rig
    await tokens.issuer.issue_dataplane_token("demo", "web-1")  # demo has a signing key 1, second none
    answers = []
    for mesh in ("demo", "second", "no-such-mesh"):
        e = await refused(auth, mesh, "x", forged(mesh), dataplane("x", "web"))
        answers.append((e.code, e.message.replace(mesh, "MESH")))
    assert answers[0] == answers[1] == answers[2]
    assert answers[0][0] == grpc.StatusCode.UNAUTHENTICATED




async def test_a_zone_control_plane_tags_every_inbound_with_its_zone(rig: Any) -> None:
    store, tokens, _ = rig
    auth = DataplaneAuthenticator(store, tokens, zone="zone-1")
    token = await tokens.issuer.issue_dataplane_token("demo", "web-1")
    claimed = dataplane("web-1", "web")
    claimed["networking"]["inbound"][0]["tags"]["kuma.io/zone"] = "elsewhere"
    caller = await auth.identify("demo", "web-1", token, claimed)
    assert caller.dataplane.spec.networking.inbound[0].tags == {"kuma.io/service": "web", "kuma.io/zone": "zone-1"}
    # An operator's Dataplane without the tag is the same Dataplane: a kuma-dp sending it runs with any token.
    await store.create(from_wire(dataplane("web-2", "web")))
    service_token = await tokens.issuer.issue_dataplane_token("demo", tags={"kuma.io/service": ["web"]})
    assert (await auth.identify("demo", "web-2", service_token, dataplane("web-2", "web"))).registering
