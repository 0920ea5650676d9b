"""kuma-dp settings: Kuma's flags, KUMA_* variables and YAML keys; precedence; values; cross-checks."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from agent.cli import main
from agent.config import (
    SETTINGS,
    ConfigError,
    DpConfig,
    PortRange,
    load_file,
    parse_duration,
    parse_port_range,
    parse_vars,
    resolve,
)

BASE = {"dataplane_file": "dp.yaml"}


def test_defaults() -> None:
    cfg = resolve(BASE, {})
    assert cfg.cp_address == "https://localhost:5678"
    assert cfg.drain_time == 30.0 and cfg.proxy_type == "dataplane"
    assert cfg.admin_port is None and cfg.readiness_port is None and cfg.metrics_port is None
    assert cfg.retry_max_duration == 300.0
    assert 1 <= cfg.effective_concurrency <= 2
    assert cfg.effective_envoy_log_level == "info"


def test_kuma_env_names() -> None:
    env = {
        "KUMA_CONTROL_PLANE_URL": "https://cp:5678",
        "KUMA_CONTROL_PLANE_CA_CERT_FILE": "/etc/kuma/ca.crt",
        "KUMA_DATAPLANE_MESH": "demo",
        "KUMA_DATAPLANE_NAME": "web-1",
        "KUMA_DATAPLANE_PROXY_TYPE": "ingress",
        "KUMA_DATAPLANE_DRAIN_TIME": "1m30s",
        "KUMA_DATAPLANE_ADMIN_PORT": "9901-9999",
        "KUMA_READINESS_PORT": "9902",
        "KUMA_DATAPLANE_RUNTIME_BINARY_PATH": "/opt/envoy",
        "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR": "/run/x",
        "KUMA_DATAPLANE_RUNTIME_CONCURRENCY": "4",
        "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH": "/etc/kuma/token",
        "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH": "/etc/kuma/dp.yaml",
        "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL": "debug",
        "KUMA_CONTROL_PLANE_RETRY_BACKOFF": "250ms",
        "KUMA_LOG_LEVEL": "warning",
    }
    cfg = resolve({}, env)
    assert cfg.cp_address == "https://cp:5678" and cfg.ca_cert_file == "/etc/kuma/ca.crt"
    assert (cfg.mesh, cfg.name, cfg.proxy_type) == ("demo", "web-1", "ingress")
    assert cfg.drain_time == 90.0
    assert cfg.admin_port == PortRange(9901, 9999) and cfg.readiness_port == 9902
    assert cfg.binary_path == "/opt/envoy" and cfg.runtime_dir == "/run/x" and cfg.concurrency == 4
    assert cfg.token_file == "/etc/kuma/token" and cfg.dataplane_file == "/etc/kuma/dp.yaml"
    assert cfg.effective_envoy_log_level == "debug" and cfg.log_level == "warning"
    assert cfg.retry_backoff == 0.25


def test_flags_beat_env_beat_file(tmp_path: Path) -> None:
    file_doc = {"controlPlane": {"url": "https://file:5678"}, "dataplane": {"drainTime": "5s", "mesh": "file"},
                "dataplaneRuntime": {"resourceVars": {"a": "1"}}}
    env = {"KUMA_DATAPLANE_DRAIN_TIME": "7s", "KUMA_DATAPLANE_MESH": "env"}
    cfg = resolve({**BASE, "mesh": "flag"}, env, file_doc)
    assert cfg.cp_address == "https://file:5678"  # file only
    assert cfg.drain_time == 7.0  # env over file
    assert cfg.mesh == "flag"  # flag over env
    assert cfg.dataplane_vars == {"a": "1"}


def test_runtime_directory_from_systemd() -> None:
    assert resolve(BASE, {"RUNTIME_DIRECTORY": "/run/kuma-dp-web:/run/other"}).runtime_dir == "/run/kuma-dp-web"
    assert resolve({**BASE, "runtime_dir": "/x"}, {"RUNTIME_DIRECTORY": "/run/y"}).runtime_dir == "/x"


def test_every_problem_named_by_its_source() -> None:
    with pytest.raises(ConfigError) as e:
        resolve({**BASE, "proxy_type": "gateway", "admin_port": "70000"},
                {"KUMA_DATAPLANE_DRAIN_TIME": "soon", "KUMA_READINESS_PORT": "x"},
                {"dataplane": {"bogus": 1}}, file_name="/etc/kuma/kuma-dp.yaml")
    text = str(e.value)
    assert "--proxy-type: 'gateway' is not one of dataplane, ingress" in text
    assert "--admin-port: 70000 is not a port in [1, 65535]" in text
    assert "$KUMA_DATAPLANE_DRAIN_TIME: 'soon' is not a duration" in text
    assert "$KUMA_READINESS_PORT: 'x' is not a port number" in text
    assert "/etc/kuma/kuma-dp.yaml: unknown key 'dataplane.bogus'" in text


@pytest.mark.parametrize(("flags", "message"), [
    ({}, "no dataplane: pass --dataplane-file"),
    ({"dataplane": "x", "dataplane_file": "y"}, "--dataplane and --dataplane-file are both set"),
    ({**BASE, "token": "a", "token_file": "b"}, "--dataplane-token and --dataplane-token-file are both set"),
    ({"name": "web", "mesh": "m", "dataplane_vars": ("a=1",)}, "--dataplane-var is given but there is no"),
    ({**BASE, "metrics_port": "9000", "readiness_port": "9000"}, "use different ports"),
])
def test_cross_checks(flags: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        resolve(flags, {})


def test_name_and_mesh_without_definition_use_the_stored_dataplane() -> None:
    cfg = resolve({"name": "web-1", "mesh": "default"}, {})
    assert cfg.dataplane is None and cfg.dataplane_file is None


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30.0), ("1m30s", 90.0), ("500ms", 0.5), ("1h", 3600.0), ("2", 2.0), ("0.5", 0.5), ("0s", 0.0),
    ("1.5s", 1.5), ("100us", 0.0001),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "s", "10 s", "1x", "-1s", "1s2"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_port_ranges() -> None:
    assert parse_port_range("9901") == PortRange(9901, 9901)
    assert parse_port_range("9901-9999") == PortRange(9901, 9999)
    assert parse_port_range("9901-") == PortRange(9901, 65535)
    assert parse_port_range("-9901") == PortRange(1, 9901)
    for bad in ("0", "9999-9901", "x", "1-70000"):
        with pytest.raises(ValueError):
            parse_port_range(bad)


def test_vars() -> None:
    assert parse_vars(("a=1", "b=2,c=3")) == {"a": "1", "b": "2", "c": "3"}
    assert parse_vars("address=10.0.0.1") == {"address": "10.0.0.1"}
    assert parse_vars(["x=a=b"]) == {"x": "a=b"}
    with pytest.raises(ValueError, match="not KEY=VALUE"):
        parse_vars(["novalue"])


def test_zero_means_default_for_concurrency_and_off_for_metrics() -> None:
    cfg = resolve({**BASE, "concurrency": "0", "metrics_port": "0", "readiness_port": "0"}, {})
    assert cfg.concurrency is None and cfg.metrics_port is None and cfg.readiness_port == 0


def test_config_file(tmp_path: Path) -> None:
    path = tmp_path / "kuma-dp.yaml"
    path.write_text("controlPlane:\n  url: https://cp:5678\n  retry:\n    maxDuration: 1m\n"
                    "dataplane:\n  name: web-1\n  mesh: default\n")
    cfg = resolve({}, {}, load_file(str(path)))
    assert cfg.cp_address == "https://cp:5678" and cfg.retry_max_duration == 60.0 and cfg.name == "web-1"
    path.write_text("- a list")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_file(str(path))
    with pytest.raises(ConfigError, match="cannot read it"):
        load_file(str(tmp_path / "missing.yaml"))


def test_every_flag_has_a_kuma_style_env_var() -> None:
    for s in SETTINGS:
        assert s.env is None or s.env.startswith("KUMA_"), s
        assert s.help, s
    assert DpConfig().envoy_max_restarts == 5


def test_cli_version_and_usage_errors() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["version"])
    assert result.exit_code == 0 and result.output.startswith("kuma-dp ")
    result = runner.invoke(main, ["run", "--drain-time", "soon", "--dataplane-file", "x.yaml"], env={})
    assert result.exit_code == 2
    assert "--drain-time: 'soon' is not a duration" in result.output
    help_text = runner.invoke(main, ["run", "--help"]).output
    for flag in ("--cp-address", "--dataplane-file", "--dataplane-var", "--dataplane-token-file", "--ca-cert-file",
                 "--proxy-type", "--binary-path", "--admin-port", "--concurrency", "--drain-time",
                 "--readiness-port", "--runtime-dir", "KUMA_CONTROL_PLANE_URL"):
        assert flag in help_text, flag


def test_validate_checks_a_definition_without_the_control_plane(tmp_path: Path) -> None:
    runner = CliRunner()
    good = tmp_path / "web.yaml"
    good.write_text("type: Dataplane\nmesh: default\nname: web\nnetworking:\n  address: 10.0.0.1\n  inbound:\n"
                    "  - port: 20001\n    servicePort: 8081\n    tags: {kuma.io/service: web}\n")
    result = runner.invoke(main, ["validate", "--dataplane-file", str(good)])
    assert result.exit_code == 0 and "a valid Dataplane default/web" in result.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("20001", "99999").replace("name: web", "name: Web_1"))
    result = runner.invoke(main, ["validate", "-d", str(bad)])
    assert result.exit_code == 2
    assert "networking.inbound[0].port" in result.output and "name" in result.output
    result = runner.invoke(main, ["validate", "-d", str(good), "--proxy-type", "ingress"])
    assert result.exit_code == 2 and "type: is 'Dataplane'" in result.output
    assert runner.invoke(main, ["validate", "-d", str(tmp_path / "missing.yaml")]).exit_code == 2
