# ruff: noqa: RUF009  (setting() and section() return dataclasses.field objects, not shared defaults)
"""kuma-cp configuration: defaults <- YAML file (-c) <- KUMA_* environment variables.

One dataclass tree. Each leaf knows its YAML key (Kuma's camelCase) and its environment variable (Kuma's
KUMA_* name), so `kuma-cp validate` and `kuma-cp run` report a bad setting by the name the operator used.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import yaml

from controlplane.store.postgres_config import PostgresConfig


class ConfigError(Exception):
    """Every problem found in one pass, each naming the key (and where it came from) and the fix."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid configuration:\n  " + "\n  ".join(problems))


def setting(default: Any, yaml_key: str, env: str | None = None, *, doc: str = "",
            check: str | None = None) -> Any:
    """A leaf: its YAML key, env var, and an optional named check ('port', 'duration', 'cidr', ...)."""
    factory = (lambda: list(default)) if isinstance(default, list) else None
    meta = {"yaml": yaml_key, "env": env, "doc": doc, "check": check}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def section(cls: type, yaml_key: str) -> Any:
    return field(default_factory=cls, metadata={"yaml": yaml_key})


def _default_work_dir() -> Path:
    return Path(os.environ.get("HOME", "/var/lib/kuma")) / ".kuma"


@dataclass
class GeneralConfig:
    work_dir: Path = field(default_factory=_default_work_dir,
                           metadata={"yaml": "workDir", "env": "KUMA_GENERAL_WORK_DIR", "check": None,
                                     "doc": "state directory: sqlite file, generated TLS, ..."})
    tls_cert_file: Path | None = setting(None, "tlsCertFile", "KUMA_GENERAL_TLS_CERT_FILE")
    tls_key_file: Path | None = setting(None, "tlsKeyFile", "KUMA_GENERAL_TLS_KEY_FILE")
    tls_ca_file: Path | None = setting(None, "tlsCaFile", "KUMA_GENERAL_TLS_CA_FILE")
    hostnames: list[str] = setting([], "hostnames", "KUMA_GENERAL_HOSTNAMES",
                                   doc="extra SANs for the generated server certificate")


@dataclass
class PostgresSection:
    host: str = setting("127.0.0.1", "host", "KUMA_STORE_POSTGRES_HOST")
    port: int = setting(5432, "port", "KUMA_STORE_POSTGRES_PORT", check="port")
    user: str = setting("kuma", "user", "KUMA_STORE_POSTGRES_USER")
    password: str = setting("", "password", "KUMA_STORE_POSTGRES_PASSWORD")
    db_name: str = setting("kuma", "dbName", "KUMA_STORE_POSTGRES_DB_NAME")
    tls_mode: Literal["disable", "prefer", "require", "verifyCa", "verifyFull"] = setting(
        "disable", "tlsMode", "KUMA_STORE_POSTGRES_TLS_MODE")
    tls_ca_path: Path | None = setting(None, "tlsCaPath", "KUMA_STORE_POSTGRES_TLS_CA_PATH")
    tls_cert_path: Path | None = setting(None, "tlsCertPath", "KUMA_STORE_POSTGRES_TLS_CERT_PATH")
    tls_key_path: Path | None = setting(None, "tlsKeyPath", "KUMA_STORE_POSTGRES_TLS_KEY_PATH")
    max_open_connections: int = setting(20, "maxOpenConnections", "KUMA_STORE_POSTGRES_MAX_OPEN_CONNECTIONS",
                                        check="positive")
    connection_timeout: int = setting(5, "connectionTimeout", "KUMA_STORE_POSTGRES_CONNECTION_TIMEOUT",
                                      check="positive", doc="seconds")

    def to_store_config(self) -> PostgresConfig:
        return PostgresConfig(
            host=self.host, port=self.port, user=self.user, password=self.password, db_name=self.db_name,
            tls_mode=self.tls_mode, ca_path=str(self.tls_ca_path or ""), cert_path=str(self.tls_cert_path or ""),
            key_path=str(self.tls_key_path or ""), max_open_connections=self.max_open_connections,
            connection_timeout=self.connection_timeout,
        )


