"""The real kumactl CLI (a subprocess) against a real `kuma-cp run` (tests/integration/cp_process.py).

Every test uses its own kumactl config file and its own mesh names, so they share one control plane.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.cp_process import CpProcess
from tests.ports import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]


def kumactl(*args: str, config: Path, input: str | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KUMA_", "KUMACTL_"))}
    env["HOME"] = str(config.parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "controlplane.kumactl.main", "--config-file", str(config), *args],
                          input=input, capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=config.parent)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    return result.stderr


@pytest.fixture
def cfg(tmp_path: Path, cp_process: CpProcess) -> Path:
    """A kumactl config whose current context is the control plane's plain-HTTP API (admin on localhost)."""
    path = tmp_path / "kumactl.yaml"
    out = ok(kumactl("config", "control-planes", "add", "--name", "local", "--address", cp_process.http_url,
                     config=path))
    assert 'switched active Control Plane to "local"' in out
    return path


def dataplane(mesh: str, name: str, address: str, port: int | str, service: str = "web") -> str:
    return (f"type: Dataplane\nmesh: {mesh}\nname: {name}\nnetworking:\n  address: {address}\n  inbound:\n"
            f"  - port: {port}\n    servicePort: 80\n    tags:\n      kuma.io/service: {service}\n")


def names(cfg: Path, plural: str, *args: str) -> list[str]:
    doc = json.loads(ok(kumactl("get", plural, *args, "-o", "json", config=cfg)))
    return [item["name"] for item in doc["items"]]


def admin_token(cfg: Path) -> str:
    token = ok(kumactl("generate", "user-token", "--name", "admin", "--group", "mesh-system:admin",
                       "--valid-for", "1h", config=cfg))
    assert token.count(".") == 2 and not token.endswith("\n")
    return token


# --- apply ------------------------------------------------------------------------------------------------------


def test_apply_multi_document_then_get(cfg: Path, tmp_path: Path) -> None:
    f = tmp_path / "demo.yaml"
    f.write_text("type: Mesh\nname: {{ mesh }}\n---\n" + dataplane("{{mesh}}", "web-1", "10.0.0.1", 8080)
                 + "---\n" + dataplane("{{ mesh }}", "web-2", "10.0.0.2", 8080, "api") + "---\n")
    out = ok(kumactl("apply", "-f", str(f), "--var", "mesh=apply-demo", config=cfg))
    assert out.splitlines() == ['created Mesh "apply-demo"',
                                "created Dataplane \"web-1\" in mesh \"apply-demo\"",
                                "created Dataplane \"web-2\" in mesh \"apply-demo\""]
    out = ok(kumactl("apply", "-f", str(f), "-v", "mesh=apply-demo", config=cfg))
    assert [line.split()[0] for line in out.splitlines()] == ["updated", "updated", "updated"]

    doc = json.loads(ok(kumactl("get", "dataplanes", "-m", "apply-demo", "-o", "json", config=cfg)))
    assert doc["total"] == 2 and doc["next"] is None
    by_name = {d["name"]: d for d in doc["items"]}
    assert by_name["web-2"]["networking"]["address"] == "10.0.0.2"
    assert by_name["web-2"]["networking"]["inbound"][0] == {"port": 8080, "servicePort": 80,
                                                            "tags": {"kuma.io/service": "api"}}
    assert by_name["web-1"]["mesh"] == "apply-demo" and by_name["web-1"]["creationTime"]

    table = ok(kumactl("get", "dataplanes", "--mesh", "apply-demo", config=cfg)).splitlines()
    assert table[0].split() == ["MESH", "NAME", "ADDRESS", "SERVICES", "AGE"]
    assert [row.split()[:4] for row in table[1:]] == [["apply-demo", "web-1", "10.0.0.1", "web"],
                                                      ["apply-demo", "web-2", "10.0.0.2", "api"]]

    one = yaml.safe_load(ok(kumactl("get", "dataplane", "web-1", "-m", "apply-demo", "-o", "yaml", config=cfg)))
    assert one["type"] == "Dataplane" and one["name"] == "web-1"
    # what `get -o yaml` prints can be applied again as it is
    f2 = tmp_path / "roundtrip.yaml"
    f2.write_text(yaml.safe_dump(one))
    assert ok(kumactl("apply", "-f", str(f2), config=cfg)).startswith('updated Dataplane "web-1"')


