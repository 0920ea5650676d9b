"""Envoy xDS: snapshots of shared, serialise-once resources; the ADS server; generators and policy plugins."""