@dataclass
class StoreConfig:
    type: Literal["sqlite", "postgres", "memory"] = setting("sqlite", "type", "KUMA_STORE_TYPE")
    postgres: PostgresSection = section(PostgresSection, "postgres")


@dataclass
class HttpApiConfig:
    enabled: bool = setting(True, "enabled", "KUMA_API_SERVER_HTTP_ENABLED")
    # Plain HTTP is admin for whoever reaches it, so by default only this host can.
    interface: str = setting("127.0.0.1", "interface", "KUMA_API_SERVER_HTTP_INTERFACE", check="ip")
    port: int = setting(5681, "port", "KUMA_API_SERVER_HTTP_PORT", check="port")


@dataclass
class HttpsApiConfig:
    enabled: bool = setting(True, "enabled", "KUMA_API_SERVER_HTTPS_ENABLED")
    interface: str = setting("0.0.0.0", "interface", "KUMA_API_SERVER_HTTPS_INTERFACE", check="ip")
    port: int = setting(5682, "port", "KUMA_API_SERVER_HTTPS_PORT", check="port")
    # --- flood limits (controlplane/netguard.py); a cap of 0 is computed from the open files limit ---
    handshake_timeout: float = setting(10.0, "handshakeTimeout", "KUMA_API_SERVER_HTTPS_HANDSHAKE_TIMEOUT",
                                       check="positive", doc="seconds a client has to complete TLS")
    idle_timeout: float = setting(30.0, "idleTimeout", "KUMA_API_SERVER_HTTPS_IDLE_TIMEOUT", check="positive",
                                  doc="seconds a connection may wait for (or dribble) its next request's headers")
    max_connections: int = setting(0, "maxConnections", "KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS",
                                   check="non-negative", doc="0: a quarter of what the open files limit leaves")
    max_connections_per_source: int = setting(
        0, "maxConnectionsPerSource", "KUMA_API_SERVER_HTTPS_MAX_CONNECTIONS_PER_SOURCE", check="non-negative",
        doc="0: a quarter of maxConnections (8 to 1024)")


@dataclass
class ApiServerConfig:
    http: HttpApiConfig = section(HttpApiConfig, "http")
    https: HttpsApiConfig = section(HttpsApiConfig, "https")
    read_only: bool = setting(False, "readOnly", "KUMA_API_SERVER_READ_ONLY")
    max_body_bytes: int = setting(1 << 20, "maxBodyBytes", "KUMA_API_SERVER_MAX_BODY_BYTES", check="positive")
    rate_limit_rps: float = setting(100.0, "rateLimitRps", "KUMA_API_SERVER_RATE_LIMIT_RPS", check="positive",
                                    doc="sustained requests per second per client address")
    rate_limit_burst: int = setting(500, "rateLimitBurst", "KUMA_API_SERVER_RATE_LIMIT_BURST", check="positive")


