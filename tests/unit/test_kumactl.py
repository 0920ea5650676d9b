"""kumactl without a control plane: config file handling, --var, local validation, tables, error text.

A few tests need something to answer HTTP; they use a stub server on 127.0.0.1 that records every request
(to prove that nothing was written).
"""

from __future__ import annotations

import json
import ssl
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from controlplane.kumactl import apply as apply_mod
from controlplane.kumactl.client import ApiClient
from controlplane.kumactl.config import DEFAULT_URL, KumactlConfig
from controlplane.kumactl.errors import KumactlError, api_error_lines
from controlplane.kumactl.generate import parse_tags, split_list
from controlplane.kumactl.main import main
from controlplane.kumactl.output import human_duration, render_table
from controlplane.kumactl.tables import dataplane_overview_table, mesh_insights_table, resource_table
from controlplane.resources import load_all

REFUSED = "http://127.0.0.1:1"  # nothing listens on port 1: any request would fail with "cannot reach"


def run(*args: str, config: Path | None = None, input: str | None = None) -> Result:
    argv = [*(["--config-file", str(config)] if config else []), *args]
    return CliRunner().invoke(main, argv, input=input, catch_exceptions=False)


def err(result: Result) -> str:
    return result.stderr if hasattr(result, "stderr") else result.output


@pytest.fixture
def cfg(tmp_path: Path) -> Path:
    return tmp_path / "kumactl" / "config"


def add(cfg: Path, name: str, address: str = REFUSED, *extra: str) -> Result:
    return run("config", "control-planes", "add", "--name", name, "--address", address, "--skip-check", *extra,
               config=cfg)


# --- config file ------------------------------------------------------------------------------------------------


def test_add_list_switch_remove(cfg: Path) -> None:
    r = add(cfg, "one", "http://127.0.0.1:5681")
    assert r.exit_code == 0, r.output
    assert 'added Control Plane "one"' in r.output and 'switched active Control Plane to "one"' in r.output
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600
    assert stat.S_IMODE(cfg.parent.stat().st_mode) == 0o700

    r = add(cfg, "two", "https://cp.example:5682", "--auth-type", "tokens", "--auth-conf", "token=abc")
    assert r.exit_code == 0, r.output
    doc = yaml.safe_load(cfg.read_text())
    assert doc["currentContext"] == "two"
    assert {"name": "two", "controlPlane": "two"} in doc["contexts"]
    two = next(c for c in doc["controlPlanes"] if c["name"] == "two")
    assert two["coordinates"]["apiServer"] == {"url": "https://cp.example:5682", "authType": "tokens",
                                               "authConf": {"token": "abc"}}
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o600

    r = run("config", "control-planes", "list", config=cfg)
    assert r.exit_code == 0
    lines = r.output.splitlines()
    assert lines[0].split() == ["ACTIVE", "NAME", "ADDRESS"]
    assert lines[1].split() == ["one", "http://127.0.0.1:5681"]
    assert lines[2].split() == ["*", "two", "https://cp.example:5682"]

    r = run("config", "control-planes", "switch", "--name", "one", config=cfg)
    assert r.exit_code == 0 and 'switched active Control Plane to "one"' in r.output
    assert KumactlConfig.load(cfg).current().url == "http://127.0.0.1:5681"

    r = run("config", "control-planes", "switch", "--name", "nope", config=cfg)
    assert r.exit_code == 1 and "there is no Control Plane with name 'nope'" in err(r)

    r = run("config", "control-planes", "remove", "--name", "two", config=cfg)
    assert r.exit_code == 0 and 'removed Control Plane "two"' in r.output
    doc = yaml.safe_load(cfg.read_text())
    assert [c["name"] for c in doc["controlPlanes"]] == ["one"]
    assert [c["name"] for c in doc["contexts"]] == ["one"]
    assert doc["currentContext"] == "one"

    add(cfg, "three", REFUSED)
    run("config", "control-planes", "switch", "--name", "one", config=cfg)
    r = run("config", "control-planes", "remove", "--name", "one", config=cfg)
    assert r.exit_code == 0 and "was the active Control Plane" in err(r) and "switch --name" in err(r)
    r = run("get", "meshes", config=cfg)
    assert r.exit_code == 1 and "has no current context" in err(r) and "switch --name NAME" in err(r)
    # with no control plane left, kumactl is back to Kuma's default, the local one
    r = run("config", "control-planes", "remove", "--name", "three", config=cfg)
    assert r.exit_code == 0 and "http://127.0.0.1:5681" in err(r)
    assert KumactlConfig.load(cfg).current().url == DEFAULT_URL


