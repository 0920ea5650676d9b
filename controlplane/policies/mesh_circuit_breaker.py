"""MeshCircuitBreaker: connection limits and outlier detection (passive health checking).

`default` has `connectionLimits` (`maxConnections`, `maxPendingRequests`, `maxRequests`, `maxRetries`,
`maxConnectionPools`; each >= 1) and/or `outlierDetection`:

- `disabled`, `interval` and `baseEjectionTime` (> 0), `maxEjectionPercent` (0-100),
  `splitExternalAndLocalErrors`, `healthyPanicThreshold` (a percentage, int or decimal string);
- `detectors` (required unless disabled, at least one): `totalFailures.consecutive`,
  `gatewayFailures.consecutive`, `localOriginFailures.consecutive` (>= 1), `successRate.{minimumHosts,
  requestVolume (>= 1), standardDeviationFactor (> 0, int or decimal string)}`,
  `failurePercentage.{minimumHosts, requestVolume (>= 1), threshold (0-100)}`.

Positions (Kuma 2.9): top-level Mesh, MeshSubset, MeshService, MeshServiceSubset, Dataplane or MeshGateway
(with listener tags); `from[]` Mesh; `to[]` Mesh or MeshService (only Mesh under a MeshGateway).

Envoy effect: cluster circuit_breakers thresholds and outlier_detection (inbound: on the local cluster).
Added by the xDS layer, not here.
"""

from __future__ import annotations

from decimal import Decimal

from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.errors import Violations

from ._common import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    camel,
    check_decimal,
    check_duration,
    check_int,
    check_percentage,
    check_target_ref,
    check_top_level,
    effective_target_ref,
    require_some,
)

POLICY = "MeshCircuitBreaker"
TOP_KINDS = (*TOP_LEVEL_KINDS, MESH_GATEWAY)
# Envoy stores the success-rate factor multiplied by 1000 in a uint32.
MAX_STDEV_FACTOR = Decimal("4294967.295")
LIMITS = ("max_connections", "max_connection_pools", "max_pending_requests", "max_retries", "max_requests")


class ConnectionLimits(Spec):
    max_connections: int | None = None
    max_connection_pools: int | None = None
    max_pending_requests: int | None = None
    max_retries: int | None = None
    max_requests: int | None = None

    def check(self, v: Violations, path: str) -> None:
        if require_some(v, path, self, LIMITS):
            for f in LIMITS:
                check_int(v, f"{path}.{camel(f)}", getattr(self, f), minimum=1)


class Consecutive(Spec):
    consecutive: int | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.consecutive", self.consecutive, minimum=1)


class SuccessRate(Spec):
    minimum_hosts: int | None = None
    request_volume: int | None = None
    standard_deviation_factor: int | str | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.minimumHosts", self.minimum_hosts, minimum=1)
        check_int(v, f"{path}.requestVolume", self.request_volume, minimum=1)
        d = check_decimal(v, f"{path}.standardDeviationFactor", self.standard_deviation_factor, minimum=0,
                          exclusive_minimum=True, maximum=MAX_STDEV_FACTOR)
        if d is not None and (d * 1000) != (d * 1000).to_integral_value():
            v.add(f"{path}.standardDeviationFactor", "at most 3 decimal places (Envoy keeps the factor in "
                                                     "thousandths)")


class FailurePercentage(Spec):
    minimum_hosts: int | None = None
    request_volume: int | None = None
    threshold: int | None = None

    def check(self, v: Violations, path: str) -> None:
        check_int(v, f"{path}.minimumHosts", self.minimum_hosts, minimum=1)
        check_int(v, f"{path}.requestVolume", self.request_volume, minimum=1)
        check_int(v, f"{path}.threshold", self.threshold, maximum=100)


class Detectors(Spec):
    total_failures: Consecutive | None = None
    gateway_failures: Consecutive | None = None
    local_origin_failures: Consecutive | None = None
    success_rate: SuccessRate | None = None
    failure_percentage: FailurePercentage | None = None

    def check(self, v: Violations, path: str) -> None:
        if require_some(v, path, self, ("total_failures", "gateway_failures", "local_origin_failures",
                                        "success_rate", "failure_percentage")):
            for f, alias in (("total_failures", "totalFailures"), ("gateway_failures", "gatewayFailures"),
                             ("local_origin_failures", "localOriginFailures"), ("success_rate", "successRate"),
                             ("failure_percentage", "failurePercentage")):
                d = getattr(self, f)
                if d is not None:
                    d.check(v, f"{path}.{alias}")


class OutlierDetection(Spec):
    disabled: bool | None = None
    interval: str | None = None
    base_ejection_time: str | None = None
    max_ejection_percent: int | None = None
    split_external_and_local_errors: bool | None = None
    detectors: Detectors | None = None
    healthy_panic_threshold: int | str | None = None

    def check(self, v: Violations, path: str) -> None:
        check_duration(v, f"{path}.interval", self.interval, allow_zero=False)
        check_duration(v, f"{path}.baseEjectionTime", self.base_ejection_time, allow_zero=False)
        check_int(v, f"{path}.maxEjectionPercent", self.max_ejection_percent, maximum=100)
        check_percentage(v, f"{path}.healthyPanicThreshold", self.healthy_panic_threshold)
        if self.detectors is not None:
            self.detectors.check(v, f"{path}.detectors")
        elif not self.disabled:
            v.add(f"{path}.detectors", "must be set: configure at least one detector (or set disabled: true)")


class Conf(Spec):
    connection_limits: ConnectionLimits | None = None
    outlier_detection: OutlierDetection | None = None

    def check(self, v: Violations, path: str) -> None:
        if not require_some(v, path, self, ("connection_limits", "outlier_detection")):
            return
        if self.connection_limits is not None:
            self.connection_limits.check(v, f"{path}.connectionLimits")
        if self.outlier_detection is not None:
            self.outlier_detection.check(v, f"{path}.outlierDetection")


class MeshCircuitBreakerSpec(Spec):
    target_ref: TargetRef | None = None
    from_: list[Item[Conf]] | None = Field(default=None, alias="from")
    to: list[Item[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        top = effective_target_ref(self.target_ref).kind
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        inbound=bool(self.from_), listener_tags=True)
        if not self.from_ and not self.to:
            v.add(path, "at least one of 'from' or 'to' must have an item")
        for i, item in enumerate(self.from_ or ()):
            p = f"{path}.from[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=(MESH,),
                             where=f"spec.from[].targetRef of {POLICY}", inbound=True)
            item.default.check(v, f"{p}.default")
        to_kinds = (MESH,) if top == MESH_GATEWAY else (MESH, MESH_SERVICE)
        for i, item in enumerate(self.to or ()):
            p = f"{path}.to[{i}]"
            check_target_ref(v, f"{p}.targetRef", item.target_ref, allowed=to_kinds,
                             where=f"spec.to[].targetRef of {POLICY}" +
                                   (" under a top-level MeshGateway" if top == MESH_GATEWAY else ""))
            item.default.check(v, f"{p}.default")


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshcircuitbreakers", singular="meshcircuitbreaker", scope=Scope.MESH,
    spec_cls=MeshCircuitBreakerSpec, flat=False, is_policy=True,
    description="Connection limits and outlier detection for inbound and outbound traffic.",
))

# --- Envoy effect -----------------------------------------------------------------------------------
# The xDS issue adds here how merged MeshCircuitBreaker confs become circuit_breakers and outlier_detection.
