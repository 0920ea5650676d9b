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
(with listener tags); `from[]` Mesh; `to[]` Mesh or MeshService (Kuma 2.14: under any top level).

Envoy effect (end of this module): on the clusters of a destination (`to[]`) or the local cluster of an
inbound (`from[]`): `circuit_breakers.thresholds` (default priority) with the limits given, and
`outlier_detection` unless disabled: interval, base ejection time, max ejection percent, split of external
and local-origin errors, and each detector with enforcing 100% when configured and 0% when not (so only
the configured detectors eject: totalFailures -> consecutive_5xx, gatewayFailures ->
consecutive_gateway_failure, localOriginFailures -> consecutive_local_origin_failure, successRate ->
success_rate_* (factor x1000), failurePercentage -> failure_percentage_*); healthyPanicThreshold sets the
cluster's common_lb_config.healthy_panic_threshold.
"""

from __future__ import annotations

import json
from collections.abc import Hashable
from decimal import Decimal
from typing import Any

from envoy.config.cluster.v3 import circuit_breaker_pb2, cluster_pb2, outlier_detection_pb2
from envoy.config.core.v3 import base_pb2
from pydantic import Field

from controlplane.resources.base import ResourceType, Scope, Spec, register
from controlplane.resources.dataplane import Inbound
from controlplane.resources.errors import Violations
from controlplane.xds.generate.context import ProxyContext
from controlplane.xds.generate.envoy import duration
from controlplane.xds.generate.plugins import PolicyPlugin, register_plugin
from controlplane.xds.generate.targeting import (
    MESH,
    MESH_GATEWAY,
    MESH_SERVICE,
    SELECTS_NOTHING_YET,
    TOP_LEVEL_KINDS,
    Item,
    TargetRef,
    camel,
    check_top_level,
    require_some,
)

from ._checks import (
    InboundRule,
    check_decimal,
    check_duration,
    check_from,
    check_int,
    check_percentage,
    check_rules,
    check_to,
    parse_decimal,
    parse_go_duration,
    rules_as_from,
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
        # Kuma accepts `connectionLimits: {}` (nothing changes: Envoy's defaults, or what another policy set).
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
        else:  # Kuma requires detectors even with disabled: true
            v.add(f"{path}.detectors", "must be set: configure at least one detector")


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
    rules: list[InboundRule[Conf]] | None = None

    def check(self, v: Violations, path: str) -> None:
        check_top_level(v, f"{path}.targetRef", self.target_ref, allowed=TOP_KINDS, policy=POLICY,
                        inbound=bool(self.from_ or self.rules), listener_tags=True)
        if not self.from_ and not self.to and not self.rules:
            v.add(path, "at least one of 'from', 'to' or 'rules' must have an item")
        check_from(v, path, self.from_, policy=POLICY, allowed=(MESH,))
        check_rules(v, path, self.rules, other=[*(self.from_ or ()), *(self.to or ())])
        # Kuma 2.14: the same kinds under every top level (a MeshGateway one selects nothing in kuma-vm yet)
        check_to(v, path, self.to, policy=POLICY, allowed=(MESH, MESH_SERVICE, *SELECTS_NOTHING_YET))


    def inbound_items(self) -> list[Item[Conf]]:
        return [*(self.from_ or ()), *rules_as_from(self.rules)]


RESOURCE_TYPE = register(ResourceType(
    name=POLICY, plural="meshcircuitbreakers", singular="meshcircuitbreaker", scope=Scope.MESH,
    spec_cls=MeshCircuitBreakerSpec, flat=False, is_policy=True,
    description="Connection limits and outlier detection for inbound and outbound traffic.",
))

# --- Envoy effect -----------------------------------------------------------------------------------

THRESHOLD_FIELDS = {"maxConnections": "max_connections", "maxPendingRequests": "max_pending_requests",
                    "maxRequests": "max_requests", "maxRetries": "max_retries",
                    "maxConnectionPools": "max_connection_pools"}


def panic_threshold(value: int | str) -> float:
    return float(parse_decimal(value) or 0)


def apply_conf(cluster: cluster_pb2.Cluster, conf: dict[str, Any]) -> None:
    limits = conf.get("connectionLimits")
    if limits:
        thresholds = circuit_breaker_pb2.CircuitBreakers.Thresholds(priority=base_pb2.DEFAULT)
        for wire, field in THRESHOLD_FIELDS.items():
            if limits.get(wire) is not None:
                getattr(thresholds, field).value = limits[wire]
        del cluster.circuit_breakers.thresholds[:]
        cluster.circuit_breakers.thresholds.append(thresholds)
    od = conf.get("outlierDetection")
    if not od or od.get("disabled"):
        return
    o = outlier_detection_pb2.OutlierDetection()
    if od.get("interval"):
        o.interval.CopyFrom(duration(parse_go_duration(od["interval"])))
    if od.get("baseEjectionTime"):
        o.base_ejection_time.CopyFrom(duration(parse_go_duration(od["baseEjectionTime"])))
    if od.get("maxEjectionPercent") is not None:
        o.max_ejection_percent.value = od["maxEjectionPercent"]
    if od.get("splitExternalAndLocalErrors") is not None:
        o.split_external_local_origin_errors = od["splitExternalAndLocalErrors"]
    detectors = od.get("detectors") or {}
    total = detectors.get("totalFailures")
    o.enforcing_consecutive_5xx.value = 100 if total else 0
    if total and total.get("consecutive") is not None:
        o.consecutive_5xx.value = total["consecutive"]
    gateway = detectors.get("gatewayFailures")
    o.enforcing_consecutive_gateway_failure.value = 100 if gateway else 0
    if gateway and gateway.get("consecutive") is not None:
        o.consecutive_gateway_failure.value = gateway["consecutive"]
    local = detectors.get("localOriginFailures")
    o.enforcing_consecutive_local_origin_failure.value = 100 if local else 0
    if local and local.get("consecutive") is not None:
        o.consecutive_local_origin_failure.value = local["consecutive"]
    rate = detectors.get("successRate")
    o.enforcing_success_rate.value = 100 if rate else 0
    if rate:
        if rate.get("minimumHosts") is not None:
            o.success_rate_minimum_hosts.value = rate["minimumHosts"]
        if rate.get("requestVolume") is not None:
            o.success_rate_request_volume.value = rate["requestVolume"]
        if rate.get("standardDeviationFactor") is not None:
            factor = parse_decimal(rate["standardDeviationFactor"]) or Decimal(0)
            o.success_rate_stdev_factor.value = int(factor * 1000)
    failures = detectors.get("failurePercentage")
    o.enforcing_failure_percentage.value = 100 if failures else 0
    if failures:
        if failures.get("minimumHosts") is not None:
            o.failure_percentage_minimum_hosts.value = failures["minimumHosts"]
        if failures.get("requestVolume") is not None:
            o.failure_percentage_request_volume.value = failures["requestVolume"]
        if failures.get("threshold") is not None:
            o.failure_percentage_threshold.value = failures["threshold"]
    cluster.outlier_detection.CopyFrom(o)
    if od.get("healthyPanicThreshold") is not None:
        cluster.common_lb_config.healthy_panic_threshold.value = panic_threshold(od["healthyPanicThreshold"])


class CircuitBreakerPlugin(PolicyPlugin):
    policy_type = POLICY
    order = 70

    def cluster_key(self, ctx: ProxyContext, service: str) -> Hashable:
        return self.to_conf_key(ctx, service)

    def apply_outbound_cluster(self, ctx: ProxyContext, service: str, cluster: cluster_pb2.Cluster,
                               key: Hashable) -> None:
        assert isinstance(key, str)
        apply_conf(cluster, json.loads(key))

    def local_cluster_key(self, ctx: ProxyContext, inbound: Inbound) -> Hashable:
        return self.from_conf_key(ctx, inbound)

    def apply_local_cluster(self, ctx: ProxyContext, inbound: Inbound, cluster: cluster_pb2.Cluster,
                            key: Hashable) -> None:
        assert isinstance(key, str)
        apply_conf(cluster, json.loads(key))


PLUGIN = register_plugin(CircuitBreakerPlugin())
