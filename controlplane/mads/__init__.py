"""Monitoring assignments: where Prometheus scrapes each dataplane (MeshMetric's Prometheus backends).

- `assignments.py`: the assignments of every dataplane, computed from the store and kept current by a
  supervised watch of store changes (one computation shared by every client);
- `server.py`: Kuma's MADS over HTTP (`POST /v3/discovery:monitoringassignments`, port 5676), the protocol
  Prometheus' `kuma_sd_configs` speaks;
- `dp_config.py`: the dp-server's `/kuma.vm.dp.v1.Metrics/Get`, which tells a kuma-dp its merged MeshMetric
  (what to publish, on which port and path).
"""