def test_get_meshes_and_default_mesh(cfg: Path) -> None:
    table = ok(kumactl("get", "meshes", config=cfg)).splitlines()
    assert table[0].split() == ["NAME", "mTLS", "AGE"]
    assert "default" in [row.split()[0] for row in table[1:]]
    mesh = yaml.safe_load(ok(kumactl("get", "mesh", "default", "-o", "yaml", config=cfg)))
    assert mesh["type"] == "Mesh" and mesh["name"] == "default"
    page = json.loads(ok(kumactl("get", "meshes", "--size", "1", "-o", "json", config=cfg)))
    assert len(page["items"]) == 1


def test_one_bad_document_writes_nothing(cfg: Path, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("---\n".join(["type: Mesh\nname: atomic\n",
                               dataplane("atomic", "ok-1", "10.0.0.1", 8080),
                               dataplane("atomic", "bad-1", "10.0.0.2", 70000),
                               dataplane("nowhere", "lost-1", "10.0.0.3", 8080)]))
    err = failed(kumactl("apply", "-f", str(f), config=cfg))
    assert "document 3 (Dataplane bad-1): networking.inbound[0].port: port 70000 must be in the range [1, 65535]" \
        in err
    assert "atomic" not in names(cfg, "meshes")
    assert "there is no Mesh \"atomic\"" in failed(kumactl("get", "mesh", "atomic", config=cfg))

    # the port fixed, the missing mesh is what stops it, still before any write
    f.write_text(f.read_text().replace("70000", "8081"))
    err = failed(kumactl("apply", "-f", str(f), config=cfg))
    assert "document 4 (Dataplane lost-1): mesh: mesh 'nowhere' does not exist" in err
    assert "atomic" not in names(cfg, "meshes")


def test_dry_run_writes_nothing(cfg: Path, tmp_path: Path) -> None:
    text = "type: Mesh\nname: dry\n---\n" + dataplane("dry", "d-1", "10.0.0.1", "{{ port }}")
    out = ok(kumactl("apply", "-f", "-", "--dry-run", "--var", "port=9000", config=cfg, input=text))
    docs = list(yaml.safe_load_all(out))
    assert [d["name"] for d in docs] == ["dry", "d-1"]
    assert docs[1]["networking"]["inbound"][0]["port"] == 9000
    assert "dry" not in names(cfg, "meshes")
    err = failed(kumactl("apply", "-f", "-", "--dry-run", config=cfg, input=text))
    assert "template variable 'port' is not set: pass --var port=VALUE" in err


def test_delete(cfg: Path) -> None:
    ok(kumactl("apply", "-f", "-", config=cfg,
               input="type: Mesh\nname: del\n---\n" + dataplane("del", "gone-1", "10.0.0.1", 8080)))
    assert ok(kumactl("delete", "dataplane", "gone-1", "-m", "del", config=cfg)) == 'deleted Dataplane "gone-1"\n'
    assert names(cfg, "dataplanes", "-m", "del") == []
    err = failed(kumactl("delete", "dataplanes", "gone-1", "-m", "del", config=cfg))
    assert "there is no Dataplane \"gone-1\" in mesh \"del\"" in err
    assert ok(kumactl("delete", "mesh", "del", config=cfg)) == 'deleted Mesh "del"\n'
    assert "del" not in names(cfg, "meshes")


def test_server_side_field_errors(cfg: Path) -> None:
    # the token endpoint checks validFor itself (at most 10 years): the field comes back from the server
    err = failed(kumactl("generate", "user-token", "--name", "u", "--valid-for", "20y", config=cfg))
    assert err.splitlines()[0] == "Error: Cannot issue a user token"
    assert err.splitlines()[1].startswith("  validFor: must be at most 3650 days")
    err = failed(kumactl("generate", "zone-token", "--zone", "z", "--scope", "bogus", config=cfg))
    assert "scope[0]: 'bogus' is not a zone token scope" in err
    # a dataplane in a mesh that does not exist, and an out-of-range port: named by field, nothing written
    err = failed(kumactl("apply", "-f", "-", config=cfg, input=dataplane("ghost", "g-1", "10.0.0.1", 8080)))
    assert "document 1 (Dataplane g-1): mesh: mesh 'ghost' does not exist" in err
    err = failed(kumactl("apply", "-f", "-", config=cfg, input=dataplane("default", "p-1", "10.0.0.1", 0)))
    assert "document 1 (Dataplane p-1): networking.inbound[0].port: port 0 must be in the range" in err
    assert "p-1" not in names(cfg, "dataplanes")


def test_unknown_type(cfg: Path) -> None:
    err = failed(kumactl("get", "widgets", config=cfg), code=2)
    assert "unknown resource type 'widgets'" in err and "dataplanes" in err


# --- inspect ----------------------------------------------------------------------------------------------------


def test_inspect_meshes_and_dataplanes(cfg: Path) -> None:
    ok(kumactl("apply", "-f", "-", config=cfg, input="type: Mesh\nname: insp\nskipCreatingInitialPolicies: ['*']\n---\n"
               + dataplane("insp", "i-1", "10.0.1.1", 8080) + "---\n" + dataplane("insp", "i-2", "10.0.1.2", 8080)))
    table = ok(kumactl("inspect", "meshes", config=cfg)).splitlines()
    assert table[0].split() == ["NAME", "DATAPLANES", "POLICIES", "mTLS"]
    row = next(r.split() for r in table[1:] if r.split()[0] == "insp")
    assert row == ["insp", "0/2", "0", "off"]  # no Envoy connected: both offline
    doc = json.loads(ok(kumactl("inspect", "meshes", "-o", "json", config=cfg)))
    assert any(i["name"] == "insp" and i["dataplanes"]["total"] == 2 for i in doc["items"])

    table = ok(kumactl("inspect", "dataplanes", "-m", "insp", config=cfg)).splitlines()
    assert table[0].split() == ["MESH", "NAME", "STATUS", "SERVICES", "ADDRESS"]
    assert [r.split() for r in table[1:]] == [["insp", "i-1", "offline", "web", "10.0.1.1"],
                                              ["insp", "i-2", "offline", "web", "10.0.1.2"]]
    doc = yaml.safe_load(ok(kumactl("inspect", "dataplanes", "-m", "insp", "-o", "yaml", config=cfg)))
    assert doc["total"] == 2 and doc["items"][0]["status"] == "offline"
    err = failed(kumactl("inspect", "dataplanes", "-m", "no-such-mesh", config=cfg))
    assert "no-such-mesh" in err


# Kuma's default policies would show up in these tables and counts; these tests are about kumactl.
NO_DEFAULTS_MESH = "type: Mesh\nname: pol\nskipCreatingInitialPolicies: ['*']\n"


def test_policies(cfg: Path) -> None:
    policy = ("type: MeshTimeout\nmesh: pol\nname: timeout-all\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n"
              "  - targetRef:\n      kind: Mesh\n    default:\n      connectionTimeout: {t}\n")
    err = failed(kumactl("apply", "-f", "-", config=cfg, input=NO_DEFAULTS_MESH + "---\n"
                         + policy.format(t="-1s")))
    assert "document 2 (MeshTimeout timeout-all): spec.to[0].default.connectionTimeout" in err
    assert "pol" not in names(cfg, "meshes")
    out = ok(kumactl("apply", "-f", "-", config=cfg, input=NO_DEFAULTS_MESH + "---\n" + policy.format(t="2s")))
    assert out.splitlines()[1] == "created MeshTimeout \"timeout-all\" in mesh \"pol\""
    table = ok(kumactl("get", "meshtimeouts", "-m", "pol", config=cfg)).splitlines()
    assert table[0] == "MESH   NAME          TARGETREF KIND   TARGETREF NAME   AGE"
    assert table[1].split()[:3] == ["pol", "timeout-all", "Mesh"]
    got = yaml.safe_load(ok(kumactl("get", "meshtimeout", "timeout-all", "-m", "pol", "-o", "yaml", config=cfg)))
    assert got["spec"]["to"][0]["default"] == {"connectionTimeout": "2s"}
    doc = json.loads(ok(kumactl("inspect", "meshes", "-o", "json", config=cfg)))
    pol = next(i for i in doc["items"] if i["name"] == "pol")
    assert pol["policies"] == {"MeshTimeout": {"total": 1}}
    row = next(r.split() for r in ok(kumactl("inspect", "meshes", config=cfg)).splitlines() if r.startswith("pol "))
    assert row == ["pol", "0/0", "1", "off"]


# --- tokens, HTTPS and contexts ---------------------------------------------------------------------------------


def test_generate_tokens(cfg: Path) -> None:
    dp = ok(kumactl("generate", "dataplane-token", "--mesh", "default", "--name", "web-1",
                    "--tag", "kuma.io/service=web", "--tag", "kuma.io/service=api", "--valid-for", "24h", config=cfg))
    zone = ok(kumactl("generate", "zone-token", "--zone", "east", "--scope", "cp", "--valid-for", "24h", config=cfg))
    assert dp.count(".") == 2 and zone.count(".") == 2


def test_https_with_user_token(cfg: Path, cp_process: CpProcess, tmp_path: Path) -> None:
    token = admin_token(cfg)
    secure = tmp_path / "secure.yaml"
    out = ok(kumactl("config", "control-planes", "add", "--name", "secure", "--address", cp_process.https_url,
                     "--ca-cert-file", str(cp_process.ca_file), "--auth-type", "tokens", "--auth-conf",
                     f"token={token}", config=secure))
    assert 'added Control Plane "secure"' in out
    assert oct(secure.stat().st_mode & 0o777) == "0o600"
    stored = yaml.safe_load(secure.read_text())
    api = stored["controlPlanes"][0]["coordinates"]["apiServer"]
    assert api == {"url": cp_process.https_url, "caCertFile": str(cp_process.ca_file), "authType": "tokens",
                   "authConf": {"token": token}}
    table = ok(kumactl("get", "meshes", config=secure))
    assert "default" in table
    out = ok(kumactl("apply", "-f", "-", config=secure, input="type: Mesh\nname: over-tls\n"))
    assert out == 'created Mesh "over-tls"\n'
    assert "over-tls" in names(cfg, "meshes")
    listing = ok(kumactl("config", "control-planes", "list", config=secure)).splitlines()
    assert listing[1].split() == ["*", "secure", cp_process.https_url]


def test_https_non_admin_may_read_not_write(cfg: Path, cp_process: CpProcess, tmp_path: Path) -> None:
    token = ok(kumactl("generate", "user-token", "--name", "bob", "--group", "devs", "--valid-for", "1h",
                       config=cfg))
    bob = tmp_path / "bob.yaml"
    ok(kumactl("config", "control-planes", "add", "--name", "bob", "--address", cp_process.https_url,
               "--ca-cert-file", str(cp_process.ca_file), "--auth-type", "tokens", "--auth-conf", f"token={token}",
               config=bob))
    assert "default" in ok(kumactl("get", "meshes", config=bob))
    err = failed(kumactl("apply", "-f", "-", config=bob, input="type: Mesh\nname: bobs\n"))
    assert "mesh-system:admin" in err
    assert "bobs" not in names(cfg, "meshes")


def test_https_without_token_is_refused(cp_process: CpProcess, tmp_path: Path) -> None:
    anon = tmp_path / "anon.yaml"
    ok(kumactl("config", "control-planes", "add", "--name", "anon", "--address", cp_process.https_url,
               "--ca-cert-file", str(cp_process.ca_file), config=anon))
    err = failed(kumactl("get", "meshes", config=anon))
    assert "Unauthenticated" in err and "user token" in err


def test_https_bad_token_is_refused_at_add(cp_process: CpProcess, tmp_path: Path) -> None:
    path = tmp_path / "bad-token.yaml"
    err = failed(kumactl("config", "control-planes", "add", "--name", "x", "--address", cp_process.https_url,
                         "--ca-cert-file", str(cp_process.ca_file), "--auth-type", "tokens",
                         "--auth-conf", "token=not.a.token", config=path))
    assert "rejected the token" in err
    assert not path.exists()


def _other_ca(directory: Path) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "some other CA")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(minutes=1))
            .not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    path = directory / "other-ca.crt"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


