"""The provided CA: a certificate and key the operator supplies through Kuma DataSources.

`conf.cert` and `conf.key` each name one source: `secret` (a Secret of the mesh), `file` (a path on the control
plane's host), `inline` (base64) or `inlineString`. The certificate source may hold a chain: the first
certificate signs identities, every certificate must be a CA (Kuma's X509-SVID checks); the key must belong to
the first certificate, which must be valid now. All problems are reported, each under the field of the Mesh
YAML that holds it, so the API can refuse a broken CA instead of Envoy NACKing it later.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from controlplane.resources.datasource import DataSource
from controlplane.resources.mesh import MtlsBackend, ProvidedConf
from controlplane.resources.secret import SECRET, SecretSpec
from controlplane.store.base import NotFound, ResourceStore

from .errors import CaError, CaInvalidPem, CaSourceNotFound
from .material import CaMaterial, check_ca_certs, check_pair, parse_certs, parse_key


@dataclass
class _Collector:
    mesh: str
    backend: str
    problems: list[CaError]

    def error(self, cls: type[CaError], field: str, reason: str) -> CaError:
        return cls(reason, field=field, mesh=self.mesh, backend=self.backend)

    def add(self, cls: type[CaError], field: str, reason: str) -> None:
        self.problems.append(self.error(cls, field, reason))


async def load_source(store: ResourceStore, mesh: str, ds: DataSource, path: str, c: _Collector) -> bytes | None:
    """The bytes a DataSource names, or None (and a problem recorded under `path.<kind>`)."""
    given = [k for k in ("secret", "file", "inline", "inline_string") if getattr(ds, k) is not None]
    if len(given) != 1:
        c.add(CaError, path, "exactly one of 'secret', 'file', 'inline' or 'inlineString' must be set")
        return None
    if ds.secret is not None:
        try:
            secret = await store.get(SECRET, ds.secret, mesh)
        except NotFound:
            c.add(CaSourceNotFound, f"{path}.secret", f"secret {ds.secret!r} does not exist in mesh {mesh!r}")
            return None
        assert isinstance(secret.spec, SecretSpec)
        return secret.spec.value()
    if ds.file is not None:
        try:
            with open(ds.file, "rb") as f:
                return f.read()
        except FileNotFoundError:
            c.add(CaSourceNotFound, f"{path}.file",
                  f"file {ds.file!r} does not exist on the control plane host")
        except OSError as e:
            c.add(CaInvalidPem, f"{path}.file", f"file {ds.file!r} cannot be read by the control plane: "
                                                f"{e.strerror or e}")
        return None
    if ds.inline is not None:
        try:
            return base64.b64decode(ds.inline, validate=True)
        except (binascii.Error, ValueError):
            c.add(CaInvalidPem, f"{path}.inline", "must be base64-encoded (or use 'inlineString' for PEM text)")
            return None
    assert ds.inline_string is not None
    return ds.inline_string.encode()


def _conf(mesh: str, backend: MtlsBackend, path: str) -> ProvidedConf:
    try:
        return backend.provided_conf()
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise CaError(f"is not a provided CA configuration (give 'cert' and 'key' data sources): {e}",
                      field=f"{path}.conf", mesh=mesh, backend=backend.name) from None


async def load_provided(store: ResourceStore, mesh: str, backend: MtlsBackend, path: str,
                        cached: CaMaterial | None = None, now: datetime | None = None,
                        ) -> tuple[CaMaterial | None, list[CaError]]:
    """The backend's CA and no problems, or None and every problem found (`path` is `mtls.backends[i]`)."""
    conf = _conf(mesh, backend, path)
    c = _Collector(mesh, backend.name, [])
    cert_path, key_path = f"{path}.conf.cert", f"{path}.conf.key"
    cert_data = await load_source(store, mesh, conf.cert, cert_path, c)
    key_data = await load_source(store, mesh, conf.key, key_path, c)
    token = ("provided", cert_data, key_data)
    if cached is not None and cached.token == token and cached.cert.not_valid_after_utc > (now or _now()):
        return cached, []
    certs = key = None
    if cert_data is not None:
        try:
            certs = parse_certs(cert_data, cert_path, c.error)
        except CaError as e:
            c.problems.append(e)
    if key_data is not None:
        try:
            key = parse_key(key_data, key_path, c.error)
        except CaError as e:
            c.problems.append(e)
    if certs is not None:
        c.problems.extend(check_ca_certs(certs, cert_path, c.error))
    if certs is not None and key is not None:
        c.problems.extend(check_pair(certs[0], key, cert_path, key_path, now or _now(), c.error))
    if c.problems or certs is None or key is None:
        return None, c.problems
    return CaMaterial(backend.name, "provided", tuple(certs), key, token), []


def _now() -> datetime:
    return datetime.now(UTC)


def file_stamp(backend: MtlsBackend) -> tuple[object, ...] | None:
    """What the backend's file sources look like now (None: it has none), so a cache can see a file change
    without any store event."""
    if backend.type != "provided":
        return None
    try:
        conf = backend.provided_conf()
    except ValueError:
        return None
    stamps: list[object] = []
    for ds in (conf.cert, conf.key):
        if ds.file is not None:
            try:
                st = os.stat(ds.file)
                stamps.append((ds.file, st.st_ino, st.st_size, st.st_mtime_ns))
            except OSError:
                stamps.append((ds.file, None))
    return tuple(stamps) or None
