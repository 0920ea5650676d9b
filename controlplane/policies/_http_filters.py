"""Placing a policy's HTTP filter in a connection manager: before the router, after what is already there
(RBAC first, then the policies in plugin order)."""

from __future__ import annotations

from envoy.extensions.filters.network.http_connection_manager.v3 import (
    http_connection_manager_pb2 as hcm_pb2,
)

ROUTER_FILTER = "envoy.filters.http.router"


def insert_before_router(manager: hcm_pb2.HttpConnectionManager, filters: list[hcm_pb2.HttpFilter]) -> None:
    at = next((i for i, f in enumerate(manager.http_filters) if f.name == ROUTER_FILTER), len(manager.http_filters))
    for offset, f in enumerate(filters):
        manager.http_filters.insert(at + offset, f)