def test_add_refuses_duplicate_without_overwrite(cfg: Path) -> None:
    assert add(cfg, "one", "http://127.0.0.1:5681").exit_code == 0
    r = add(cfg, "one", "http://127.0.0.1:9999")
    assert r.exit_code == 1
    assert "already exists" in err(r) and "--overwrite" in err(r)
    assert KumactlConfig.load(cfg).current().url == "http://127.0.0.1:5681"
    r = add(cfg, "one", "http://127.0.0.1:9999", "--overwrite")
    assert r.exit_code == 0
    loaded = KumactlConfig.load(cfg)
    assert [cp.url for cp in loaded.control_planes()] == ["http://127.0.0.1:9999"]
    assert len(loaded.data["contexts"]) == 1


def test_add_keeps_unknown_keys_and_other_entries(cfg: Path) -> None:
    cfg.parent.mkdir(parents=True)
    cfg.write_text(yaml.safe_dump({
        "contexts": [{"name": "old", "controlPlane": "old", "defaults": {"mesh": "demo"}}],
        "controlPlanes": [{"name": "old", "coordinates": {"apiServer": {"url": "http://old:5681"}}}],
        "currentContext": "old",
    }))
    assert add(cfg, "new", "http://127.0.0.1:5681").exit_code == 0
    doc = yaml.safe_load(cfg.read_text())
    assert doc["contexts"][0]["defaults"] == {"mesh": "demo"}
    assert doc["currentContext"] == "new"


def test_add_argument_checks(cfg: Path, tmp_path: Path) -> None:
    r = add(cfg, "x", "ftp://host")
    assert r.exit_code == 2 and "http:// or https://" in err(r)
    r = add(cfg, "x", "https://h:5682", "--auth-type", "tokens")
    assert r.exit_code == 2 and "--auth-conf token=" in err(r)
    r = add(cfg, "x", "https://h:5682", "--auth-conf", "token=abc")
    assert r.exit_code == 2 and "--auth-type" in err(r)
    r = add(cfg, "x", "https://h:5682", "--auth-type", "basic", "--auth-conf", "token=abc")
    assert r.exit_code == 2
    r = add(cfg, "x", "https://h:5682", "--ca-cert-file", str(tmp_path / "missing.crt"))
    assert r.exit_code == 2 and "missing.crt" in err(r)
    assert not cfg.exists()


def test_add_checks_the_control_plane_answers(cfg: Path) -> None:
    r = run("config", "control-planes", "add", "--name", "x", "--address", REFUSED, config=cfg)
    assert r.exit_code == 1
    assert f"cannot reach the control plane at {REFUSED}" in err(r)
    assert not cfg.exists()


def test_ca_file_stored_as_absolute_path(cfg: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "ca.crt").write_text("not used: --skip-check")
    monkeypatch.chdir(tmp_path)
    assert add(cfg, "x", "https://h:5682", "--ca-cert-file", "ca.crt").exit_code == 0
    assert KumactlConfig.load(cfg).current().ca_cert_file == str(tmp_path / "ca.crt")


def test_no_config_file_means_local_control_plane(tmp_path: Path) -> None:
    cfg = KumactlConfig.load(tmp_path / "absent")
    assert cfg.current().url == DEFAULT_URL == "http://127.0.0.1:5681"
    local_cp = _listening("127.0.0.1", 5681)  # a developer's kuma-cp (scripts/mesh-up.sh) on the default port
    r = run("get", "meshes", config=tmp_path / "absent")
    if local_cp:
        assert r.exit_code == 0, err(r)  # it talked to the local control plane: what this test is about
    else:
        assert r.exit_code == 1
        assert "cannot reach the control plane at http://127.0.0.1:5681" in err(r)
        assert "kumactl config control-planes add" in err(r)
    assert not (tmp_path / "absent").exists()


