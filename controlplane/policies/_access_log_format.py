"""Access log format strings: Envoy's command operators and Kuma's placeholders, checked at the API.

A format is text with `%COMMAND%`, `%COMMAND(ARGS)%` and `%COMMAND(ARGS):LENGTH%` operators (Kuma's parser,
pkg/envoy/accesslog/v3: a `%` that does not start one is refused, as Envoy refuses it). Kuma's parser accepts
any upper-case command and leaves unknown ones to Envoy, which NACKs the listener; here an unknown command is
refused at the API, naming the field and the operator. The commands are those the Envoy kuma-vm ships
accepts (tests/unit/test_access_log_format.py loads every one into the real Envoy): Kuma's documented list
(Envoy 1.22's) and what Envoy added since, plus Kuma's `%KUMA_*%` placeholders, which kuma-vm fills in.
"""

from __future__ import annotations

import re

from controlplane.resources.errors import Violations

KUMA_PLACEHOLDERS = ("KUMA_MESH", "KUMA_SOURCE_SERVICE", "KUMA_DESTINATION_SERVICE", "KUMA_SOURCE_ADDRESS",
                     "KUMA_SOURCE_ADDRESS_WITHOUT_PORT", "KUMA_TRAFFIC_DIRECTION")

def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Operators without arguments.
SIMPLE = _names("""
ACCESS_LOG_TYPE BYTES_RECEIVED BYTES_RETRANSMITTED BYTES_SENT CONNECTION_ID CONNECTION_TERMINATION_DETAILS
CUSTOM_FLAGS DOWNSTREAM_DETECTED_CLOSE_TYPE DOWNSTREAM_DIRECT_LOCAL_ADDRESS
DOWNSTREAM_DIRECT_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_LOCAL_PORT DOWNSTREAM_DIRECT_REMOTE_ADDRESS
DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_DIRECT_REMOTE_PORT DOWNSTREAM_HANDSHAKE_DURATION
DOWNSTREAM_HEADER_BYTES_RECEIVED DOWNSTREAM_HEADER_BYTES_SENT DOWNSTREAM_LOCAL_ADDRESS
DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT DOWNSTREAM_LOCAL_CLOSE_REASON DOWNSTREAM_LOCAL_DNS_SAN
DOWNSTREAM_LOCAL_EMAIL_SAN DOWNSTREAM_LOCAL_IP_SAN DOWNSTREAM_LOCAL_OTHERNAME_SAN DOWNSTREAM_LOCAL_PORT
DOWNSTREAM_LOCAL_SUBJECT DOWNSTREAM_LOCAL_URI_SAN DOWNSTREAM_PEER_CERT DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_1
DOWNSTREAM_PEER_CHAIN_FINGERPRINTS_256 DOWNSTREAM_PEER_CHAIN_SERIALS DOWNSTREAM_PEER_DNS_SAN
DOWNSTREAM_PEER_EMAIL_SAN DOWNSTREAM_PEER_FINGERPRINT_1 DOWNSTREAM_PEER_FINGERPRINT_256 DOWNSTREAM_PEER_IP_SAN
DOWNSTREAM_PEER_ISSUER DOWNSTREAM_PEER_OTHERNAME_SAN DOWNSTREAM_PEER_SERIAL DOWNSTREAM_PEER_SUBJECT
DOWNSTREAM_PEER_URI_SAN DOWNSTREAM_REMOTE_ADDRESS DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT DOWNSTREAM_REMOTE_PORT
DOWNSTREAM_TLS_CIPHER DOWNSTREAM_TLS_SESSION_ID DOWNSTREAM_TLS_VERSION DOWNSTREAM_TRANSPORT_FAILURE_REASON
DOWNSTREAM_WIRE_BYTES_RECEIVED DOWNSTREAM_WIRE_BYTES_SENT DURATION FILTER_CHAIN_NAME GRPC_STATUS
GRPC_STATUS_NUMBER HOSTNAME LOCAL_REPLY_BODY PACKETS_RETRANSMITTED PROTOCOL REQUESTED_SERVER_NAME
REQUEST_DURATION REQUEST_HEADERS_BYTES REQUEST_TX_DURATION RESPONSE_CODE RESPONSE_CODE_DETAILS
RESPONSE_DURATION RESPONSE_FLAGS RESPONSE_FLAGS_LONG RESPONSE_HEADERS_BYTES RESPONSE_TRAILERS_BYTES
RESPONSE_TX_DURATION ROUNDTRIP_DURATION ROUTE_NAME STREAM_ID TLS_JA3_FINGERPRINT TLS_JA4_FINGERPRINT TRACE_ID
UNIQUE_ID UPSTREAM_CLUSTER UPSTREAM_CLUSTER_RAW UPSTREAM_CONNECTION_ID UPSTREAM_CONNECTION_POOL_READY_DURATION
UPSTREAM_DETECTED_CLOSE_TYPE UPSTREAM_HEADER_BYTES_RECEIVED UPSTREAM_HEADER_BYTES_SENT UPSTREAM_HOST
UPSTREAM_HOST_NAME UPSTREAM_HOST_NAME_WITHOUT_PORT UPSTREAM_LOCAL_ADDRESS UPSTREAM_LOCAL_ADDRESS_WITHOUT_PORT
UPSTREAM_LOCAL_CLOSE_REASON UPSTREAM_LOCAL_DNS_SAN UPSTREAM_LOCAL_IP_SAN UPSTREAM_LOCAL_PORT
UPSTREAM_LOCAL_URI_SAN UPSTREAM_PEER_CERT UPSTREAM_PEER_DNS_SAN UPSTREAM_PEER_IP_SAN UPSTREAM_PEER_ISSUER
UPSTREAM_PEER_SUBJECT UPSTREAM_PEER_URI_SAN UPSTREAM_PROTOCOL UPSTREAM_REMOTE_ADDRESS
UPSTREAM_REMOTE_ADDRESS_WITHOUT_PORT UPSTREAM_REMOTE_PORT UPSTREAM_REQUEST_ATTEMPT_COUNT UPSTREAM_TLS_CIPHER
UPSTREAM_TLS_SESSION_ID UPSTREAM_TLS_VERSION UPSTREAM_TRANSPORT_FAILURE_REASON UPSTREAM_WIRE_BYTES_RECEIVED
UPSTREAM_WIRE_BYTES_SENT VIRTUAL_CLUSTER_NAME
""")

