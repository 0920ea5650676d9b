"""The HTTP API over real HTTP(S) against a running kuma-cp process."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess


def dataplane(name: str, mesh: str = "default", port: int = 10001, service: str = "web",
              labels: dict[str, str] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"type": "Dataplane", "mesh": mesh, "name": name,
                           "networking": {"address": "10.0.0.1",
                                          "inbound": [{"port": port, "tags": {"kuma.io/service": service}}]}}
    if labels:
        doc["labels"] = labels
    return doc


@pytest.fixture
def api(cp_process: CpProcess) -> Callable[..., Reply]:
    def request(method: str, path: str, body: Any = None, **kw: Any) -> Reply:
        return call(method, cp_process.http_url + path, body, **kw)
    return request


def test_index_and_openapi(api: Callable[..., Reply]) -> None:
    index = api("GET", "/").json
    assert index["tagline"] == "kuma-vm" and index["mode"] == "zone" and index["store"] == "sqlite"
    doc = api("GET", "/openapi.json").json
    assert doc["openapi"].startswith("3.")
    assert "/meshes/{mesh}/dataplanes/{name}" in doc["paths"]
    assert "put" in doc["paths"]["/zones/{name}"]
    assert "networking" in doc["components"]["schemas"]["Dataplane"]["properties"]


def test_default_mesh_exists(api: Callable[..., Reply]) -> None:
    assert api("GET", "/meshes/default").status == 200


def test_create_update_get_with_versions(api: Callable[..., Reply]) -> None:
    assert api("PUT", "/meshes/m-crud", {"type": "Mesh", "name": "m-crud"}).status == 201
    got = api("GET", "/meshes/m-crud")
    first = got.headers["ETag"]
    assert first.startswith('"1-')  # version 1, and the incarnation (creation time)
    body = {"type": "Mesh", "name": "m-crud", "networking": {"outbound": {"passthrough": False}}}
    updated = api("PUT", "/meshes/m-crud", body, headers={"If-Match": first})
    assert updated.status == 200 and updated.headers["ETag"].startswith('"2-')
    stale = api("PUT", "/meshes/m-crud", {"type": "Mesh", "name": "m-crud"}, headers={"If-Match": first})
    assert stale.status == 409 and "was changed" in stale.json["details"]
    assert api("PUT", "/meshes/m-crud", body, headers={"If-Match": '"2"'}).status == 200  # a bare version works
    assert api("GET", "/meshes/m-crud").json["networking"] == {"outbound": {"passthrough": False}}
    # Without If-Match, PUT replaces (kumactl apply semantics).
    assert api("PUT", "/meshes/m-crud", {"type": "Mesh", "name": "m-crud"}).status == 200
    assert "networking" not in api("GET", "/meshes/m-crud").json
    assert api("DELETE", "/meshes/m-crud", headers={"If-Match": first}).status == 409
    assert api("DELETE", "/meshes/m-crud").status == 200
    assert api("GET", "/meshes/m-crud").status == 404
    # Deleted and created again: version 1 once more, but an ETag read before the delete no longer matches.
    assert api("PUT", "/meshes/m-crud", {"type": "Mesh", "name": "m-crud"}).status == 201
    again = api("PUT", "/meshes/m-crud", body, headers={"If-Match": first})
    assert again.status == 412 and "deleted and created again" in again.json["details"]
    assert api("DELETE", "/meshes/m-crud", headers={"If-Match": first}).status == 412
    fresh = api("GET", "/meshes/m-crud").headers["ETag"]
    assert fresh != first and api("DELETE", "/meshes/m-crud", headers={"If-Match": fresh}).status == 200
    assert api("PUT", "/meshes/m-crud", body, headers={"If-Match": '"1-x"'}).status == 400


def test_field_level_errors_and_nothing_written(api: Callable[..., Reply]) -> None:
    bad = dataplane("bad-1")
    bad["networking"]["inbound"][0]["port"] = 70000
    bad["networking"]["inbound"][0]["tags"] = {"version": "v1"}
    r = api("PUT", "/meshes/default/dataplanes/bad-1", bad)
    assert r.status == 400
    assert r.json["title"] == "Resource is not valid"
    assert "range [1, 65535]" in r.fields["networking.inbound[0].port"]
    assert r.fields['networking.inbound[0].tags["kuma.io/service"]'] == "mandatory tag 'kuma.io/service' is missing"
    assert api("GET", "/meshes/default/dataplanes/bad-1").status == 404

    wrong_type = dataplane("bad-2")
    wrong_type["networking"]["inbound"][0]["port"] = "80"
    assert "valid integer" in api("PUT", "/meshes/default/dataplanes/bad-2", wrong_type).fields[
        "networking.inbound[0].port"]
    unknown = dataplane("bad-3")
    unknown["networking"]["colour"] = "red"
    assert "unknown field" in api("PUT", "/meshes/default/dataplanes/bad-3", unknown).fields["networking.colour"]
    bad_name = dataplane("Bad_Name")
    assert "DNS-1123" in api("PUT", "/meshes/default/dataplanes/Bad_Name", bad_name).fields["name"]


def test_numbers_and_durations_are_bounded_before_anything_is_stored(api: Callable[..., Reply]) -> None:
    """Values that used to be stored and then overflow a date or an Envoy field are refused with their field."""
    poison = {"type": "Mesh", "name": "poison", "mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "builtin", "conf": {"caCert": {"expiration": "100000y"}}}]}}
    r = api("PUT", "/meshes/poison", poison)
    assert r.status == 400 and "at most 2562047h47m15s" in r.fields["mtls.backends[0].conf.caCert.expiration"]
    assert api("GET", "/meshes/poison").status == 404
    poison["mtls"]["backends"][0]["conf"]["caCert"]["expiration"] = "99999999999y"
    assert "at most" in api("PUT", "/meshes/poison", poison).fields["mtls.backends[0].conf.caCert.expiration"]
    huge = dataplane("huge-1")
    huge["networking"]["inbound"][0]["port"] = 2**64
    huge["networking"]["inbound"][0]["servicePort"] = "\u0668\u0660"  # Arabic-Indic 80: int() would read it
    fields = api("PUT", "/meshes/default/dataplanes/huge-1", huge).fields
    assert "out of range" in fields["networking.inbound[0].port"]
    assert "digits other than 0-9" in fields["networking.inbound[0].servicePort"]
    timeout = {"type": "MeshTimeout", "mesh": "default", "name": "t-1", "spec": {
        "targetRef": {"kind": "Mesh"}, "to": [{"targetRef": {"kind": "Mesh"}, "default": {
            "connectionTimeout": "\u0661\u0660s", "idleTimeout": "9999999999h"}}]}}
    fields = api("PUT", "/meshes/default/meshtimeouts/t-1", timeout).fields
    assert "digits other than 0-9" in fields["spec.to[0].default.connectionTimeout"]
    assert "too long" in fields["spec.to[0].default.idleTimeout"]
    assert api("GET", "/meshes/default/meshtimeouts/t-1").status == 404


def test_path_and_body_must_agree(api: Callable[..., Reply]) -> None:
    r = api("PUT", "/meshes/default/dataplanes/one", dataplane("two"))
    assert r.status == 400 and "must match" in r.fields["name"]
    r = api("PUT", "/meshes/default/meshtimeouts/x", dataplane("x"))
    assert r.status == 400 and "this path takes 'MeshTimeout'" in r.fields["type"]


def test_missing_mesh_is_a_field_error(api: Callable[..., Reply]) -> None:
    r = api("PUT", "/meshes/nope/dataplanes/web-1", dataplane("web-1", mesh="nope"))
    assert r.status == 400 and "does not exist" in r.fields["mesh"]
    assert api("GET", "/meshes/nope/dataplanes").status == 404


def test_malformed_bodies(api: Callable[..., Reply]) -> None:
    r = api("PUT", "/meshes/default/dataplanes/x", raw=b"{not json")
    assert r.status == 400 and r.json["title"] == "Malformed body"
    assert api("PUT", "/meshes/default/dataplanes/x", raw=b"").status == 400
    assert api("PUT", "/meshes/default/dataplanes/x", raw=b"[1, 2]").status == 400
    r = api("GET", "/meshes/default/frobnicators")
    assert r.status == 404 and "dataplanes" in r.json["details"]


def test_oversized_body_is_refused(api: Callable[..., Reply]) -> None:
    huge = dataplane("huge")
    huge["labels"] = {f"k{i}": "v" * 60 for i in range(20000)}
    r = api("PUT", "/meshes/default/dataplanes/huge", huge)
    assert r.status == 413 and "larger than" in r.json["details"]
    assert api("GET", "/meshes/default/dataplanes/huge").status == 404


def test_list_pagination_labels_and_cross_mesh(api: Callable[..., Reply]) -> None:
    assert api("PUT", "/meshes/m-list", {"type": "Mesh", "name": "m-list"}).status == 201
    for i in range(5):
        labels = {"team": "a" if i % 2 else "b"}
        assert api("PUT", f"/meshes/m-list/dataplanes/dp-{i}", dataplane(f"dp-{i}", mesh="m-list",
                                                                          labels=labels)).status == 201
    page = api("GET", "/meshes/m-list/dataplanes?size=2").json
    assert page["total"] == 5 and [i["name"] for i in page["items"]] == ["dp-0", "dp-1"]
    assert "offset=2" in page["next"]
    rest = call("GET", page["next"]).json
    assert [i["name"] for i in rest["items"]] == ["dp-2", "dp-3"]
    assert api("GET", "/meshes/m-list/dataplanes?labels.team=a").json["total"] == 2
    assert api("GET", "/meshes/m-list/dataplanes?name=dp-4").json["total"] == 1
    assert api("GET", "/meshes/m-list/dataplanes?size=0").status == 400
    everywhere = api("GET", "/dataplanes?size=1000").json
    assert {i["mesh"] for i in everywhere["items"]} >= {"m-list"}
    # Deleting the mesh deletes what lives in it.
    assert api("DELETE", "/meshes/m-list").status == 200
    assert not [i for i in api("GET", "/dataplanes?size=1000").json["items"] if i["mesh"] == "m-list"]


def test_global_types_at_top_level(api: Callable[..., Reply]) -> None:
    assert api("PUT", "/zones/east", {"type": "Zone", "name": "east"}).status == 201
    assert api("GET", "/zones").json["total"] >= 1
    assert api("GET", "/zones/east").json["enabled"] is True
    assert api("PUT", "/zones/east", {"type": "Zone", "name": "east", "mesh": "default"}).status == 400


def test_secrets_are_redacted_in_lists(api: Callable[..., Reply]) -> None:
    data = base64.b64encode(b"s3cr3t").decode()
    assert api("PUT", "/meshes/default/secrets/db-pass",
               {"type": "Secret", "mesh": "default", "name": "db-pass", "data": data}).status == 201
    listed = api("GET", "/meshes/default/secrets").json["items"]
    assert [i["data"] for i in listed if i["name"] == "db-pass"] == ["***"]
    assert api("GET", "/meshes/default/secrets/db-pass").json["data"] == data  # local admin


def test_token_endpoints_validate_requests(api: Callable[..., Reply]) -> None:
    r = api("POST", "/tokens/dataplane", {"mesh": "nope", "name": "web-1"})
    assert r.status == 400 and "mesh" in r.fields
    r = api("POST", "/tokens/user", {"name": "jane"})
    assert r.status == 400 and "validFor" in r.fields
    r = api("POST", "/tokens/user", {"name": "jane", "validFor": "soon"})
    assert r.status == 400 and "validFor" in r.fields
    r = api("POST", "/tokens/zone", {"zone": "east", "bogus": 1})
    assert r.status == 400 and "bogus" in r.fields
    token = api("POST", "/tokens/dataplane", {"mesh": "default", "name": "web-1",
                                              "tags": {"kuma.io/service": ["web"]}})
    assert token.status == 200 and token.raw.count(b".") == 2


def test_https_requires_a_user_token(cp_process: CpProcess, api: Callable[..., Reply]) -> None:
    https, ca = cp_process.https_url, cp_process.ca_file
    assert call("GET", https + "/", ca_file=ca).status == 200  # what am I talking to: public
    r = call("GET", https + "/meshes", ca_file=ca)
    assert r.status == 401 and "user token" in r.json["details"]
    assert call("GET", https + "/meshes", ca_file=ca, token="garbage").status == 401
    admin = api("POST", "/tokens/user", {"name": "admin", "groups": ["mesh-system:admin"],
                                         "validFor": "1h"}).raw.decode()
    viewer = api("POST", "/tokens/user", {"name": "viewer", "groups": ["team-a"], "validFor": "1h"}).raw.decode()
    assert call("GET", https + "/meshes", ca_file=ca, token=admin).status == 200
    assert call("GET", https + "/meshes", ca_file=ca, token=viewer).status == 200
    r = call("PUT", https + "/zones/west", {"type": "Zone", "name": "west"}, ca_file=ca, token=viewer)
    assert r.status == 403 and "mesh-system:admin" in r.json["details"]
    assert call("PUT", https + "/zones/west", {"type": "Zone", "name": "west"}, ca_file=ca,
                token=admin).status == 201
    api("PUT", "/meshes/default/secrets/tls-key", {"type": "Secret", "mesh": "default", "name": "tls-key",
                                                     "data": "eA=="})
    assert call("GET", https + "/meshes/default/secrets/tls-key", ca_file=ca, token=viewer).status == 403
    assert call("GET", https + "/meshes/default/secrets/tls-key", ca_file=ca, token=admin).json["data"] == "eA=="
    assert call("POST", https + "/tokens/user", {"name": "x", "validFor": "1h"}, ca_file=ca,
                token=viewer).status == 403


def test_rate_limit_per_client(cp_factory: Callable[..., CpProcess]) -> None:
    cp = cp_factory(KUMA_API_SERVER_RATE_LIMIT_RPS="0.5", KUMA_API_SERVER_RATE_LIMIT_BURST="3")
    statuses = [call("GET", cp.http_url + "/meshes").status for _ in range(5)]
    assert statuses[:3] == [200, 200, 200] and 429 in statuses[3:]
    r = call("GET", cp.http_url + "/meshes")
    assert r.status == 429 and int(r.headers["Retry-After"]) >= 1


def test_read_only_api_and_skipped_default_mesh(cp_factory: Callable[..., CpProcess]) -> None:
    cp = cp_factory(KUMA_API_SERVER_READ_ONLY="true", KUMA_DEFAULTS_SKIP_MESH_CREATION="true")
    assert call("GET", cp.http_url + "/meshes").json["total"] == 0
    r = call("PUT", cp.http_url + "/meshes/x", {"type": "Mesh", "name": "x"})
    assert r.status == 405 and "read-only" in r.json["details"]


def test_mesh_insights_and_overview(api: Callable[..., Reply]) -> None:
    assert api("PUT", "/meshes/default/dataplanes/ov-1", dataplane("ov-1")).status in (200, 201)
    insight = api("GET", "/mesh-insights/default").json
    assert insight["dataplanes"]["total"] >= 1
    overview = api("GET", "/meshes/default/dataplanes/_overview").json
    item = next(i for i in overview["items"] if i["name"] == "ov-1")
    assert item["status"] == "offline"  # no Envoy has connected: offline is the truth


def test_broken_provided_ca_is_refused_at_the_api(api: Callable[..., Reply]) -> None:
    mesh = {"type": "Mesh", "name": "m-provided", "mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "provided",
         "conf": {"cert": {"secret": "missing-cert"}, "key": {"secret": "missing-key"}}}]}}
    r = api("PUT", "/meshes/m-provided", mesh)
    assert r.status == 400
    assert any(f.startswith("mtls.backends[0].conf.cert") for f in r.fields), r.fields
    assert api("GET", "/meshes/m-provided").status == 404


def test_ca_secrets_in_use_cannot_be_deleted(api: Callable[..., Reply]) -> None:
    mesh = {"type": "Mesh", "name": "m-builtin", "mtls": {"enabledBackend": "ca-1", "backends": [
        {"name": "ca-1", "type": "builtin"}]}}
    assert api("PUT", "/meshes/m-builtin", mesh).status == 201
    # The builtin CA exists as soon as the mesh does (Kuma's names for its secrets).
    name = "m-builtin.ca-builtin-cert-ca-1"
    assert api("GET", f"/meshes/m-builtin/secrets/{name}").status == 200
    r = api("DELETE", f"/meshes/m-builtin/secrets/{name}")
    assert r.status == 409 and "used by a CA backend" in r.json["details"]
    assert api("DELETE", "/meshes/m-builtin").status == 200  # the mesh (and its secrets) can go
