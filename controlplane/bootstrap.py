"""Assemble a Runtime from a Config: store, TLS, tokens, API, diagnostics, defaults."""

from __future__ import annotations

import logging

from controlplane.api.server import ApiContext, ApiServer
from controlplane.api.tokens import TokenApi, user_authenticator
from controlplane.config import Config
from controlplane.defaults import AdminUserToken, DefaultMesh
from controlplane.diagnostics import DiagnosticsServer
from controlplane.resources import load_all
from controlplane.runtime import Runtime
from controlplane.store.factory import create_store
from controlplane.tls import ensure_cp_tls
from controlplane.tokens.service import TokenService

log = logging.getLogger("kuma.bootstrap")


async def build_runtime(cfg: Config) -> Runtime:
    registry = load_all()
    work_dir = cfg.general.work_dir
    work_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    store = create_store(cfg.store.type, work_dir=work_dir,
                         postgres=cfg.store.postgres.to_store_config() if cfg.store.type == "postgres" else None)
    tls = ensure_cp_tls(work_dir, cfg.general.tls_cert_file, cfg.general.tls_key_file, cfg.general.hostnames,
                        ca_file=cfg.general.tls_ca_file)
    runtime = Runtime(config=cfg, store=store, elector=store.leader_elector())
    tokens = TokenService(store)
    api_ctx = ApiContext(config=cfg, store=store, registry=registry, instance_id=runtime.instance_id,
                         authenticate=user_authenticator(tokens), ssl_context=tls.server_ssl_context(),
                         extra_routes=[TokenApi(tokens).add_routes])
    runtime.add(DiagnosticsServer(runtime))
    runtime.add(ApiServer(api_ctx))
    runtime.add(AdminUserToken(tokens), leader_only=True)
    if not cfg.defaults.skip_mesh_creation:
        runtime.add(DefaultMesh(store), leader_only=True)
    return runtime
