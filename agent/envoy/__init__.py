"""Running the real Envoy proxy: locating the binary (and, later, the supervisor kuma-dp uses)."""

from agent.envoy.binary import (
    EnvoyBinaryError,
    EnvoyNotExecutable,
    EnvoyNotFound,
    EnvoyVersionError,
    envoy_version,
    find_envoy,
    parse_envoy_version,
)

__all__ = [
    "EnvoyBinaryError",
    "EnvoyNotExecutable",
    "EnvoyNotFound",
    "EnvoyVersionError",
    "envoy_version",
    "find_envoy",
    "parse_envoy_version",
]
