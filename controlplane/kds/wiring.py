"""KDS in a control plane: the server on global, the leader-only client on a zone that has a global address."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from controlplane.ca import CaManager
from controlplane.runtime import Runtime
from controlplane.tls import CpTls
from controlplane.tokens.service import TokenService

from .client import KdsClient, KdsZoneComponent
from .global_ca import GlobalCaKeeper
from .server import KdsServer


def add_kds(runtime: Runtime, tls: CpTls, tokens: TokenService, ca: CaManager) -> Callable[[], dict[str, Any]]:
    """Adds the KDS components; returns what GET / says about multi-zone on this control plane."""
    cfg = runtime.config
    if cfg.mode == "global":
        # The meshes' CAs are made here (one trust root per mesh) and sent to the zones; one instance does it.
        runtime.add(GlobalCaKeeper(runtime.store, ca, runtime.supervisor), leader_only=True)
        kds = cfg.multizone.global_.kds
        runtime.add(KdsServer(runtime.store, tokens, interface=kds.interface, port=kds.grpc_port,
                              key_cert_pairs=tls.grpc_key_cert_pairs(), max_bytes=kds.max_msg_size,
                              instance=runtime.instance_id, insight_flush=kds.zone_insight_flush,
                              supervisor=runtime.supervisor))
        return dict
    zone = cfg.multizone.zone
    if not zone.global_address:  # a standalone zone
        return lambda: {"zone": zone.name or None, "global": {"state": "standalone"}}
    # config validation guarantees both files are set for a zone with a global address
    assert zone.kds.root_ca_file is not None and zone.kds.auth_cp_token_path is not None
    client = KdsClient(runtime.store, zone=zone.name, global_address=zone.global_address,
                       ca_file=zone.kds.root_ca_file, token_file=zone.kds.auth_cp_token_path,
                       max_bytes=zone.kds.max_msg_size)
    component = KdsZoneComponent(client, runtime.supervisor)
    runtime.add(component, leader_only=True)
    return lambda: {"zone": zone.name, "global": component.status()}
