"""A real PostgreSQL server for tests and benchmarks.

Either an existing server (env KUMA_TEST_PG_HOST, KUMA_TEST_PG_PORT, KUMA_TEST_PG_USER,
KUMA_TEST_PG_PASSWORD; the user needs CREATEDB), or a throwaway cluster started from Debian's server binaries
(`/usr/lib/postgresql/<version>/bin`, newest version) in a temp dir on a free loopback port, always stopped
and removed afterwards.

Plain functions (`running_server()`, `fresh_database()`) work without pytest (bench/bench_store.py uses them);
the pytest fixtures below wrap them:
- `postgres_server` (session): the `PgServer` (host, port, user, password).
- `postgres_config` (function): a `PostgresConfig` for a new, empty, un-migrated database of its own,
  dropped after the test.
- `postgres_migrated_config` (function): the same, with `migrate_up` already applied.
Load them with `pytest_plugins = ["tests.postgres_server"]` (tests/conftest.py does).
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from controlplane.store.postgres_config import PostgresConfig
from tests.ports import free_port
from tests.requirements import unavailable

ENV_PREFIX = "KUMA_TEST_PG_"
TEST_USER = "kuma_test"


@dataclass(frozen=True)
class PgServer:
    host: str
    port: int
    user: str
    password: str
    version: str = ""

    def config(self, db_name: str = "postgres", **overrides: object) -> PostgresConfig:
        base = PostgresConfig(host=self.host, port=self.port, user=self.user, password=self.password,
                              db_name=db_name, connection_timeout=5.0)
        return replace(base, **overrides)  # type: ignore[arg-type]

    def admin_conninfo(self) -> str:
        return make_conninfo(host=self.host, port=self.port, user=self.user,
                                              password=self.password, dbname="postgres")


def find_bin_dir() -> Path | None:
    """The newest Debian PostgreSQL server binaries (initdb is not on PATH there), else PATH's."""
    found = []
    for initdb in glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        version = Path(initdb).parent.parent.name
        key = tuple(int(p) for p in re.findall(r"\d+", version))
        found.append((key, Path(initdb).parent))
    if found:
        return max(found)[1]
    initdb_path = shutil.which("initdb")
    return Path(initdb_path).resolve().parent if initdb_path and shutil.which("pg_ctl") else None


def external_server() -> PgServer | None:
    host = os.environ.get(ENV_PREFIX + "HOST")
    if not host:
        return None
    return PgServer(host=host, port=int(os.environ.get(ENV_PREFIX + "PORT", "5432")),
                    user=os.environ.get(ENV_PREFIX + "USER", "postgres"),
                    password=os.environ.get(ENV_PREFIX + "PASSWORD", ""))


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and the server refuse to run as root.
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