# Operators that may take an argument (a time format, a path option), never a length.
OPTIONAL_ARGS = _names("""
START_TIME START_TIME_LOCAL EMIT_TIME EMIT_TIME_LOCAL PATH UPSTREAM_PEER_CERT_V_START UPSTREAM_PEER_CERT_V_END
DOWNSTREAM_PEER_CERT_V_START DOWNSTREAM_PEER_CERT_V_END
""")

# Operators that need arguments, and may end in a length (`:Z`); the example is shown when they are missing.
WITH_ARGS = {
    "REQ": "%REQ(X-REQUEST-ID)%", "RESP": "%RESP(CONTENT-TYPE)%", "TRAILER": "%TRAILER(GRPC-STATUS)%",
    "REQUEST_HEADER": "%REQUEST_HEADER(X-REQUEST-ID)%", "RESPONSE_HEADER": "%RESPONSE_HEADER(CONTENT-TYPE)%",
    "RESPONSE_TRAILER": "%RESPONSE_TRAILER(GRPC-STATUS)%",
    "DYNAMIC_METADATA": "%DYNAMIC_METADATA(NAMESPACE:KEY)%", "CLUSTER_METADATA": "%CLUSTER_METADATA(NAMESPACE:KEY)%",
    "UPSTREAM_METADATA": "%UPSTREAM_METADATA(NAMESPACE:KEY)%", "METADATA": "%METADATA(ROUTE:NAMESPACE:KEY)%",
    "FILTER_STATE": "%FILTER_STATE(KEY)%", "UPSTREAM_FILTER_STATE": "%UPSTREAM_FILTER_STATE(KEY)%",
    "ENVIRONMENT": "%ENVIRONMENT(NAME)%", "QUERY_PARAM": "%QUERY_PARAM(NAME)%", "CEL": "%CEL(request.path)%",
    "COMMON_DURATION": "%COMMON_DURATION(DS_RX_BEG:DS_RX_END:ms)%",
}
NO_LENGTH = frozenset({"COMMON_DURATION"})

_OPERATOR = re.compile(r"%([A-Z_0-9]+)(?:\(([^)]*)\))?(?::([0-9]+))?%")
_KUMA_PLACEHOLDER = re.compile(r"%(KUMA_[A-Z0-9_]*)%")


def known(command: str) -> bool:
    return command in SIMPLE or command in OPTIONAL_ARGS or command in WITH_ARGS or command in KUMA_PLACEHOLDERS


def format_problems(text: str) -> list[str]:
    """What is wrong with a format string's operators (nothing: [])."""
    problems: list[str] = []
    pos = 0
    while (start := text.find("%", pos)) >= 0:
        m = _OPERATOR.match(text, start)
        if m is None:
            problems.append(f"the '%' at position {start + 1} does not start a command operator (%COMMAND%, "
                            f"%COMMAND(ARGS)% or %COMMAND(ARGS):LENGTH%): {text[start:start + 24]!r}; Envoy has no "
                            "escape for a literal '%'")
            break
        token, command, args, length = m.group(0), m.group(1), m.group(2), m.group(3)
        pos = m.end()
        if command.startswith("KUMA_"):
            if command not in KUMA_PLACEHOLDERS:
                problems.append(f"{token} is not a Kuma placeholder kuma-vm can fill in: use one of "
                                f"{', '.join(f'%{p}%' for p in KUMA_PLACEHOLDERS)}, or an Envoy command operator")
            elif args is not None or length is not None:
                problems.append(f"{token}: %{command}% takes no arguments or length")
        elif not known(command):
            problems.append(f"{token} is not an Envoy access log command operator: see Envoy's list "
                            "(https://www.envoyproxy.io/docs/envoy/latest/configuration/observability/access_log/"
                            "usage#command-operators), e.g. %START_TIME%, %REQ(X-REQUEST-ID)%, %UPSTREAM_HOST%")
        elif command in WITH_ARGS:
            if not args:
                problems.append(f"{token}: %{command}% needs an argument, e.g. {WITH_ARGS[command]}")
            elif command in ("REQ", "RESP", "TRAILER", "REQUEST_HEADER", "RESPONSE_HEADER", "RESPONSE_TRAILER") \
                    and args.count("?") > 1:
                problems.append(f"{token}: give one header and at most one alternative (X?Y)")
            if length is not None and command in NO_LENGTH:
                problems.append(f"{token}: %{command}% takes no length")
        elif length is not None or (args is not None and command not in OPTIONAL_ARGS):
            problems.append(f"{token}: %{command}% takes no arguments or length: write %{command}%")
    return problems


def check_format_text(v: Violations, path: str, text: str) -> None:
    for problem in format_problems(text):
        v.add(path, problem)
    if "\n" in text or "\r" in text:
        v.add(path, "cannot contain a line break: kuma-vm ends every line itself")


def interpolate(text: str, values: dict[str, str]) -> str:
    """Kuma's placeholders filled in (the rest of the format is Envoy's)."""
    return _KUMA_PLACEHOLDER.sub(lambda m: values.get(m.group(1), m.group(0)), text)
