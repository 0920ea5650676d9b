"""The lab: booted Debian hosts (systemd + sshd) in network namespaces on this machine, for e2e tests.

Use it as a tool (`python -m tests.lab up --name LAB --hosts 2`, as root) or through the pytest fixtures in
`tests.lab.fixtures`. See tests/lab/README.md.
"""

from .core import down, down_all, get, up
from .state import HostState, LabState
from .system import LabError

__all__ = ["HostState", "LabError", "LabState", "down", "down_all", "get", "up"]