def test_wrong_ca_file_fails_with_clear_tls_message(cfg: Path, cp_process: CpProcess, tmp_path: Path) -> None:
    wrong = _other_ca(tmp_path)
    path = tmp_path / "wrong-ca.yaml"
    err = failed(kumactl("config", "control-planes", "add", "--name", "w", "--address", cp_process.https_url,
                         "--ca-cert-file", str(wrong), config=path))
    assert f"TLS verification of the control plane at {cp_process.https_url} (context 'w') failed" in err
    assert "--ca-cert-file" in err
    assert not path.exists()
    # saved without the check, the first real call says the same
    ok(kumactl("config", "control-planes", "add", "--name", "w", "--address", cp_process.https_url,
               "--ca-cert-file", str(wrong), "--skip-check", config=path))
    err = failed(kumactl("get", "meshes", config=path))
    assert "TLS verification" in err and "--ca-cert-file" in err
    # and no CA at all: the system trust store does not know this control plane either (never unverified)
    none = tmp_path / "no-ca.yaml"
    err = failed(kumactl("config", "control-planes", "add", "--name", "n", "--address", cp_process.https_url,
                         config=none))
    assert "TLS verification" in err and "--ca-cert-file" in err


def test_plain_http_to_the_https_port(cp_process: CpProcess, tmp_path: Path) -> None:
    wrong = cp_process.https_url.replace("https:", "http:")
    err = failed(kumactl("config", "control-planes", "add", "--name", "x", "--address", wrong,
                         config=tmp_path / "x.yaml"))
    assert "closed the connection without answering" in err and "https://" in err