@dataclass
class DpServerConfig:
    port: int = setting(5678, "port", "KUMA_DP_SERVER_PORT", check="port")
    # Dataplanes on other hosts connect here, so every interface by default (TLS, token-authenticated).
    interface: str = setting("0.0.0.0", "interface", "KUMA_DP_SERVER_INTERFACE", check="ip")
    api_type: Literal["delta", "sotw"] = setting("delta", "apiType", "KUMA_DP_SERVER_API_TYPE",
                                                 doc="xDS variant proxies are told to use")
    nack_backoff: float = setting(5.0, "nackBackoff", "KUMA_DP_SERVER_NACK_BACKOFF", check="positive",
                                  doc="seconds before config is resent to a proxy that rejected it")
    dataplane_grace: float = setting(10.0, "dataplaneGracePeriod", "KUMA_DP_SERVER_DATAPLANE_GRACE_PERIOD",
                                     check="positive", doc="seconds a disconnected kuma-dp keeps its Dataplane")
    # --- flood limits (controlplane/netguard.py) ---
    handshake_timeout: float = setting(10.0, "handshakeTimeout", "KUMA_DP_SERVER_HANDSHAKE_TIMEOUT",
                                       check="positive", doc="seconds a client has to complete TLS and HTTP/2")
    idle_timeout: float = setting(300.0, "idleTimeout", "KUMA_DP_SERVER_IDLE_TIMEOUT", check="positive",
                                  doc="seconds a connection with no call open stays (an ADS stream is a call)")
    max_connections: int = setting(0, "maxConnections", "KUMA_DP_SERVER_MAX_CONNECTIONS", check="non-negative",
                                   doc="0: half of what the open files limit leaves")
    status_flush: float = setting(10.0, "dataplaneStatusFlushInterval",
                                  "KUMA_DP_SERVER_DATAPLANE_STATUS_FLUSH_INTERVAL", check="positive",
                                  doc="seconds between writes of dataplane insights' xDS counters and ACKed config "
                                      "versions (Kuma's dataplaneStatusFlushInterval); connects, disconnects, NACKs, "
                                      "certificates and host DNS reports are written within a second")
    heartbeat: float = setting(10.0, "heartbeatInterval", "KUMA_DP_SERVER_HEARTBEAT_INTERVAL", check="positive",
                               doc="seconds between writes of an instance's heartbeat record "
                                   "(ControlPlaneInstance); three missed ones (a killed instance) make its "
                                   "dataplanes count as offline")


@dataclass
class DiagnosticsConfig:
    server_port: int = setting(5680, "serverPort", "KUMA_DIAGNOSTICS_SERVER_PORT", check="port")
    interface: str = setting("127.0.0.1", "interface", "KUMA_DIAGNOSTICS_INTERFACE", check="ip")


@dataclass
class MonitoringAssignmentServerConfig:
    # Prometheus on another host asks here (kuma_sd_configs), so every interface by default, as in Kuma.
    port: int = setting(5676, "port", "KUMA_MONITORING_ASSIGNMENT_SERVER_PORT", check="port")
    interface: str = setting("0.0.0.0", "interface", "KUMA_MONITORING_ASSIGNMENT_SERVER_INTERFACE", check="ip")
    default_fetch_timeout: float = setting(30.0, "defaultFetchTimeout",
                                           "KUMA_MONITORING_ASSIGNMENT_SERVER_DEFAULT_FETCH_TIMEOUT",
                                           check="positive", doc="seconds a long poll waits when the client "
                                                                 "names no fetch-timeout")


@dataclass
class DnsServerConfig:
    domain: str = setting("mesh", "domain", "KUMA_DNS_SERVER_DOMAIN")
    port: int = setting(5653, "port", "KUMA_DNS_SERVER_PORT", check="port")
    cidr: str = setting("127.240.0.0/12", "CIDR", "KUMA_DNS_SERVER_CIDR", check="cidr")
    # --- DNS and VIPs (controlplane/dns) ---
    interface: str = setting("0.0.0.0", "interface", "KUMA_DNS_SERVER_INTERFACE", check="ip")
    transparent_proxy_cidr: str | None = setting(
        "240.0.0.0/4", "transparentProxyCIDR", "KUMA_DNS_SERVER_TRANSPARENT_PROXY_CIDR", check="cidr",
        doc="second VIP per service, for transparent-proxy hosts; empty (env) or null (YAML): none")
    ttl: int = setting(60, "ttl", "KUMA_DNS_SERVER_TTL", check="positive", doc="seconds, of A answers")
    vip_release_grace: float = setting(3600.0, "vipReleaseGracePeriod", "KUMA_DNS_SERVER_VIP_RELEASE_GRACE_PERIOD",
                                       check="positive", doc="seconds a gone service's VIP stays reserved")
    tcp_idle_timeout: float = setting(10.0, "tcpIdleTimeout", "KUMA_DNS_SERVER_TCP_IDLE_TIMEOUT", check="positive",
                                      doc="seconds a TCP connection may wait for its next query")
    tcp_max_connections: int = setting(0, "tcpMaxConnections", "KUMA_DNS_SERVER_TCP_MAX_CONNECTIONS",
                                       check="non-negative", doc="0: a quarter of what the open files limit leaves")
    tcp_max_connections_per_source: int = setting(
        0, "tcpMaxConnectionsPerSource", "KUMA_DNS_SERVER_TCP_MAX_CONNECTIONS_PER_SOURCE", check="non-negative",
        doc="0: a quarter of tcpMaxConnections (8 to 1024)")
    # --- end DNS and VIPs ---


