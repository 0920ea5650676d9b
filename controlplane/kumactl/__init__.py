"""kumactl: the CLI of the control plane's HTTP API."""