def test_unreachable_control_plane(tmp_path: Path) -> None:
    port = free_port()
    path = tmp_path / "down.yaml"
    err = failed(kumactl("config", "control-planes", "add", "--name", "down", "--address",
                         f"http://127.0.0.1:{port}", config=path))
    assert f"cannot reach the control plane at http://127.0.0.1:{port}" in err
    assert "kumactl config control-planes add" in err


def test_version(cfg: Path) -> None:
    out = ok(kumactl("version", config=cfg))
    assert "Client: kumactl 0.1.0" in out and "Server: kuma-vm 0.1.0" in out


def test_switch_between_contexts(cfg: Path, cp_process: CpProcess) -> None:
    ok(kumactl("config", "control-planes", "add", "--name", "tls", "--address", cp_process.https_url,
               "--ca-cert-file", str(cp_process.ca_file), "--auth-type", "tokens", "--auth-conf",
               f"token={admin_token(cfg)}", config=cfg))
    assert "default" in ok(kumactl("get", "meshes", config=cfg))
    ok(kumactl("config", "control-planes", "switch", "--name", "local", config=cfg))
    assert "default" in ok(kumactl("get", "meshes", config=cfg))
    ok(kumactl("config", "control-planes", "remove", "--name", "tls", config=cfg))
    assert [line.split()[-1] for line in ok(kumactl("config", "control-planes", "list", config=cfg)).splitlines()] \
        == ["ADDRESS", cp_process.http_url]


