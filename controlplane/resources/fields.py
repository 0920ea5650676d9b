"""Field checks shared by every resource type: names, labels, tags, durations, addresses."""

from __future__ import annotations

import ipaddress
import re
from datetime import timedelta
from typing import Annotated

from pydantic import BeforeValidator

from .errors import Violations
from .paths import key_path

# DNS-1123 subdomain: what Kubernetes accepts as an object name, so names survive the trip to a k8s zone.
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]*[A-Za-z0-9])?)*$"
)
# Label/tag keys: an optional DNS prefix and a name, as Kubernetes and Kuma tags use (kuma.io/service).
_KEY_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
# Kuma's tag rules (validators.go), the same for a Dataplane's tags and the policies' tag matchers, so a
# dataplane never registers with a tag no policy can select.
TAG_KEY_RE = re.compile(r"^[a-zA-Z0-9.\-_:/]+$")
TAG_VALUE_RE = re.compile(r"^[a-zA-Z0-9.\-_:]+$")
TAG_KEY_RULE = "tag name must be non-empty and consist of letters, digits, '.', '-', '_', ':' and '/'"
TAG_VALUE_CHARS = "letters, digits, '.', '-', '_' and ':'"
_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|µs|ms|s|m|h|d|y)")  # ASCII digits: \d takes any script's
_UNIT_SECONDS = {
    "ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0,
    "d": 86400.0, "y": 365 * 86400.0,
}


def check_name(v: Violations, path: str, name: str, *, label: bool = False) -> None:
    """DNS-1123 subdomain (or label, for names that end up in SNI and SPIFFE IDs such as meshes and zones)."""
    limit = 63 if label else 253
    pattern = _LABEL if label else _SUBDOMAIN
    if not name:
        v.add(path, "cannot be empty")
    elif len(name) > limit:
        v.add(path, f"must be at most {limit} characters long")
    elif not pattern.match(name):
        kind, chars = ("DNS-1123 label", "'-'") if label else ("DNS-1123 subdomain", "'-' and '.'")
        v.add(path, f"{name!r} is not a valid {kind}: use lowercase letters, digits and {chars}, "
                    "starting and ending with a letter or digit")


