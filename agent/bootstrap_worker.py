"""The bootstrap worker: a short-lived child of kuma-dp that validates the dataplane definition with the
control plane's model and then asks the control plane for the Envoy bootstrap, retrying while it is
unreachable.

Why a separate process: the validation (pydantic) and the gRPC client (grpcio) are needed once, at start,
and together cost ~25 MB of resident memory that a long-running kuma-dp would otherwise keep forever
(bench/bench_agent.py measures kuma-dp's RSS). grpcio's threads would also make every later fork of Envoy riskier.
The worker starts while kuma-dp does its other start-up work, so its imports overlap with that.

Protocol: kuma-dp writes one JSON object on stdin (`cp`, `caPem`, `caSource`, `request`, `definition`,
`proxyType`, `retryBackoff`, `retryMaxDuration`), then reads JSON lines from stdout:
    {"status": "...", "retryIn": seconds}     while waiting for the control plane
    {"bootstrap": {...answer...}}             success (exit 0)
    {"error": "...", "exit": N, "kind": K}    failure; kuma-dp exits with N (2: bad input, 1: refused)
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import ssl
import sys
import time
from typing import Any

import controlplane.resources  # noqa: F401  (imported now, while kuma-dp prepares the request)
from agent.bootstrap_client import BootstrapError, CpAddress, fetch_bootstrap
from agent.config import EXIT_FAILURE, EXIT_USAGE, RETRY_BACKOFF_CAP
from agent.dataplane import Definition, DefinitionError, validate

log = logging.getLogger("kuma-dp.bootstrap")

FETCH_TIMEOUT = 5.0
FATAL_TLS = ("tls-verify", "tls-hostname", "tls")


def emit(**message: Any) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


async def diagnose(cp: CpAddress, ca_pem: bytes, ca_source: str) -> tuple[str, str]:
    """Why the control plane is unavailable: ("unreachable" | "tls-verify" | "tls-hostname" | "tls" |
    "other", a sentence). A plain TCP connect tells "cannot connect" from "connected, handshake failed"."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(cp.host, cp.port), 3.0)
    except (TimeoutError, OSError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else _reason(e)
        return "unreachable", f"cannot connect to the control plane at {cp.target}: {reason}"
    writer.close()
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii", "replace"))
    ctx.set_alpn_protocols(["h2"])
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(cp.host, cp.port, ssl=ctx, server_hostname=cp.host), 5.0)
        writer.close()
    except ssl.SSLCertVerificationError as e:
        if e.verify_code == 62 or "hostname" in str(e.verify_message).lower() or "IP address" in str(e):
            return "tls-hostname", (
                f"the control plane's certificate is not valid for {cp.host!r} ({e.verify_message}): connect "
                f"with a name or address it carries (localhost, 127.0.0.1, its hostname), or add {cp.host} to "
                "the control plane's KUMA_GENERAL_HOSTNAMES")
        return "tls-verify", (
            f"the control plane at {cp.target} presented a certificate that the CA in {ca_source} does not "
            f"trust ({e.verify_message}): pass the ca.crt of this control plane (<workDir>/tls/ca.crt)")
    except (TimeoutError, ssl.SSLEOFError, ssl.SSLZeroReturnError, ConnectionError) as e:
        return "unreachable", f"the control plane at {cp.target} closed the TLS handshake ({type(e).__name__})"
    except ssl.SSLError as e:
        return "tls", (f"TLS handshake with {cp.target} failed ({e.reason or e}): is --cp-address the "
                       "dp-server (https://HOST:5678), and does it speak TLS?")
    except OSError as e:
        return "unreachable", f"cannot connect to the control plane at {cp.target}: {_reason(e)}"
    return "other", ""


def _reason(e: OSError) -> str:
    return (os.strerror(e.errno) if e.errno else str(e)).lower()


def refusal(e: BootstrapError, request: dict[str, Any]) -> str:
    mesh, name = request.get("mesh"), request.get("name")
    code = e.code.name if hasattr(e.code, "name") else str(e.code)
    if request.get("proxyType") == "ingress":  # a zone token, and the control plane's message says which
        if code in ("UNAUTHENTICATED", "PERMISSION_DENIED"):
            return (f"the control plane refused the zone ingress token ({e.message}); pass the token with "
                    "--dataplane-token-file TOKEN_FILE")
        return f"the control plane cannot run this zone ingress ({code}): {e.message}"
    if code == "UNAUTHENTICATED":
        return (f"the control plane rejected the dataplane token ({e.message}): generate one with "
                f"kumactl generate dataplane-token --mesh {mesh} --name {name} > TOKEN_FILE and pass "
                "--dataplane-token-file TOKEN_FILE")
    if code == "PERMISSION_DENIED":
        return (f"the dataplane token may not run this dataplane ({e.message}): generate a token for "
                f"--mesh {mesh} --name {name} (and its tags)")
    if code == "INVALID_ARGUMENT":
        return f"the control plane rejected the Dataplane: {e.message}"
    if code == "NOT_FOUND":
        return f"the control plane cannot bootstrap this dataplane: {e.message}"
    return f"the control plane answered {code}: {e.message}"


async def run(payload: dict[str, Any]) -> int:
    definition = Definition(**payload["definition"])
    try:
        validate(definition, payload["proxyType"])
    except DefinitionError as e:
        emit(error=str(e), exit=EXIT_USAGE, kind="definition")
        return EXIT_USAGE
    cp = CpAddress.parse(payload["cp"])
    ca_pem = payload["caPem"].encode()
    request = payload["request"]
    delay = float(payload["retryBackoff"])
    deadline = time.monotonic() + float(payload["retryMaxDuration"])
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            answer = await fetch_bootstrap(cp, ca_pem, request, timeout=FETCH_TIMEOUT)
        except BootstrapError as e:
            if not e.retryable:
                emit(error=refusal(e, request), exit=EXIT_FAILURE, kind=e.code.name)
                return EXIT_FAILURE
            kind, text = await diagnose(cp, ca_pem, payload["caSource"])
            if kind in FATAL_TLS:
                emit(error=text, exit=EXIT_FAILURE, kind=kind)
                return EXIT_FAILURE
            if kind == "other":
                text = f"the control plane at {cp.target} is unavailable: {e.message}"
            if time.monotonic() + delay > deadline:
                emit(error=f"{text}; gave up after {attempt} attempts in {time.monotonic() - started:.0f}s "
                           "(KUMA_CONTROL_PLANE_RETRY_MAX_DURATION)", exit=EXIT_FAILURE, kind=kind)
                return EXIT_FAILURE
            emit(status=f"waiting for the control plane: {text} (attempt {attempt}, next in {delay:.1f}s)",
                 retryIn=delay, attempt=attempt, kind=kind)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(RETRY_BACKOFF_CAP, float(payload["retryBackoff"])))
            continue
        emit(bootstrap=answer, attempts=attempt)
        return 0


def main() -> int:
    from kuma_shared import logs

    line = sys.stdin.readline()
    if not line:
        return EXIT_FAILURE  # kuma-dp went away before sending the request
    payload = json.loads(line)
    logs.setup(payload.get("logLevel", "info"), payload.get("logFormat", "text"))
    try:
        return asyncio.run(run(payload))
    except KeyboardInterrupt:
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
