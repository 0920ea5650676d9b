"""The bootstrap call, from kuma-dp itself: ask the control plane for the Envoy bootstrap
(agent/bootstrap_client.py, on a connection of its own, without grpcio), retrying with backoff while it is
unreachable, and turn every failure into a sentence that says what is wrong and how to fix it (a refusal:
token, CA, Dataplane; or the reason it cannot be reached, told apart by a plain TCP connect and a TLS
handshake of our own).

It runs alongside the bootstrap worker's validation of the definition, not after it (agent/run.py): the
bootstrap RPC has no side effects (controlplane/xds/bootstrap_service.py only authenticates, validates the
definition with the same model and renders; the Dataplane is registered later, on Envoy's xDS stream), and
the control plane refuses an invalid definition itself. An invalid verdict cancels these retries (exit 2).
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from agent.bootstrap import BootstrapFailed
from agent.bootstrap_client import FETCH_TIMEOUT, BootstrapError, CpAddress, fetch_bootstrap
from agent.config import EXIT_FAILURE, RETRY_BACKOFF_CAP
from agent.grpc_unary import tls_context

FATAL_TLS = ("tls-verify", "tls-hostname", "tls")


async def diagnose(cp: CpAddress, ca_pem: bytes, ca_source: str) -> tuple[str, str]:
    """Why the control plane is unavailable: ("unreachable" | "tls-verify" | "tls-hostname" | "tls" |
    "other", a sentence). A plain TCP connect tells "cannot connect" from "connected, handshake failed".

    Timed with asyncio.timeout, not wait_for: Python 3.11's wait_for returns the inner result when a
    cancellation arrives as the inner call ends (a refused connect ends at once), swallowing the cancellation;
    kuma-dp cancels these retries when the worker's verdict or a stop comes, and then waits for them to end."""
    try:
        async with asyncio.timeout(3.0):
            _, writer = await asyncio.open_connection(cp.host, cp.port)
    except (TimeoutError, OSError) as e:
        reason = "timed out" if isinstance(e, TimeoutError) else _reason(e)
        return "unreachable", f"cannot connect to the control plane at {cp.target}: {reason}"
    writer.close()
    ctx = tls_context(ca_pem)  # as the call makes it
    try:
        async with asyncio.timeout(5.0):
            _, writer = await asyncio.open_connection(cp.host, cp.port, ssl=ctx, server_hostname=cp.host)
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
    code = e.code
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


@dataclass
class Retry:
    backoff: float  # KUMA_CONTROL_PLANE_RETRY_BACKOFF: the first wait, doubled up to RETRY_BACKOFF_CAP
    max_duration: float  # KUMA_CONTROL_PLANE_RETRY_MAX_DURATION: give up (exit 1) after that long


async def fetch_with_retries(cp: CpAddress, ca_pem: bytes, ca_source: str, request: dict[str, Any], retry: Retry,
                             on_status: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    """The control plane's answer; `on_status({"status", "retryIn", "attempt", "kind"})` before each wait;
    BootstrapFailed (exit 1) for a refusal, a TLS problem, or an unreachable control plane past the deadline."""
    delay = retry.backoff
    deadline = time.monotonic() + retry.max_duration
    started = time.monotonic()
    attempt = 0
    while True:
        attempt += 1
        try:
            return await fetch_bootstrap(cp, ca_pem, request, timeout=FETCH_TIMEOUT)
        except BootstrapError as e:
            if not e.retryable:
                raise BootstrapFailed(refusal(e, request), EXIT_FAILURE, e.code) from None
            kind, text = await diagnose(cp, ca_pem, ca_source)
            if kind in FATAL_TLS:
                raise BootstrapFailed(text, EXIT_FAILURE, kind) from None
            if kind == "other":
                text = f"the control plane at {cp.target} is unavailable: {e.message}"
            if time.monotonic() + delay > deadline:
                raise BootstrapFailed(f"{text}; gave up after {attempt} attempts in "
                                      f"{time.monotonic() - started:.0f}s (KUMA_CONTROL_PLANE_RETRY_MAX_DURATION)",
                                      EXIT_FAILURE, kind) from None
            on_status({"status": f"waiting for the control plane: {text} (attempt {attempt}, next in {delay:.1f}s)",
                       "retryIn": delay, "attempt": attempt, "kind": kind})
            await asyncio.sleep(delay)
            delay = min(delay * 2, max(RETRY_BACKOFF_CAP, retry.backoff))