def check_key(v: Violations, path: str, key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if not name or len(name) > 63 or not _KEY_NAME.match(name):
        v.add(path, f"key {key!r} must be an optional DNS prefix and '/', then a name of letters, digits, "
                    "'-', '_' or '.' (at most 63)")
    elif prefix and (len(prefix) > 253 or not _SUBDOMAIN.match(prefix)):
        v.add(path, f"key prefix {prefix!r} must be a DNS-1123 subdomain")


def check_labels(v: Violations, path: str, labels: dict[str, str]) -> None:
    for key, value in labels.items():
        check_key(v, key_path(path, key) if path else key, key)
        if len(value) > 63 or (value and not _KEY_NAME.match(value)):
            v.add(key_path(path, key) if path else key,
                  f"value {value!r} must be at most 63 letters, digits, '-', '_' or '.'")


def check_tags(v: Violations, path: str, tags: dict[str, str], *, required: tuple[str, ...] = ()) -> None:
    for key in required:
        if not tags.get(key):
            v.add(key_path(path, key), f"mandatory tag {key!r} is missing" if key not in tags else
                  "tag value must be non-empty")
    for key in sorted(tags):
        value = tags[key]
        if not TAG_KEY_RE.match(key):
            v.add(key_path(path, key), TAG_KEY_RULE)
        if not value:
            if key not in required:
                v.add(key_path(path, key), "tag value must be non-empty")
        elif not TAG_VALUE_RE.match(value):
            v.add(key_path(path, key), f"tag value {value!r} must consist of {TAG_VALUE_CHARS}")


SELECTOR_VALUE_RE = re.compile(r"^([a-zA-Z0-9.\-_:/]+|\*)$")


def check_selector(v: Violations, path: str, tags: dict[str, str]) -> None:
    """Kuma's tag selector (ValidateSelector): tag names as in check_tags; values may also hold '/' or be '*'."""
    for key in sorted(tags):
        value = tags[key]
        if not TAG_KEY_RE.match(key):
            v.add(key_path(path, key), TAG_KEY_RULE)
        if not value:
            v.add(key_path(path, key), "tag value must be non-empty")
        elif not SELECTOR_VALUE_RE.match(value):
            v.add(key_path(path, key), f"tag value {value!r} must consist of letters, digits, '.', '-', '_', ':' "
                                       "and '/', or be '*'")


# The longest duration anything takes: Envoy's protobuf Duration must fit int64 nanoseconds in whole seconds,
# which is also just under the largest Go time.Duration Kuma can hold (about 292 years). Bounding every
# duration here means nothing stored can overflow a date or an Envoy field later.
MAX_DURATION_NS = 9_223_372_036 * 1_000_000_000 - 1
MAX_DURATION_TEXT = "2562047h47m15s"
MAX_DURATION = timedelta(seconds=MAX_DURATION_NS // 1_000_000_000)


def parse_duration(text: str, *, clamp: bool = False) -> timedelta:
    """Go-style durations ('10s', '1h30m', '500ms') plus 'd' and 'y' as Kuma's CA settings use; at most
    MAX_DURATION: ValueError beyond it (what the API answers), or MAX_DURATION with `clamp` (for reading what
    an older version stored before durations were bounded)."""
    text = text.strip()
    if not text:
        raise ValueError("empty duration")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(text) or pos == 0:
        raise ValueError(f"{text!r} is not a duration: use a number and a unit, e.g. '10s', '1h30m', '500ms'")
    if total > MAX_DURATION.total_seconds():
        if clamp:
            return MAX_DURATION
        raise ValueError(f"{text!r} is too long: durations are at most {MAX_DURATION_TEXT} (about 292 years)")
    return timedelta(seconds=total)


def check_duration(v: Violations, path: str, text: str | None, *, positive: bool = True,
                   maximum: timedelta | None = None) -> timedelta | None:
    if text is None:
        return None
    try:
        d = parse_duration(text)
    except ValueError as e:
        v.add(path, str(e))
        return None
    if positive and d <= timedelta(0):
        v.add(path, "must be greater than zero")
    if maximum is not None and d > maximum:
        v.add(path, f"must be at most {maximum}")
    return d


def check_port(v: Violations, path: str, port: int | None, *, required: bool = True) -> None:
    if port is None:
        if required:
            v.add(path, "port is required")
        return
    if not 1 <= port <= 65535:
        v.add(path, f"port {port} must be in the range [1, 65535]")


def check_address(v: Violations, path: str, address: str | None, *, required: bool = True,
                  ip_only: bool = False) -> None:
    if not address:
        if required:
            v.add(path, "address is required")
        return
    try:
        ipaddress.ip_address(address)
        return
    except ValueError:
        pass
    if ip_only or not _HOSTNAME.match(address):
        v.add(path, f"{address!r} is not a valid {'IP address' if ip_only else 'IP address or hostname'}")


def coerce_tag_values(value: object) -> object:
    """Scalar values of a policy's tag (or label) map as the strings Kuma reads them as.

    Kuma's policies are Go structs decoded with sigs.k8s.io/yaml, which converts a YAML scalar into the string
    a `map[string]string` wants: `port: 8080` is the tag "8080", `enabled: true` is "true", `ratio: 0.5` is
    "0.5" (Kuma's own MeshTCPRoute tests select a gateway listener with an unquoted `port: 6000`). Lists, maps
    and null are left as they are, so they are refused as not a string. A Dataplane's tags are not coerced:
    Kuma decodes Dataplanes as protobuf JSON, which refuses a number where a string goes."""
    if not isinstance(value, dict):
        return value
    return {k: _scalar_text(v) for k, v in value.items()}


def _scalar_text(value: object) -> object:
    if isinstance(value, bool):  # before int: bool is an int in Python
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):  # Go's FormatFloat(f, 'g', -1): 8080.0 -> "8080", 0.5 -> "0.5"
        return str(int(value)) if value.is_integer() and abs(value) < 1e21 else repr(value)
    return value


# The type of a policy's tag and label maps (targetRef tags/labels, retry predicates): see coerce_tag_values.
PolicyTags = Annotated[dict[str, str], BeforeValidator(coerce_tag_values)]
