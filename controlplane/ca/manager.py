"""`CaManager`: the mesh CAs of one control plane, parsed once and shared by every xDS build.

`get_ca(mesh)` answers with the CA of the mesh's enabled backend (None when mTLS is off), creating a builtin CA
on first use. Every builtin backend listed in the mesh is ensured, not only the enabled one (Kuma's
`EnsureBackends` does the same when a Mesh is written): that is what makes a CA rotation seamless. Operators
rotate by adding a backend (its CA enters every dataplane's trust bundle while the old one still signs), then
switching `enabledBackend` (new identities are signed by a CA every peer already trusts), then removing the
old backend. So `MeshCa.trust_bundle_pem` holds the CAs of every backend that has material, the enabled one
first; a broken non-enabled backend is left out with a warning rather than breaking the mesh.

Caching. Parsed material is kept per (mesh, backend) with a token of what it was parsed from (secret
versions and bytes, file bytes, inline text), so a call re-reads the secrets (cheap) but parses nothing unless
they changed. When the manager is started as a component (`start()`), it also watches the store: then a repeat
call for an unchanged Mesh spec answers from memory without any store read, until a Secret or the Mesh of that
mesh changes (or `FAST_PATH_MAX_AGE` passes, in case an event was lost). Provided CAs read from files are
re-checked (stat) on every call, since a file change makes no store event. `invalidate(mesh)` drops
everything known about a mesh.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime

from cryptography import x509

from controlplane.resources.base import Resource
from controlplane.resources.errors import InvalidParameter
from controlplane.resources.mesh import MeshSpec, Mtls, MtlsBackend
from controlplane.store.base import ChangeEvent, ResourceStore
from controlplane.supervise import Supervisor, cancel_and_wait

from .builtin import BuiltinCa, builtin_settings, cert_secret_name, key_secret_name
from .errors import CaError, CaNotSynced
from .material import CaKey, CaMaterial, cert_pem, fingerprint
from .provided import file_stamp, load_provided

log = logging.getLogger("kuma.ca")

FAST_PATH_MAX_AGE = 30.0  # seconds a watched answer is trusted without reading the store


@dataclass(frozen=True, slots=True)
class MeshCa:
    """The CA that signs identities in a mesh, and what its dataplanes trust."""

    mesh: str
    backend: str
    type: str                 # "builtin" | "provided"
    mode: str                 # the backend's mTLS mode: "STRICT" | "PERMISSIVE"
    cert_pem: bytes           # the signing CA certificate
    chain_pem: bytes          # intermediates to send after an identity certificate (empty for a root CA)
    trust_bundle_pem: bytes   # every backend's CA certificates, enabled backend first (Envoy's trusted_ca)
    fingerprint: str          # sha256 of the signing certificate (DER), hex
    trusted_fingerprints: tuple[str, ...]
    not_after: datetime       # the signing certificate's notAfter (identities never outlive it)
    cert: x509.Certificate = field(repr=False, compare=False)
    key: CaKey = field(repr=False, compare=False)


def _mtls(mesh: Resource) -> Mtls | None:
    spec = mesh.spec
    if not isinstance(spec, MeshSpec):
        raise TypeError(f"expected a Mesh resource, got {mesh.type.name}")
    return spec.mtls


def enabled_backend(mesh: Resource) -> tuple[int, MtlsBackend] | None:
    """The enabled backend and its index in `mtls.backends`; None when mTLS is off."""
    mtls = _mtls(mesh)
    if mtls is None or not mtls.enabled_backend:
        return None
    for i, b in enumerate(mtls.backends):
        if b.name == mtls.enabled_backend:
            return i, b
    raise CaError(f"names backend {mtls.enabled_backend!r}, which is not among mtls.backends",
                  field="mtls.enabledBackend", mesh=mesh.meta.name, backend=mtls.enabled_backend)


def _global(mesh: Resource) -> bool:
    return mesh.meta.labels.get("kuma.io/origin") == "global"


def used_secrets(mesh: Resource) -> list[str]:
    """Names of the mesh Secrets its CA backends use (Kuma's `UsedSecrets`): the builtin CAs' pairs and the
    secrets provided backends reference. The API can refuse to delete these while the Mesh names them."""
    mtls = _mtls(mesh)
    out: list[str] = []
    for backend in mtls.backends if mtls else []:
        if backend.type == "builtin":
            out += [cert_secret_name(mesh.meta.name, backend.name), key_secret_name(mesh.meta.name, backend.name)]
        else:
            try:
                conf = backend.provided_conf()
            except ValueError:
                continue
            out += [ds.secret for ds in (conf.cert, conf.key) if ds.secret]
    return list(dict.fromkeys(out))


class CaManager:
    """One per control plane. Also a runtime component: `start()` makes repeat lookups free (see module doc)."""

    name = "ca-manager"

    def __init__(self, store: ResourceStore, *, supervisor: Supervisor | None = None) -> None:
        self._store = store
        # On a zone under a global: the builtin CA of a mesh global owns (labelled kuma.io/origin=global) is
        # made on global and arrives over KDS; a zone making its own would give the mesh a second trust root,
        # so dataplanes in two zones would not trust each other. It is waited for, never made here.
        self.wait_for_global_ca = False
        self._supervisor = supervisor or Supervisor()
        self._builtin = BuiltinCa(store)
        self._materials: dict[tuple[str, str], CaMaterial] = {}
        self._assembled: dict[str, MeshCa] = {}
        # mesh -> (mtls spec key, file stamps, monotonic time, answer); used only while watching
        self._fast: dict[str, tuple[str, tuple[object, ...], float, MeshCa]] = {}
        self._generation: dict[str, int] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._watching = False
        self._task: asyncio.Task[None] | None = None

    # --- component ---------------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        ready = asyncio.Event()
        self._task = self._supervisor.spawn("ca-manager-watch", lambda: self._watch(ready))
        await ready.wait()

    async def stop(self) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        self._watching = False
        self._fast.clear()

    async def _watch(self, ready: asyncio.Event) -> None:
        # Supervised: if the watch fails, it is restarted; meanwhile every lookup reads the store again (slower,
        # never stale).
        try:
            async with self._store.watch() as events:
                self._fast.clear()  # a restart may have missed events
                self._watching = True
                ready.set()
                while True:
                    self.handle_event(await events.get())
        finally:
            self._watching = False
            self._fast.clear()
            ready.set()

    def handle_event(self, event: ChangeEvent) -> None:
        """Drop what a store change may have made stale (the watcher calls this; so may a runtime that
        already consumes the store's events)."""
        if event.type == "Secret":
            self._bump(event.mesh)
        elif event.type == "Mesh":
            if event.op == "delete":
                self.invalidate(event.name)
            else:
                self._bump(event.name)

    def _bump(self, mesh: str) -> None:
        self._generation[mesh] = self._generation.get(mesh, 0) + 1
        self._fast.pop(mesh, None)

    def invalidate(self, mesh: str | None = None) -> None:
        """Forget everything parsed for `mesh` (every mesh when None); the next call reads the store."""
        meshes = {mesh} if mesh is not None else {k[0] for k in self._materials} | set(self._assembled)
        for m in meshes:
            self._bump(m)
            self._assembled.pop(m, None)
            for key in [k for k in self._materials if k[0] == m]:
                del self._materials[key]

    # --- lookups -----------------------------------------------------------------------------------------------

    async def get_ca(self, mesh: Resource) -> MeshCa | None:
        """The CA of the mesh's enabled backend; None when mTLS is off. Raises `CaError` when the enabled
        backend's CA cannot be had (the message names the field to fix)."""
        found = enabled_backend(mesh)
        if found is None:
            return None
        index, enabled = found
        mtls = _mtls(mesh)
        assert mtls is not None
        name = mesh.meta.name
        spec_key = json.dumps(mtls.to_wire(), sort_keys=True)
        stamps = tuple(file_stamp(b) for b in mtls.backends)
        if self._watching:
            fast = self._fast.get(name)
            if fast is not None and fast[0] == spec_key and fast[1] == stamps \
                    and time.monotonic() - fast[2] < FAST_PATH_MAX_AGE:
                return fast[3]
        generation = self._generation.get(name, 0)

        materials: list[CaMaterial] = []
        own: CaMaterial | None = None
        for i, backend in enumerate(mtls.backends):
            try:
                material = await self._material(name, backend, f"mtls.backends[{i}]", from_global=_global(mesh))
            except CaError as e:
                if i == index:
                    raise
                log.warning("CA backend left out of the trust bundle: %s", e,
                            extra={"mesh": name, "backend": backend.name})
                continue
            materials.append(material)
            if i == index:
                own = material
        assert own is not None
        live = {b.name for b in mtls.backends}
        for key in [k for k in self._materials if k[0] == name and k[1] not in live]:
            del self._materials[key]

        ca = self._assemble(name, enabled, own, materials)
        if self._watching and self._generation.get(name, 0) == generation:
            self._fast[name] = (spec_key, stamps, time.monotonic(), ca)
        return ca

    def _assemble(self, mesh: str, enabled: MtlsBackend, own: CaMaterial, materials: list[CaMaterial]) -> MeshCa:
        bundle: list[bytes] = []
        seen: list[str] = []
        for m in [own, *(m for m in materials if m is not own)]:
            for c in m.certs:
                fp = fingerprint(c)
                if fp not in seen:
                    seen.append(fp)
                    bundle.append(cert_pem(c))
        ca = MeshCa(mesh=mesh, backend=enabled.name, type=enabled.type, mode=enabled.mode, cert_pem=own.cert_pem,
                    chain_pem=own.chain_pem, trust_bundle_pem=b"".join(bundle), fingerprint=own.fingerprint,
                    trusted_fingerprints=tuple(seen), not_after=own.cert.not_valid_after_utc, cert=own.cert,
                    key=own.key)
        previous = self._assembled.get(mesh)
        if previous is not None and previous == ca and previous.key is ca.key:
            return previous  # same object for the same CA: cheap identity checks downstream
        self._assembled[mesh] = ca
        return ca

    async def _material(self, mesh: str, backend: MtlsBackend, path: str, *, from_global: bool = False
                        ) -> CaMaterial:
        key = (mesh, backend.name)
        cached = self._materials.get(key)
        if cached is not None and cached.type != backend.type:
            cached = None
        if backend.type == "builtin":
            material, _ = await self._builtin.read(mesh, backend, path, cached)
            if material is None and from_global and self.wait_for_global_ca:
                raise CaNotSynced(
                    "the mesh's builtin CA has not arrived from the global control plane yet (it is made on global "
                    "and synced to every zone, so the mesh has one trust root); identities are issued once it "
                    "arrives: check this zone's connection to global", field=path, mesh=mesh, backend=backend.name)
            if material is None:
                async with self._locks.setdefault(key, asyncio.Lock()):
                    material = await self._builtin.ensure(mesh, backend, path, self._materials.get(key))
        else:
            material, problems = await load_provided(self._store, mesh, backend, path, cached)
            if material is None:
                self._materials.pop(key, None)
                first = problems[0]
                if len(problems) > 1:
                    first.reason += f" (and {len(problems) - 1} more problem(s): " + \
                        "; ".join(f"{p.field}: {p.reason}" for p in problems[1:]) + ")"
                raise first
        if material is not cached:
            log.info("CA loaded", extra={"mesh": mesh, "backend": backend.name, "type": backend.type,
                                         "fingerprint": material.fingerprint,
                                         "not_after": material.cert.not_valid_after_utc.isoformat()})
        self._materials[key] = material
        return material

    async def ensure_backends(self, mesh: Resource) -> None:
        """Create the CA of every builtin backend of the mesh now (the API may call this after a Mesh is
        written, as Kuma does; `get_ca` does it anyway)."""
        mtls = _mtls(mesh)
        for i, backend in enumerate(mtls.backends if mtls else []):
            if backend.type == "builtin":
                await self._material(mesh.meta.name, backend, f"mtls.backends[{i}]", from_global=_global(mesh))

    async def validate_backend(self, mesh: Resource) -> list[InvalidParameter]:
        """Problems with the mesh's CA backends that only the store/files reveal (a provided backend's secrets
        exist, hold PEM, the key matches, the certificate is a valid CA), as the API's invalid parameters.
        Creates nothing."""
        mtls = _mtls(mesh)
        out: list[InvalidParameter] = []
        for i, backend in enumerate(mtls.backends if mtls else []):
            path = f"mtls.backends[{i}]"
            try:
                if backend.type == "provided":
                    _, problems = await load_provided(self._store, mesh.meta.name, backend, path)
                    out.extend(p.as_invalid_parameter() for p in problems)
                else:
                    builtin_settings(mesh.meta.name, backend, path)
            except CaError as e:
                out.append(e.as_invalid_parameter())
        return out

    @property
    def watching(self) -> bool:
        return self._watching
