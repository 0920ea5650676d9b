"""ControlPlaneInstance: one record per running kuma-cp instance, its heartbeat (a kuma-vm type; read-only to users).

Several instances share a store, and each writes the subscriptions of its own proxies into their insights. Whether
such a subscription is still live depends on whether its instance is: each instance rewrites its own record every
heartbeat (`dp_server.heartbeat`) and deletes it on a graceful stop (controlplane/xds/instances.py), so an instance
killed with -9 is told by a record gone stale (controlplane/xds/liveness.py). One write per instance per heartbeat,
instead of one per proxy. The name is the instance id (controlplane/runtime.py): new on every start. A zone's
records go to global over KDS, so global judges the zone's dataplanes by the same rule.
"""

from __future__ import annotations

from .base import ResourceType, Scope, Spec, register


class ControlPlaneInstanceSpec(Spec):
    last_heartbeat_time: str  # RFC 3339 (wire_time): the instance's last write of this record
    start_time: str  # when the instance started
    mode: str = ""  # zone | global
    zone: str | None = None  # the zone it serves (None: a standalone zone control plane, or global)
    version: str = ""  # kuma-cp's version


CONTROL_PLANE_INSTANCE = register(ResourceType(
    name="ControlPlaneInstance", plural="control-plane-instances", singular="control-plane-instance",
    scope=Scope.GLOBAL, spec_cls=ControlPlaneInstanceSpec, flat=True, readonly=True,
    description="A running control-plane instance and its last heartbeat, kept by the instance itself.",
))