@dataclass
class DefaultsConfig:
    skip_mesh_creation: bool = setting(False, "skipMeshCreation", "KUMA_DEFAULTS_SKIP_MESH_CREATION")


@dataclass
class ZoneKdsConfig:
    root_ca_file: Path | None = setting(None, "rootCaFile", "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE",
                                        doc="the CA that global's KDS certificate is verified against")
    auth_cp_token_path: Path | None = setting(None, "authCpTokenPath", "KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH",
                                              doc="the zone token file (kumactl generate zone-token --scope cp)")
    max_msg_size: int = setting(4 << 20, "maxMsgSize", "KUMA_MULTIZONE_ZONE_KDS_MAX_MSG_SIZE", check="positive",
                                doc="bytes per KDS message; one type's changes are split to stay under it")


@dataclass
class ZoneConfig:
    name: str = setting("", "name", "KUMA_MULTIZONE_ZONE_NAME")
    global_address: str = setting("", "globalAddress", "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS")
    kds: ZoneKdsConfig = section(ZoneKdsConfig, "kds")


@dataclass
class KdsServerConfig:
    # Zone control planes on other hosts connect here, so every interface by default (TLS, zone tokens).
    interface: str = setting("0.0.0.0", "interface", "KUMA_MULTIZONE_GLOBAL_KDS_INTERFACE", check="ip")
    grpc_port: int = setting(5685, "grpcPort", "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT", check="port")
    max_msg_size: int = setting(4 << 20, "maxMsgSize", "KUMA_MULTIZONE_GLOBAL_KDS_MAX_MSG_SIZE", check="positive",
                                doc="bytes per KDS message; one type's changes are split to stay under it")
    zone_insight_flush: float = setting(10.0, "zoneInsightFlushInterval",
                                        "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_INSIGHT_FLUSH_INTERVAL", check="positive",
                                        doc="seconds between writes of a connected zone's ZoneInsight (its heartbeat)")
    zone_offline_grace: float = setting(30.0, "zoneOfflineGracePeriod",
                                        "KUMA_MULTIZONE_GLOBAL_KDS_ZONE_OFFLINE_GRACE_PERIOD", check="positive",
                                        doc="seconds a zone without a stream still shows Online (a reconnect is not "
                                            "an outage)")


@dataclass
class GlobalConfig:
    kds: KdsServerConfig = section(KdsServerConfig, "kds")


@dataclass
class MultizoneConfig:
    global_: GlobalConfig = section(GlobalConfig, "global")
    zone: ZoneConfig = section(ZoneConfig, "zone")


@dataclass
class LoggingConfig:
    level: Literal["debug", "info", "warning", "error"] = setting("info", "level", "KUMA_LOG_LEVEL")
    format: Literal["text", "json"] = setting("text", "format", "KUMA_LOG_FORMAT")