def _run(cmd: list[str], cwd: Path) -> None:
    proc = subprocess.run(_as_postgres(cmd), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")


@contextlib.contextmanager
def throwaway_server(*, fsync: bool = False, listen_address: str = "127.0.0.1",
                     allow_network: str = "") -> Iterator[PgServer]:
    """Start a private cluster; stop it (immediate) and delete it on exit, whatever happened.

    fsync=False by default: tests do not need durability and run much faster without it. Benchmarks pass
    fsync=True to measure what a real server would do. `listen_address` is the one address it listens on (the lab's
    tests give their lab network's address on this machine, never a wildcard); `allow_network` (CIDR) lets that
    network's hosts log in with the password too.
    """
    if listen_address in ("", "*", "0.0.0.0", "::"):
        raise ValueError(f"listen_address {listen_address!r}: give one address of this machine, never a wildcard")
    bin_dir = find_bin_dir()
    if bin_dir is None:
        raise FileNotFoundError("no PostgreSQL server binaries (initdb, pg_ctl): apt-get install postgresql")
    root = Path(tempfile.mkdtemp(prefix="kuma-pg-"))
    data, sock, logfile = root / "data", root / "sock", root / "server.log"
    started = False
    try:
        sock.mkdir()
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
            shutil.chown(sock, "postgres", "postgres")
            if subprocess.run(_as_postgres(["test", "-w", str(root)]), check=False).returncode != 0:
                raise PermissionError(f"the postgres user cannot write {root} (is TMPDIR under a private "
                                      "directory?): point TMPDIR somewhere world-traversable such as /tmp")
        password = secrets.token_urlsafe(16)
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "postgres", "-E", "UTF8", "--locale=C",
              "--auth-local=trust", "--auth-host=scram-sha-256"], cwd=root)
        if allow_network:
            with open(data / "pg_hba.conf", "a") as hba:
                hba.write(f"host all all {allow_network} scram-sha-256\n")
        port = free_port()
        opts = (f"-c listen_addresses={listen_address} -p {port} -c unix_socket_directories={sock} "
                f"-c max_connections=300 -c fsync={'on' if fsync else 'off'} "
                f"-c synchronous_commit={'on' if fsync else 'off'} -c full_page_writes={'on' if fsync else 'off'}")
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(logfile), "-o", opts, "-w", "-t", "60",
              "start"], cwd=root)
        started = True
        # The superuser logs in over the socket (trust); tests use a password user over TCP, like kuma-cp.
        with psycopg.connect(host=str(sock), port=port, user="postgres", dbname="postgres",
                             autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE ROLE {} LOGIN CREATEDB PASSWORD {}").format(
                sql.Identifier(TEST_USER), sql.Literal(password)))
            # DROP DATABASE ... WITH (FORCE) also ends an autovacuum worker busy in that database, which
            # runs as no role: only a member of pg_signal_backend may (else "must be a member of the role
            # whose process is being terminated", now and then at a test's teardown).
            conn.execute(sql.SQL("GRANT pg_signal_backend TO {}").format(sql.Identifier(TEST_USER)))
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
        yield PgServer(host=listen_address, port=port, user=TEST_USER, password=password, version=version)
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "stop", "-m", "immediate", "-w", "-t", "30"],
                     cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@contextlib.contextmanager
def running_server(*, fsync: bool = False) -> Iterator[PgServer]:
    """The server named by KUMA_TEST_PG_* if set, else a throwaway one."""
    ext = external_server()
    if ext is not None:
        yield ext
        return
    with throwaway_server(fsync=fsync) as server:
        yield server


def create_database(server: PgServer, prefix: str = "kuma_test") -> str:
    name = f"{prefix}_{secrets.token_hex(6)}"
    with psycopg.connect(server.admin_conninfo(), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return name


def drop_database(server: PgServer, name: str) -> None:
    deadline = time.monotonic() + 10
    while True:
        try:
            with psycopg.connect(server.admin_conninfo(), autocommit=True) as conn:
                # FORCE (PostgreSQL 13+) ends sessions a failed test may have left behind.
                conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                    sql.Identifier(name)))
            return
        except (psycopg.OperationalError, psycopg.errors.InsufficientPrivilege):
            # InsufficientPrivilege: an autovacuum worker in that database, and a server given through
            # KUMA_TEST_PG_* whose user is not in pg_signal_backend: it finishes soon.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


@contextlib.contextmanager
def fresh_database(server: PgServer, **overrides: object) -> Iterator[PostgresConfig]:
    name = create_database(server)
    try:
        yield server.config(name, **overrides)
    finally:
        drop_database(server, name)


# --- pytest fixtures --------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PgServer]:
    if external_server() is None and find_bin_dir() is None:
        unavailable("postgres", "no PostgreSQL server: install the server binaries (apt-get install postgresql) or set "
                    "KUMA_TEST_PG_HOST/PORT/USER/PASSWORD")
    with running_server() as server:
        yield server


@pytest.fixture
def postgres_config(postgres_server: PgServer) -> Iterator[PostgresConfig]:
    """A new empty database for this test (schema not migrated)."""
    with fresh_database(postgres_server) as config:
        yield config


@pytest.fixture
def postgres_migrated_config(postgres_config: PostgresConfig) -> PostgresConfig:
    """A new database for this test with the schema migrated up."""
    from controlplane.store.postgres import migrate_up

    migrate_up(postgres_config)
    return postgres_config
