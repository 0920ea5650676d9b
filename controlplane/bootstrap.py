"""Assemble a Runtime from a Config: store, TLS, tokens, API, diagnostics, defaults."""

from __future__ import annotations

import logging

from controlplane.api.checks import WriteChecks
from controlplane.api.ownership import Ownership
from controlplane.api.policies_view import PoliciesView
from controlplane.api.server import ApiContext, ApiServer
from controlplane.api.tokens import TokenApi, user_authenticator
from controlplane.api.zones import ZonesApi
from controlplane.ca import CaManager
from controlplane.config import Config
from controlplane.defaults import AdminUserToken, DefaultMesh
from controlplane.diagnostics import DiagnosticsServer
from controlplane.dns import VipView, add_dns
from controlplane.kds.wiring import add_kds
from controlplane.mads.wiring import add_mads
from controlplane.policies._defaults import DefaultMeshPolicies
from controlplane.resources import load_all
from controlplane.runtime import Runtime
from controlplane.store.factory import create_store
from controlplane.tls import CpTls, ensure_cp_tls
from controlplane.tokens.service import TokenService
from controlplane.xds.auth import DataplaneAuthenticator
from controlplane.xds.bootstrap_service import BootstrapService
from controlplane.xds.cache import SnapshotCache
from controlplane.xds.dpserver import DpServer, FanoutCallbacks, RefuseDataplanes
from controlplane.xds.gc import DataplaneGc
from controlplane.xds.gc_pacing import CollectionPacer
from controlplane.xds.ingress_services import IngressServices
from controlplane.xds.insights import InsightsRecorder
from controlplane.xds.instances import InstanceRecord
from controlplane.xds.lifecycle import DataplaneLifecycle
from controlplane.xds.reconciler import Reconciler
from controlplane.xds.server import AdsServicer
from controlplane.xds.status_service import StatusService
from controlplane.xds.vips_service import VipsService

log = logging.getLogger("kuma.bootstrap")


