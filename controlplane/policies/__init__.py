"""One module per policy: its schema and validation (and, from the xDS issue on, its Envoy effect)."""
