"""The service manager's variables meant for kuma-dp itself, never for its children (agent/notify.py uses
them). A module of their own so that the entry point can keep them out of the bootstrap worker's environment
without loading logging and socket first: the worker, on the critical path, starts ~10 ms sooner (issue 14)."""

from __future__ import annotations

NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES")
