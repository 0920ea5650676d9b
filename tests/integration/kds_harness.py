"""Real global and zone kuma-cp processes joined over KDS, for the multi-zone tests: their settings, the zone
token each zone gets from global, and polling another process's API."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.integration.api_client import Reply, call
from tests.integration.cp_process import CpProcess

WAIT = 60.0  # a bound on a hung test (several processes on a shared 2-core machine), not a timing assertion


def wait_for(what: str, check: Callable[[], Any], *cps: CpProcess) -> Any:
    """Poll another process's API until `check()` is truthy; there is no event to wait on across processes."""
    deadline = time.monotonic() + WAIT
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n\n".join(cp.logs(40) for cp in cps)
            raise AssertionError(f"{what} did not happen within {WAIT:g}s:\n{logs}")
        time.sleep(0.2)


def api(cp: CpProcess, method: str, path: str, body: Any = None) -> Reply:
    return call(method, cp.http_url + path, body)


def global_env(kds_port: int, **extra: str) -> dict[str, str]:
    """A global control plane's settings: KDS on loopback at `kds_port`."""
    return {"KUMA_MODE": "global", "KUMA_MULTIZONE_GLOBAL_KDS_GRPC_PORT": str(kds_port),
            "KUMA_MULTIZONE_GLOBAL_KDS_INTERFACE": "127.0.0.1", **extra}


def zone_env(glob: CpProcess, kds_port: int, zone: str, directory: Path, **extra: str) -> dict[str, str]:
    """A zone control plane's settings to join `glob`, with a zone token issued by it (written in `directory`)."""
    token = api(glob, "POST", "/tokens/zone", {"zone": zone, "scope": ["cp"]})
    assert token.status == 200, token.raw
    token_file = directory / f"{zone}.token"
    token_file.write_bytes(token.raw)
    return {"KUMA_MULTIZONE_ZONE_NAME": zone, "KUMA_MULTIZONE_ZONE_GLOBAL_ADDRESS": f"grpcs://127.0.0.1:{kds_port}",
            "KUMA_MULTIZONE_ZONE_KDS_ROOT_CA_FILE": str(glob.ca_file),
            "KUMA_MULTIZONE_ZONE_KDS_AUTH_CP_TOKEN_PATH": str(token_file), **extra}
