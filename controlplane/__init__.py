"""kuma-vm control plane (kuma-cp) and its CLI (kumactl)."""

__version__ = "0.1.0"
