"""The host's `.mesh` DNS stub in kuma-dp, and its integration with the host's resolver.

| module | what |
|---|---|
| settings.py | defaults (listen 127.0.1.53:53: why, there) and value parsers; stdlib only |
| message.py | the facts of a DNS message read by hand: the query, its EDNS, a reply's TTLs |
| zone.py | the `.mesh` zone of one mesh, replies precomputed from the control plane's VIP map |
| cache.py | forwarded answers, kept per TTL (negative per the SOA), bounded |
| forward.py | forwarding to upstreams: random ids, matching replies only, failover, TCP fallback |
| server.py | UDP (a blocking thread: the hot path) and TCP (asyncio) listeners |
| watch.py | following the VIP map over the dp-server's watch stream, with backoff |
| worker.py | the DNS worker process that serves the stub (kuma-dp starts it) |
| resolvconf.py | resolv.conf: its nameservers, ours, atomic swaps and exact snapshots |
| host.py | pointing the host's resolver at the stub (systemd-resolved or resolv.conf), restore, the lock |
| component.py | kuma-dp's side: one owner per host, sockets, worker, host config, restore on stop and after a crash |
| cli.py | `kuma-dp dns configure / restore / status / serve` (configure and restore: root's side of host DNS) |
"""