def add_xds(runtime: Runtime, tls: CpTls, tokens: TokenService, ca: CaManager, vips: VipView) -> None:
    """A zone control plane serves Envoy: reconciler, insights, the dp-server (ADS, bootstrap, VIP watch)."""
    cfg, store = runtime.config, runtime.store
    cache = SnapshotCache()
    zone = cfg.multizone.zone.name
    reconciler = Reconciler(store, cache, ca, vips=vips, supervisor=runtime.supervisor, zone=zone)
    # This instance's heartbeat record (one write per heartbeat) rides on the insights recorder.
    instance = InstanceRecord(store, runtime.instance_id, mode=cfg.mode, zone=zone)
    insights = InsightsRecorder(store, runtime.instance_id, heartbeat=cfg.dp_server.heartbeat,
                                status_interval=cfg.dp_server.status_flush, supervisor=runtime.supervisor,
                                instance=instance)
    reconciler.on_identity.append(insights.on_identity)
    auth = DataplaneAuthenticator(store, tokens, zone=zone)
    lifecycle = DataplaneLifecycle(store, auth, reconciler, grace=cfg.dp_server.dataplane_grace,
                                   instance_id=runtime.instance_id, heartbeat=cfg.dp_server.heartbeat)
    ads = AdsServicer(cache, auth, FanoutCallbacks([lifecycle, insights]), nack_backoff=cfg.dp_server.nack_backoff)
    # Envoy verifies the dp-server with the CA; with an operator's certificate and no CA file, trust that
    # certificate itself (it must then be the one the dp-server presents).
    bootstrap = BootstrapService(store, auth, tls.ca_pem or tls.cert_pem, api_type=cfg.dp_server.api_type,
                                 vips=vips)
    for component in (reconciler, insights):
        runtime.add(component)
    # garbage collections between pushes, not inside them
    pacer = CollectionPacer(lambda: reconciler.last_pass_at, pending=reconciler.pending, supervisor=runtime.supervisor)
    reconciler.on_pass_start.append(pacer.push_started)  # the collector stays off while a push goes out
    runtime.add(pacer)
    # MeshMetric: where Prometheus scrapes each dataplane (MADS, port 5676) and what each kuma-dp publishes
    metrics_config = add_mads(runtime, auth)
    # Dataplanes of instances that died without unregistering them: one instance (the leader) cleans up.
    runtime.add(DataplaneGc(store, grace=cfg.dp_server.dataplane_grace, heartbeat=cfg.dp_server.heartbeat,
                            supervisor=runtime.supervisor, served=lifecycle.served, zone=zone), leader_only=True)
    if zone:  # what this zone's ingresses offer other zones
        runtime.add(IngressServices(store, zone, supervisor=runtime.supervisor), leader_only=True)
    runtime.add(DpServer(cfg.dp_server.interface, cfg.dp_server.port, tls.grpc_key_cert_pairs(), ads,
                         [bootstrap.handler(), VipsService(vips, tokens).handler(),
                          StatusService(auth, insights).handler(), metrics_config.handler()], on_stop=lifecycle.stop,
                         handshake_timeout=cfg.dp_server.handshake_timeout, idle_timeout=cfg.dp_server.idle_timeout,
                         max_connections=cfg.dp_server.max_connections))


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
    ca = CaManager(store, supervisor=runtime.supervisor)
    ca.wait_for_global_ca = cfg.mode == "zone" and bool(cfg.multizone.zone.global_address)
    # Kuma's default policies in every new mesh, created with it; none on a zone under a global (global sends them).
    defaults_enabled = not (cfg.mode == "zone" and cfg.multizone.zone.global_address)
    api_ctx = ApiContext(config=cfg, store=store, registry=registry, instance_id=runtime.instance_id,
                         authenticate=user_authenticator(tokens), ssl_context=tls.server_ssl_context(),
                         extra_routes=[TokenApi(tokens).add_routes, PoliciesView(store).add_routes,
                                       ZonesApi(store, mode=cfg.mode,
                                                flush=cfg.multizone.global_.kds.zone_insight_flush,
                                                grace=cfg.multizone.global_.kds.zone_offline_grace).add_routes],
                         checks=WriteChecks(store, ca, default_policies=defaults_enabled, ownership=Ownership(
                             cfg.mode, federated=bool(cfg.multizone.zone.global_address),
                             zone=cfg.multizone.zone.name)))
    runtime.add(DiagnosticsServer(runtime))
    runtime.add(ca)
    if cfg.mode == "zone":
        # DNS and VIPs (controlplane/dns): the VIP map + .mesh DNS server on every zone instance, the
        # allocator on the leader, GET /meshes/{mesh}/vips on the API; then what serves Envoy and kuma-dp.
        dns_api = add_dns(runtime)
        api_ctx.extra_routes.append(dns_api.add_routes)
        add_xds(runtime, tls, tokens, ca, dns_api.view)
    else:  # global: no dataplanes, DNS or VIPs; a kuma-dp pointed here is told to use a zone
        runtime.add(DpServer(cfg.dp_server.interface, cfg.dp_server.port, tls.grpc_key_cert_pairs(), None,
                             [RefuseDataplanes()], handshake_timeout=cfg.dp_server.handshake_timeout,
                             idle_timeout=cfg.dp_server.idle_timeout, max_connections=cfg.dp_server.max_connections))
    # multi-zone: KDS server on global, leader-only client on a zone under one; GET / says how this one is linked
    api_ctx.index_fields.append(add_kds(runtime, tls, tokens, ca))
    runtime.add(ApiServer(api_ctx))
    # Before DefaultMesh, so the default mesh gets Kuma's default policies too (none on a zone under a global).
    runtime.add(DefaultMeshPolicies(store, enabled=defaults_enabled, supervisor=runtime.supervisor), leader_only=True)
    runtime.add(AdminUserToken(tokens), leader_only=True)
    # A zone under a global gets its meshes from global (a local 'default' would clash with global's).
    if not cfg.defaults.skip_mesh_creation and not (cfg.mode == "zone" and cfg.multizone.zone.global_address):
        runtime.add(DefaultMesh(store, default_policies=defaults_enabled), leader_only=True)
    return runtime
