"""Placing a policy's HTTP filter in a connection manager: before the router, after what is already there
(RBAC first, then the policies in plugin order)."""

from __future__ import annotations

from envoy.config.listener.v3 import listener_pb2
from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

from controlplane.xds.generate.envoy import HCM_FILTER, update_filters

ROUTER_FILTER = "envoy.filters.http.router"


def insert_before_router(manager: hcm_pb2.HttpConnectionManager, filters: list[hcm_pb2.HttpFilter]) -> None:
    at = next((i for i, f in enumerate(manager.http_filters) if f.name == ROUTER_FILTER), len(manager.http_filters))
    for offset, f in enumerate(filters):
        manager.http_filters.insert(at + offset, f)


def add_http_filters(listener: listener_pb2.Listener, filters: list[hcm_pb2.HttpFilter]) -> None:
    """Every HTTP connection manager of an inbound listener gets `filters` before its router (TCP chains are
    left alone): the per-inbound filter block of MeshFaultInjection and MeshRateLimit."""
    if filters:
        update_filters(listener, HCM_FILTER, hcm_pb2.HttpConnectionManager,
                       lambda manager: insert_before_router(manager, filters))
