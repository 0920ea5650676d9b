"""kuma-vm data plane agent (kuma-dp)."""