def _listening(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def test_config_file_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "env-config"
    monkeypatch.setenv("KUMACTL_CONFIG", str(path))
    r = CliRunner().invoke(main, ["config", "control-planes", "add", "--name", "e", "--address", REFUSED,
                                  "--skip-check"])
    assert r.exit_code == 0
    assert KumactlConfig.load(path).current().name == "e"


def test_global_flags_after_the_subcommand(cfg: Path) -> None:
    add(cfg, "x", "http://127.0.0.1:5681")
    r = CliRunner().invoke(main, ["config", "control-planes", "list", "--config-file", str(cfg)])
    assert r.exit_code == 0 and "http://127.0.0.1:5681" in r.output


def test_view_redacts_tokens(cfg: Path) -> None:
    add(cfg, "t", "https://h:5682", "--auth-type", "tokens", "--auth-conf", "token=sekret")
    r = run("config", "view", config=cfg)
    assert r.exit_code == 0 and "sekret" not in r.output and "authConf: '***'" in r.output


# --- apply: --var and local validation -------------------------------------------------------------------------

DP = """\
type: Dataplane
mesh: {mesh}
name: {name}
networking:
  address: 10.0.0.1
  inbound:
  - port: {port}
    tags:
      kuma.io/service: web
"""


def test_substitute() -> None:
    assert apply_mod.substitute("a: {{ x }}\nb: {{y}}\nc: {{  x}}", {"x": "1", "y": "2"}) == "a: 1\nb: 2\nc: 1"
    with pytest.raises(KumactlError) as e:
        apply_mod.substitute("a: {{ x }}\nb: {{ zz }}\nc: {{ q }}", {"x": "1"})
    assert e.value.lines == ["template variable 'q' is not set: pass --var q=VALUE",
                             "template variable 'zz' is not set: pass --var zz=VALUE"]


def test_apply_var_substitution_dry_run(tmp_path: Path) -> None:
    f = tmp_path / "dp.yaml"
    f.write_text(DP.format(mesh="{{ mesh }}", name="{{name}}", port="{{ port }}"))
    r = run("apply", "-f", str(f), "--dry-run", "--var", "mesh=demo", "-v", "name=web-1", "--var", "port=8080",
            config=tmp_path / "cfg")
    assert r.exit_code == 0, err(r)
    doc = yaml.safe_load(r.output)
    assert doc["mesh"] == "demo" and doc["name"] == "web-1"
    assert doc["networking"]["inbound"][0]["port"] == 8080


def test_apply_missing_var_is_an_error(tmp_path: Path) -> None:
    f = tmp_path / "dp.yaml"
    f.write_text(DP.format(mesh="{{ mesh }}", name="web-1", port="8080"))
    r = run("apply", "-f", str(f), config=tmp_path / "cfg")
    assert r.exit_code == 1
    assert "template variable 'mesh' is not set: pass --var mesh=VALUE" in err(r)
    r = run("apply", "-f", str(f), "--var", "nokey")
    assert r.exit_code == 2


def test_apply_validates_every_document_before_contacting_the_cp(tmp_path: Path, cfg: Path) -> None:
    add(cfg, "refused", REFUSED)
    f = tmp_path / "all.yaml"
    f.write_text("\n---\n".join([
        "type: Mesh\nname: demo",
        DP.format(mesh="demo", name="web-1", port=70000),
        DP.format(mesh="demo", name="web-2", port=8080),
        "type: Dataplane\nmesh: demo\nname: Bad_Name\nnetworking:\n  address: 0.0.0.0\n  inbound: []",
        "type: Nonsense\nname: x",
    ]))
    r = run("apply", "-f", str(f), config=cfg)
    assert r.exit_code == 1
    out = err(r)
    assert "document 2 (Dataplane web-1): networking.inbound[0].port: port 70000 must be in the range" in out
    assert "document 4 (Dataplane Bad_Name): name:" in out
    assert "document 4 (Dataplane Bad_Name): networking.address: must not be 0.0.0.0" in out
    assert "document 5 (Nonsense x): type: unknown resource type 'Nonsense'; known types:" in out
    assert "document 1" not in out and "document 3" not in out
    assert "cannot reach" not in out  # nothing was sent


def test_apply_reports_yaml_syntax_errors(tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text("type: Mesh\nname: a\n---\ntype: Mesh\nname: [b\n")
    r = run("apply", "-f", str(f), config=tmp_path / "cfg")
    assert r.exit_code == 1
    assert "document 2: not valid YAML: " in err(r) and "(line 6, column 1)" in err(r)


def test_apply_reads_stdin_and_skips_empty_documents(tmp_path: Path) -> None:
    r = run("apply", "-f", "-", "--dry-run", config=tmp_path / "cfg",
            input="---\ntype: Mesh\nname: a\n---\n---\ntype: Mesh\nname: b\n")
    assert r.exit_code == 0, err(r)
    assert [d["name"] for d in yaml.safe_load_all(r.output)] == ["a", "b"]


def test_apply_empty_input(tmp_path: Path) -> None:
    r = run("apply", "-f", "-", config=tmp_path / "cfg", input="# nothing\n")
    assert r.exit_code == 1 and "no YAML documents" in err(r)


def test_dry_run_keeps_user_fields_and_drops_output_only_ones(tmp_path: Path) -> None:
    r = run("apply", "-f", "-", "--dry-run", config=tmp_path / "cfg",
            input="type: Mesh\nname: a\ncreationTime: 2024-01-01T00:00:00Z\nlabels:\n  team: x\n")
    assert r.exit_code == 0, err(r)
    assert yaml.safe_load(r.output) == {"type": "Mesh", "name": "a", "labels": {"team": "x"}}


# --- apply against a stub API ---------------------------------------------------------------------------------


class Stub:
    """A tiny HTTP API: `routes[(method, path)] = (status, body)`; everything else is 404 Not found."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.routes: dict[tuple[str, str], tuple[int, Any]] = {}
        self.requests: list[tuple[str, str, Any, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def _do(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                stub.requests.append((self.command, self.path, body, dict(self.headers.items())))
                status, answer = stub.routes.get((self.command, self.path.split("?")[0]),
                                                 (404, {"title": "Not found", "details": "nope",
                                                        "invalid_parameters": []}))
                data = answer.encode() if isinstance(answer, str) else json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/plain" if isinstance(answer, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_PUT = do_DELETE = do_POST = _do

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p, _, _ in self.requests if m != "GET"]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def stub(cfg: Path) -> Iterator[Stub]:
    s = Stub()
    s.routes[("GET", "/")] = (200, {"version": "0.1.0", "tagline": "kuma-vm"})
    add(cfg, "stub", s.url)
    try:
        yield s
    finally:
        s.close()


def test_apply_checks_meshes_before_writing(stub: Stub, cfg: Path, tmp_path: Path) -> None:
    stub.routes[("GET", "/meshes/default")] = (200, {"type": "Mesh", "name": "default"})
    f = tmp_path / "all.yaml"
    f.write_text("\n---\n".join([
        "type: Mesh\nname: demo",
        DP.format(mesh="demo", name="web-1", port=8080),      # mesh created above: fine
        DP.format(mesh="default", name="web-2", port=8080),   # exists on the CP: fine
        DP.format(mesh="missing", name="web-3", port=8080),   # nowhere
        DP.format(mesh="later", name="web-4", port=8080),     # created only below
        "type: Mesh\nname: later",
    ]))
    r = run("apply", "-f", str(f), config=cfg)
    assert r.exit_code == 1
    out = err(r)
    assert "document 4 (Dataplane web-3): mesh: mesh 'missing' does not exist" in out
    assert "document 5 (Dataplane web-4): mesh: mesh 'later' is created by document 6, after this one" in out
    assert stub.writes() == []
    assert ("GET", "/meshes/demo") not in [(m, p) for m, p, _, _ in stub.requests]


def test_apply_puts_each_document_and_reports_server_errors(stub: Stub, cfg: Path, tmp_path: Path) -> None:
    stub.routes[("PUT", "/meshes/demo")] = (201, {})
    stub.routes[("PUT", "/meshes/demo/dataplanes/web-1")] = (200, {})
    stub.routes[("PUT", "/meshes/demo/dataplanes/web-2")] = (400, {
        "title": "Resource is not valid", "details": "networking.address: taken",
        "invalid_parameters": [{"field": "networking.address", "reason": "taken"}]})
    f = tmp_path / "all.yaml"
    f.write_text("\n---\n".join(["type: Mesh\nname: demo", DP.format(mesh="demo", name="web-1", port=8080),
                                 DP.format(mesh="demo", name="web-2", port=8081),
                                 DP.format(mesh="demo", name="web-3", port=8082)]))
    r = run("apply", "-f", str(f), config=cfg)
    assert r.exit_code == 1
    assert r.stdout.splitlines() == ['created Mesh "demo"', 'updated Dataplane "web-1" in mesh "demo"']
    out = err(r)
    assert "document 3 (Dataplane web-2): Resource is not valid" in out
    assert "document 3 (Dataplane web-2): networking.address: taken" in out
    assert "already applied: document(s) 1, 2" in out and "not applied: document(s) 4" in out
    put = [(p, b) for m, p, b, _ in stub.requests if m == "PUT"]
    assert [p for p, _ in put] == ["/meshes/demo", "/meshes/demo/dataplanes/web-1", "/meshes/demo/dataplanes/web-2"]
    assert put[1][1] == yaml.safe_load(DP.format(mesh="demo", name="web-1", port=8080))


def test_get_follows_next_and_renders(stub: Stub, cfg: Path) -> None:
    now = datetime.now(UTC)
    ts = (now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    stub.routes[("GET", "/meshes")] = (200, {"total": 2, "items": [{"type": "Mesh", "name": "a",
                                                                    "creationTime": ts}],
                                             "next": "http://elsewhere.example/meshes/page2?offset=1"})
    stub.routes[("GET", "/meshes/page2")] = (200, {"total": 2, "items": [{"type": "Mesh", "name": "b",
                                                                          "creationTime": ts}], "next": None})
    r = run("get", "meshes", config=cfg)
    assert r.exit_code == 0, err(r)
    lines = r.output.splitlines()
    assert lines[0].split() == ["NAME", "mTLS", "AGE"]
    assert lines[1].split() == ["a", "off", "5m"] and lines[2].split() == ["b", "off", "5m"]
    r = run("get", "meshes", "-o", "json", config=cfg)
    doc = json.loads(r.output)
    assert doc["total"] == 2 and [i["name"] for i in doc["items"]] == ["a", "b"] and doc["next"] is None
    # --size: one page only, with a hint where the rest is
    r = run("get", "meshes", "--size", "1", config=cfg)
    assert r.exit_code == 0 and "--offset 1" in err(r)
    assert [p for m, p, _, _ in stub.requests if m == "GET"][-1] == "/meshes?size=1"


def test_get_one_and_missing(stub: Stub, cfg: Path) -> None:
    stub.routes[("GET", "/meshes/default/dataplanes/web-1")] = (200, yaml.safe_load(
        DP.format(mesh="default", name="web-1", port=8080)))
    r = run("get", "dataplane", "web-1", "-o", "yaml", config=cfg)
    assert r.exit_code == 0 and yaml.safe_load(r.output)["name"] == "web-1"
    r = run("get", "dataplane", "web-9", "-m", "demo", config=cfg)
    assert r.exit_code == 1 and "there is no Dataplane \"web-9\" in mesh \"demo\"" in err(r)


def test_delete(stub: Stub, cfg: Path) -> None:
    stub.routes[("DELETE", "/meshes/default/dataplanes/web-1")] = (200, {})
    r = run("delete", "dataplane", "web-1", config=cfg)
    assert r.exit_code == 0 and r.output == 'deleted Dataplane "web-1"\n'
    r = run("delete", "meshes", "gone", config=cfg)
    assert r.exit_code == 1 and 'there is no Mesh "gone"' in err(r)


def test_generate_tokens_send_kumas_fields(stub: Stub, cfg: Path) -> None:
    stub.routes[("POST", "/tokens/dataplane")] = (200, "tok-dp")
    stub.routes[("POST", "/tokens/user")] = (200, "tok-user")
    stub.routes[("POST", "/tokens/zone")] = (200, "tok-zone")
    r = run("generate", "dataplane-token", "--mesh", "demo", "--name", "web-1", "--tag", "kuma.io/service=web",
            "--tag", "kuma.io/service=api,web", "--tag", "version=v1", "--valid-for", "24h", config=cfg)
    assert r.exit_code == 0 and r.output == "tok-dp"
    r = run("generate", "user-token", "--name", "admin", "--group", "mesh-system:admin", "--valid-for", "1h",
            config=cfg)
    assert r.output == "tok-user"
    r = run("generate", "zone-token", "--zone", "east", "--scope", "cp,ingress", "--scope", "egress", config=cfg)
    assert r.output == "tok-zone"
    bodies = [(p, b) for m, p, b, _ in stub.requests if m == "POST"]
    assert bodies == [
        ("/tokens/dataplane", {"mesh": "demo", "type": "dataplane", "name": "web-1", "validFor": "24h",
                               "tags": {"kuma.io/service": ["web", "api"], "version": ["v1"]}}),
        ("/tokens/user", {"name": "admin", "groups": ["mesh-system:admin"], "validFor": "1h"}),
        ("/tokens/zone", {"zone": "east", "scope": ["cp", "ingress", "egress"]}),
    ]
    r = run("generate", "user-token", "--name", "admin", config=cfg)
    assert r.exit_code == 2 and "--valid-for" in err(r)
    r = run("generate", "dataplane-token", "--valid-for", "soon", config=cfg)
    assert r.exit_code == 2 and "is not a duration" in err(r)


def test_token_is_sent_as_bearer(cfg: Path) -> None:
    s = Stub()
    try:
        s.routes[("GET", "/")] = (200, {"version": "0.1.0"})
        s.routes[("GET", "/meshes")] = (200, {"total": 0, "items": [], "next": None})
        r = run("config", "control-planes", "add", "--name", "t", "--address", s.url, "--auth-type", "tokens",
                "--auth-conf", "token=abc", config=cfg)
        assert r.exit_code == 0, err(r)
        assert run("get", "meshes", config=cfg).exit_code == 0
        assert all(h.get("Authorization") == "Bearer abc" for _, _, _, h in s.requests)
        s.routes[("GET", "/meshes")] = (401, {"title": "Unauthenticated", "details": "token expired",
                                              "invalid_parameters": []})
        r = run("config", "control-planes", "add", "--name", "t2", "--address", s.url, "--auth-type", "tokens",
                "--auth-conf", "token=old", config=cfg)
        assert r.exit_code == 1 and "rejected the token" in err(r) and "token expired" in err(r)
    finally:
        s.close()


def test_version(stub: Stub, cfg: Path) -> None:
    r = run("version", config=cfg)
    assert r.exit_code == 0
    assert "Client: kumactl" in r.output and "Server: kuma-vm 0.1.0" in r.output
    r = run("version", "--no-config", "--api-timeout", "2s")
    assert r.exit_code == 0 and "Client: kumactl" in r.output


# --- get: type words ----------------------------------------------------------------------------------------


def test_get_unknown_type_lists_known_ones(tmp_path: Path) -> None:
    r = run("get", "widgets", config=tmp_path / "cfg")
    assert r.exit_code == 2
    assert "unknown resource type 'widgets'" in err(r) and "dataplanes" in err(r) and "meshes" in err(r)


def test_get_singular_needs_a_name(tmp_path: Path) -> None:
    r = run("get", "dataplane", config=tmp_path / "cfg")
    assert r.exit_code == 2 and "kumactl get dataplanes" in err(r)


# --- rendering ------------------------------------------------------------------------------------------------

NOW = datetime(2024, 6, 1, 12, 0, 0, tzinfo=UTC)


def test_render_table_alignment() -> None:
    assert render_table(["A", "LONGER"], [["xxxx", "1"], ["y", None]]) == "A      LONGER\nxxxx   1\ny\n"


@pytest.mark.parametrize(("seconds", "text"), [(5, "5s"), (119, "119s"), (150, "2m30s"), (600, "10m"),
                                               (3 * 3600 + 60, "3h1m"), (30 * 3600, "30h"),
                                               (3 * 86400 + 3600, "3d1h"), (40 * 86400, "40d"),
                                               (3 * 365 * 86400, "3y")])
def test_human_duration(seconds: int, text: str) -> None:
    assert human_duration(seconds) == text


def test_tables_per_type() -> None:
    reg = load_all()
    dp = yaml.safe_load(DP.format(mesh="demo", name="web-1", port=8080))
    dp["networking"]["inbound"].append({"port": 9090, "tags": {"kuma.io/service": "admin"}})
    dp["creationTime"] = "2024-06-01T11:00:00Z"
    dataplane = reg.by_name("Dataplane")
    assert dataplane is not None
    out = resource_table(dataplane, [dp], NOW).splitlines()
    assert out[0].split() == ["MESH", "NAME", "ADDRESS", "SERVICES", "AGE"]
    assert out[1].split() == ["demo", "web-1", "10.0.0.1", "web,admin", "60m"]

    mesh_type = reg.by_name("Mesh")
    assert mesh_type is not None
    mesh = {"type": "Mesh", "name": "m", "creationTime": "2024-06-01T11:59:00Z",
            "mtls": {"enabledBackend": "ca-1", "backends": [{"name": "ca-1", "type": "builtin"}]}}
    assert resource_table(mesh_type, [mesh], NOW).splitlines()[1].split() == ["m", "builtin/ca-1", "60s"]

    zone = reg.by_name("Zone")
    assert zone is not None
    z = resource_table(zone, [{"name": "east", "enabled": False}], NOW).splitlines()
    assert z[0].split() == ["NAME", "ENABLED", "AGE"] and z[1].split() == ["east", "false", "<unknown>"]

    secret = reg.by_name("Secret")
    assert secret is not None
    s = resource_table(secret, [{"mesh": "demo", "name": "key", "data": "c2VrcmV0"}], NOW)
    assert "c2VrcmV0" not in s and s.splitlines()[0].split() == ["MESH", "NAME", "AGE"]


def test_policy_table_shows_target_ref() -> None:
    from controlplane.resources.base import ResourceType, Scope, Spec

    class PolicySpec(Spec):
        pass

    policy = ResourceType(name="MeshTimeout", plural="meshtimeouts", singular="meshtimeout", scope=Scope.MESH,
                          spec_cls=PolicySpec, is_policy=True)
    item = {"mesh": "demo", "name": "t", "spec": {"targetRef": {"kind": "MeshService", "name": "web"}}}
    lines = resource_table(policy, [item], NOW).splitlines()
    assert lines[0] == "MESH   NAME   TARGETREF KIND   TARGETREF NAME   AGE"
    assert lines[1].split() == ["demo", "t", "MeshService", "web", "<unknown>"]


def test_inspect_tables() -> None:
    meshes = mesh_insights_table([
        {"name": "default", "dataplanes": {"total": 3, "online": 1, "offline": 2},
         "policies": {"MeshTimeout": {"total": 2}, "MeshRetry": {"total": 1}},
         "mTLS": {"enabledBackend": "ca-1", "type": "builtin"}},
        {"name": "demo", "dataplanes": {"total": 0, "online": 0}, "policies": {}, "mTLS": {}},
    ]).splitlines()
    assert meshes[0].split() == ["NAME", "DATAPLANES", "POLICIES", "mTLS"]
    assert meshes[1].split() == ["default", "1/3", "3", "builtin/ca-1"]
    assert meshes[2].split() == ["demo", "0/0", "0", "off"]
    dp = yaml.safe_load(DP.format(mesh="demo", name="web-1", port=8080))
    dps = dataplane_overview_table([{"mesh": "demo", "name": "web-1", "status": "online", "dataplane": dp}])
    assert dps.splitlines()[1].split() == ["demo", "web-1", "online", "web", "10.0.0.1"]
    # Outbound-only proxies (Kuma 2.14) have no service: the column says so, with the workload naming them.
    job = {"type": "Dataplane", "mesh": "demo", "name": "job-1", "labels": {"kuma.io/workload": "batch"},
           "networking": {"address": "10.0.0.9", "outbound": [{"port": 1, "tags": {"kuma.io/service": "web"}}]}}
    client = {**job, "name": "vm-1", "labels": {}}
    dps = dataplane_overview_table([{"name": d["name"], "status": "online", "dataplane": d} for d in (job, client)])
    assert dps.splitlines()[1].split("   ")[3].strip() == "(outbound only: batch)"
    assert dps.splitlines()[2].split("   ")[3].strip() == "(outbound only)"


# --- errors ---------------------------------------------------------------------------------------------------


def test_api_error_lines() -> None:
    body = {"title": "Resource is not valid", "details": "a: x; b: y",
            "invalid_parameters": [{"field": "a", "reason": "x"}, {"field": "b", "reason": "y"}]}
    assert api_error_lines(body, 400) == ["Resource is not valid", "a: x", "b: y"]
    body = {"title": "Not found", "details": "mesh 'x' does not exist", "invalid_parameters": []}
    assert api_error_lines(body, 404) == ["Not found: mesh 'x' does not exist"]
    body = {"title": "Cannot issue a user token", "details": "cannot issue a user token: validFor: too long",
            "invalid_parameters": [{"field": "validFor", "reason": "too long"}]}
    assert api_error_lines(body, 400) == ["Cannot issue a user token", "validFor: too long"]
    assert api_error_lines("<html>boom</html>", 502) == ["the control plane answered HTTP 502: <html>boom</html>"]


def test_unreachable_control_plane_says_where_and_how() -> None:
    with pytest.raises(KumactlError) as e:
        ApiClient(REFUSED, name="prod").get("/")
    assert e.value.lines[0].startswith(f"cannot reach the control plane at {REFUSED} (context 'prod'):")
    assert "kumactl config control-planes add --name NAME --address URL" in e.value.lines[1]


def test_tls_verification_failure_says_pass_ca_cert_file(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "127.0.0.1")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    s = Stub(tls=ctx)
    url = s.url
    try:
        with pytest.raises(KumactlError) as e:
            ApiClient(url).get("/")
        assert "TLS verification of the control plane at" in e.value.lines[0]
        assert "--ca-cert-file" in e.value.lines[1]
        other_cert, _ = self_signed(tmp_path / "other", "127.0.0.1")
        with pytest.raises(KumactlError) as e:
            ApiClient(url, ca_cert_file=str(other_cert)).get("/")
        assert f"checked against the CA in {other_cert}" in e.value.lines[0]
        assert ApiClient(url, ca_cert_file=str(cert)).request("GET", "/", ok=(404,)).status == 404
    finally:
        s.close()


def test_helpers() -> None:
    assert parse_tags(["a=1,2", "a=3", "b=x"]) == {"a": ["1", "2", "3"], "b": ["x"]}
    assert split_list(["a,b", "c", "a"]) == ["a", "b", "c"]


def self_signed(directory: Path, ip: str) -> tuple[Path, Path]:
    """A self-signed CA certificate for `ip` (it is its own trust anchor) and its key, as PEM files."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kumactl-test")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(ip))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = directory / "cert.pem", directory / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_file, key_file
