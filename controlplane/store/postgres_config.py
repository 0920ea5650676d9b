"""Connection settings of the postgres store (Kuma's `store.postgres` / KUMA_STORE_POSTGRES_*).

Dependency-free on purpose: controlplane/config.py embeds `PostgresConfig` in its dataclass tree, and
loading the configuration must not import the database driver.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

TlsMode = Literal["disable", "prefer", "require", "verifyNone", "verifyCa", "verifyFull"]

# Kuma's names -> libpq's sslmode. "verifyNone" is Kuma's spelling of "encrypt but do not check the
# certificate", which libpq calls "require".
SSLMODE: dict[str, str] = {
    "disable": "disable",
    "prefer": "prefer",
    "require": "require",
    "verifyNone": "require",
    "verifyCa": "verify-ca",
    "verifyFull": "verify-full",
}


@dataclass(frozen=True, slots=True)
class PostgresConfig:
    host: str = "127.0.0.1"
    port: int = 5432
    user: str = "kuma"
    password: str = field(default="kuma", repr=False)
    db_name: str = "kuma"
    tls_mode: TlsMode = "disable"
    ca_path: str = ""
    cert_path: str = ""
    key_path: str = ""
    max_open_connections: int = 50
    connection_timeout: float = 5.0  # seconds: connecting, and waiting for a free pooled connection

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise ValueError("invalid postgres store settings: " + "; ".join(problems))

    def problems(self) -> list[str]:
        out = []
        if self.tls_mode not in SSLMODE:
            out.append(f"tls_mode {self.tls_mode!r} is not one of {', '.join(SSLMODE)}")
        if self.tls_mode in ("verifyCa", "verifyFull") and not self.ca_path:
            out.append(f"tls_mode {self.tls_mode} checks the server's certificate: set ca_path "
                       "(KUMA_STORE_POSTGRES_TLS_CA_PATH) to the CA that signed it")
        if bool(self.cert_path) != bool(self.key_path):
            out.append("cert_path and key_path (client certificate) must be set together")
        if not 0 < self.port < 65536:
            out.append(f"port {self.port} is not a TCP port")
        if self.max_open_connections < 1:
            out.append("max_open_connections must be at least 1")
        if self.connection_timeout <= 0:
            out.append("connection_timeout must be positive (seconds)")
        return out

    def describe(self) -> str:
        """Where the store lives, for log lines and errors (no password)."""
        return f"postgres://{self.user}@{self.host}:{self.port}/{self.db_name}"

    def connect_kwargs(self, application_name: str = "kuma-cp") -> dict[str, str | int]:
        """libpq connection parameters (psycopg.connect(**kwargs))."""
        kw: dict[str, str | int] = {
            "host": self.host,
            "port": self.port,
            "user": self.user,
            "password": self.password,
            "dbname": self.db_name,
            "sslmode": SSLMODE[self.tls_mode],
            # libpq takes whole seconds; below 2 it rounds to 2 anyway.
            "connect_timeout": max(2, round(self.connection_timeout)),
            "application_name": application_name,
            # A peer that vanishes without closing the socket (host down, network partition) is noticed
            # within ~25 s instead of the kernel's two hours; the LISTEN and leader connections rely on it.
            "keepalives": 1,
            "keepalives_idle": 10,
            "keepalives_interval": 5,
            "keepalives_count": 3,
        }
        if self.ca_path:
            kw["sslrootcert"] = self.ca_path
        if self.cert_path:
            kw["sslcert"] = self.cert_path
            kw["sslkey"] = self.key_path
        return kw