@dataclass
class Config:
    mode: Literal["zone", "global"] = setting("zone", "mode", "KUMA_MODE")
    general: GeneralConfig = section(GeneralConfig, "general")
    store: StoreConfig = section(StoreConfig, "store")
    api_server: ApiServerConfig = section(ApiServerConfig, "apiServer")
    dp_server: DpServerConfig = section(DpServerConfig, "dpServer")
    diagnostics: DiagnosticsConfig = section(DiagnosticsConfig, "diagnostics")
    dns_server: DnsServerConfig = section(DnsServerConfig, "dnsServer")
    monitoring_assignment_server: MonitoringAssignmentServerConfig = section(MonitoringAssignmentServerConfig,
                                                                             "monitoringAssignmentServer")
    defaults: DefaultsConfig = section(DefaultsConfig, "defaults")
    multizone: MultizoneConfig = section(MultizoneConfig, "multizone")
    logging: LoggingConfig = section(LoggingConfig, "logging")


# --- loading -------------------------------------------------------------------------------------------------


def load(path: Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Defaults, then the YAML file, then KUMA_* env; raises ConfigError listing every bad key."""
    env = os.environ if env is None else env
    problems: list[str] = []
    doc: Any = {}
    if path is not None:
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except OSError as e:
            raise ConfigError([f"{path}: cannot read the config file: {e.strerror}"]) from e
        except yaml.YAMLError as e:
            raise ConfigError([f"{path}: not valid YAML: {e}"]) from e
        if not isinstance(doc, dict):
            raise ConfigError([f"{path}: the top level must be a mapping of settings"])
    cfg = Config()
    _apply(cfg, doc, "", str(path) if path else "", env, problems)
    _check_relations(cfg, problems)
    if problems:
        raise ConfigError(problems)
    return cfg


def _apply(obj: Any, doc: Mapping[str, Any], prefix: str, source: str, env: Mapping[str, str],
           problems: list[str]) -> None:
    hints = typing.get_type_hints(type(obj))
    known = {f.metadata.get("yaml", f.name): f for f in dataclasses.fields(obj)}
    for key in doc:
        if key not in known:
            problems.append(f"{source}: {prefix}{key}: unknown setting (known here: {', '.join(sorted(known))})")
    for yaml_key, f in known.items():
        hint = hints[f.name]
        path = f"{prefix}{yaml_key}"
        if dataclasses.is_dataclass(hint):
            sub = doc.get(yaml_key, {}) or {}
            if not isinstance(sub, dict):
                problems.append(f"{source}: {path}: must be a mapping")
                sub = {}
            _apply(getattr(obj, f.name), sub, path + ".", source, env, problems)
            continue
        if yaml_key in doc:
            _set(obj, f, hint, doc[yaml_key], f"{source}: {path}", problems, from_env=False)
        env_name = f.metadata.get("env")
        if env_name and env_name in env:
            _set(obj, f, hint, env[env_name], f"{path} (from {env_name}={env[env_name]!r})", problems,
                 from_env=True)


def _set(obj: Any, f: dataclasses.Field[Any], hint: Any, raw: Any, where: str, problems: list[str], *,
         from_env: bool) -> None:
    try:
        value = _convert(hint, raw, from_env)
        _named_check(f.metadata.get("check"), value)
    except ValueError as e:
        problems.append(f"{where}: {e}")
        return
    setattr(obj, f.name, value)


def _convert(hint: Any, raw: Any, from_env: bool) -> Any:
    origin, args = get_origin(hint), get_args(hint)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if raw is None or (from_env and raw == ""):
            return None
        return _convert(inner[0], raw, from_env)
    if origin is Literal:
        if raw not in args:
            raise ValueError(f"must be one of {', '.join(map(str, args))}")
        return raw
    if origin is list:
        if from_env and isinstance(raw, str):
            return [p.strip() for p in raw.split(",") if p.strip()]
        if not isinstance(raw, list):
            raise ValueError("must be a list")
        return [_convert(args[0], x, from_env) for x in raw]
    if hint is bool:
        if isinstance(raw, bool):
            return raw
        if from_env and str(raw).lower() in ("true", "1", "yes", "false", "0", "no"):
            return str(raw).lower() in ("true", "1", "yes")
        raise ValueError("must be true or false")
    if hint is int:
        if isinstance(raw, bool):
            raise ValueError("must be an integer")
        if isinstance(raw, int):
            return raw
        if from_env:
            try:
                return int(raw)
            except ValueError:
                pass
        raise ValueError("must be an integer")
    if hint is float:
        if isinstance(raw, int | float) and not isinstance(raw, bool):
            return float(raw)
        if from_env:
            try:
                return float(raw)
            except ValueError:
                pass
        raise ValueError("must be a number")
    if hint is str:
        if not isinstance(raw, str):
            raise ValueError("must be a string")
        return raw
    if hint is Path:
        if not isinstance(raw, str) or not raw:
            raise ValueError("must be a file path")
        return Path(raw)
    raise ValueError(f"unsupported setting type {hint}")  # pragma: no cover - a bug in this module


def _named_check(check: str | None, value: Any) -> None:
    if check is None or value is None:
        return
    if check == "port" and not 1 <= value <= 65535:
        raise ValueError(f"port {value} must be in the range [1, 65535]")
    if check == "positive" and value <= 0:
        raise ValueError("must be greater than zero")
    if check == "non-negative" and value < 0:
        raise ValueError("must be zero (computed from the open files limit) or greater")
    if check == "ip":
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address (use 0.0.0.0 for every interface)") from None
    if check == "cidr":
        try:
            ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR such as 127.240.0.0/12") from None


def _check_relations(cfg: Config, problems: list[str]) -> None:
    ports = {
        "apiServer.http.port": cfg.api_server.http.port if cfg.api_server.http.enabled else None,
        "apiServer.https.port": cfg.api_server.https.port if cfg.api_server.https.enabled else None,
        "dpServer.port": cfg.dp_server.port,
        "diagnostics.serverPort": cfg.diagnostics.server_port,
        "dnsServer.port": cfg.dns_server.port,
        "monitoringAssignmentServer.port": cfg.monitoring_assignment_server.port if cfg.mode == "zone" else None,
        "multizone.global.kds.grpcPort": cfg.multizone.global_.kds.grpc_port if cfg.mode == "global" else None,
    }
    seen: dict[int, str] = {}
    for key, port in ports.items():
        if port is None:
            continue
        if port in seen:
            problems.append(f"{key}: port {port} is already used by {seen[port]}: give each server its own port")
        seen[port] = key
    if (cfg.general.tls_cert_file is None) != (cfg.general.tls_key_file is None):
        problems.append("general.tlsCertFile / general.tlsKeyFile: set both (your own certificate) or neither "
                        "(kuma-cp generates one)")
    zone = cfg.multizone.zone
    if cfg.mode == "zone" and zone.global_address:
        if not zone.name:
            problems.append("multizone.zone.name: a zone that connects to a global control plane needs a name "
                            "(KUMA_MULTIZONE_ZONE_NAME)")
        if not zone.global_address.startswith("grpcs://"):
            problems.append(f"multizone.zone.globalAddress: {zone.global_address!r} must be grpcs://HOST:PORT "
                            "(global's KDS port is TLS only; KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS)")
        if zone.kds.auth_cp_token_path is None:
            problems.append("multizone.zone.kds.authCpTokenPath: a zone that connects to global needs its zone "
                            "token: generate one on global with 'kumactl generate zone-token --zone NAME --scope cp' "
                            "and set KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH to its file")
        if zone.kds.root_ca_file is None:
            problems.append("multizone.zone.kds.rootCaFile: a zone verifies global's KDS certificate: set "
                            "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE to global's CA file (there is no skip-verify)")


def env_reference() -> list[tuple[str, str, Any]]:
    """(env var, yaml path, default) for every setting: the README's table and `kuma-cp config` use this."""
    out: list[tuple[str, str, Any]] = []

    def walk(obj: Any, prefix: str) -> None:
        for f in dataclasses.fields(obj):
            key = prefix + f.metadata.get("yaml", f.name)
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                walk(value, key + ".")
            elif f.metadata.get("env"):
                out.append((f.metadata["env"], key, value))

    walk(Config(), "")
    return out
