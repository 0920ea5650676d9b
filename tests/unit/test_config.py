"""Config layering (defaults <- YAML <- KUMA_* env) and the errors a bad setting gets."""

from __future__ import annotations

from pathlib import Path

import pytest

from controlplane.config import ConfigError, env_reference, load


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kuma-cp.yaml"
    p.write_text(text)
    return p


def test_defaults_follow_kuma() -> None:
    cfg = load(None, env={})
    assert cfg.mode == "zone"
    assert cfg.store.type == "sqlite"
    assert cfg.api_server.http.port == 5681 and cfg.api_server.http.interface == "127.0.0.1"
    assert cfg.api_server.https.port == 5682
    assert cfg.dp_server.port == 5678
    assert cfg.diagnostics.server_port == 5680
    assert cfg.dns_server.port == 5653
    assert cfg.multizone.global_.kds.grpc_port == 5685


def test_yaml_overrides_defaults_and_env_overrides_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, """
store:
  type: postgres
  postgres:
    host: db.internal
    port: 6432
apiServer:
  http:
    port: 15681
""")
    cfg = load(path, env={"KUMA_STORE_POSTGRES_PORT": "7432", "KUMA_GENERAL_WORK_DIR": str(tmp_path / "w")})
    assert cfg.store.type == "postgres"
    assert cfg.store.postgres.host == "db.internal"
    assert cfg.store.postgres.port == 7432  # env wins over the file
    assert cfg.api_server.http.port == 15681
    assert cfg.general.work_dir == tmp_path / "w"
    pg = cfg.store.postgres.to_store_config()
    assert pg.host == "db.internal" and pg.port == 7432


def test_env_booleans_lists_and_literals() -> None:
    cfg = load(None, env={"KUMA_DEFAULTS_SKIP_MESH_CREATION": "true", "KUMA_GENERAL_HOSTNAMES": "a.example, b",
                          "KUMA_MODE": "global"})
    assert cfg.defaults.skip_mesh_creation is True
    assert cfg.general.hostnames == ["a.example", "b"]
    assert cfg.mode == "global"


@pytest.mark.parametrize(("env", "expected"), [
    ({"KUMA_API_SERVER_HTTP_PORT": "abc"},
     "apiServer.http.port (from KUMA_API_SERVER_HTTP_PORT='abc'): must be an integer"),
    ({"KUMA_API_SERVER_HTTP_PORT": "70000"}, "port 70000 must be in the range [1, 65535]"),
    ({"KUMA_STORE_TYPE": "mysql"},
     "store.type (from KUMA_STORE_TYPE='mysql'): must be one of sqlite, postgres, memory"),
    ({"KUMA_DEFAULTS_SKIP_MESH_CREATION": "maybe"}, "must be true or false"),
    ({"KUMA_API_SERVER_HTTP_INTERFACE": "localhost:1"}, "is not an IP address"),
    ({"KUMA_DNS_SERVER_CIDR": "240.0.0.0/40"}, "is not a CIDR"),
    ({"KUMA_DP_SERVER_PORT": "5681"}, "dpServer.port: port 5681 is already used by apiServer.http.port"),
])
def test_bad_env_values_name_the_key(env: dict[str, str], expected: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(None, env=env)
    assert any(expected in p for p in e.value.problems), e.value.problems


def test_bad_yaml_names_file_and_key(tmp_path: Path) -> None:
    path = write(tmp_path, "apiServer:\n  htp:\n    port: 1\nstore:\n  type: 5\n")
    with pytest.raises(ConfigError) as e:
        load(path, env={})
    text = str(e.value)
    assert f"{path}: apiServer.htp: unknown setting" in text
    assert "store.type: must be one of" in text


def test_malformed_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load(write(tmp_path, "store: [unclosed"), env={})
    with pytest.raises(ConfigError, match="cannot read the config file"):
        load(tmp_path / "nope.yaml", env={})
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load(write(tmp_path, "- a\n- b\n"), env={})


def test_tls_cert_and_key_go_together() -> None:
    with pytest.raises(ConfigError, match="set both"):
        load(None, env={"KUMA_GENERAL_TLS_CERT_FILE": "/x.crt"})


def test_env_reference_lists_kuma_names() -> None:
    names = {env for env, _, _ in env_reference()}
    for expected in ("KUMA_MODE", "KUMA_STORE_TYPE", "KUMA_STORE_POSTGRES_HOST", "KUMA_STORE_POSTGRES_TLS_MODE",
                     "KUMA_GENERAL_WORK_DIR", "KUMA_API_SERVER_HTTP_PORT", "KUMA_API_SERVER_HTTPS_PORT",
                     "KUMA_DP_SERVER_PORT", "KUMA_DIAGNOSTICS_SERVER_PORT", "KUMA_DNS_SERVER_PORT"):
        assert expected in names
