"""kuma-dp's exit statuses (systemd's Restart= policy and operators read them), in a module of their own so
the bootstrap worker can use them without loading agent.config's settings table."""

EXIT_OK = 0
EXIT_FAILURE = 1  # runtime failure: the control plane refused, Envoy kept crashing, ... (systemd restarts)
EXIT_USAGE = 2  # bad local input: flags, dataplane file, token, CA, Envoy binary (restarting cannot help)
