"""Generators: Mesh topology + Dataplane -> the proxy's Envoy resources (shared, serialised once)."""
