"""Where a dataplane's Envoy writes the access log lines MeshAccessLog's Tcp backend sends: a named pipe
kuma-dp reads, then forwards each line to the backend's address (Kuma's convention and path, so kuma-cp, which
renders the Envoy config, and kuma-dp, which serves the pipe, agree without telling each other)."""

from __future__ import annotations


def access_log_pipe(dataplane: str, mesh: str) -> str:
    # Kuma's AccessLogSocketName: /tmp is private per unit under systemd's PrivateTmp, shared by kuma-dp and
    # the Envoy it runs.
    return f"/tmp/kuma-al-{dataplane}-{mesh}.sock"