# --- PostgreSQL: two control planes sharing one database ---------------------------------------------------------


@pytest.mark.postgres
def test_two_control_planes_on_one_postgres(cp_factory: Callable[..., CpProcess], postgres_migrated_config: Any,
                                            tmp_path: Path) -> None:
    pg = postgres_migrated_config
    env = {"KUMA_STORE_TYPE": "postgres", "KUMA_STORE_POSTGRES_HOST": pg.host,
           "KUMA_STORE_POSTGRES_PORT": str(pg.port), "KUMA_STORE_POSTGRES_USER": pg.user,
           "KUMA_STORE_POSTGRES_PASSWORD": pg.password, "KUMA_STORE_POSTGRES_DB_NAME": pg.db_name}
    one, two = cp_factory(**env), cp_factory(**env)
    c1, c2 = tmp_path / "one.yaml", tmp_path / "two.yaml"
    ok(kumactl("config", "control-planes", "add", "--name", "one", "--address", one.http_url, config=c1))
    ok(kumactl("config", "control-planes", "add", "--name", "two", "--address", two.http_url, config=c2))
    ok(kumactl("apply", "-f", "-", config=c1,
               input="type: Mesh\nname: shared\n---\n" + dataplane("shared", "s-1", "10.0.2.1", 8080)))
    assert names(c2, "dataplanes", "-m", "shared") == ["s-1"]
    ok(kumactl("delete", "mesh", "shared", config=c2))
    assert "shared" not in names(c1, "meshes")
