"""Filters the kuma-vm roles use: the newest package of a list of files, and a token's claims."""

from __future__ import annotations

import base64
import json
import re
import time
from typing import Any

from ansible.errors import AnsibleFilterError

_PACKAGE = re.compile(r"^kuma-(?:cp|dp)[_-](?P<version>[0-9][0-9.]*)-(?P<release>[0-9]+)[._]")


def _version_key(path: str) -> tuple[tuple[int, ...], int]:
    name = path.rsplit("/", 1)[-1]
    m = _PACKAGE.match(name)
    if m is None:
        raise AnsibleFilterError(f"{name} is not a kuma-cp/kuma-dp package file name (NAME_VERSION-RELEASE_ARCH.deb "
                                 "or NAME-VERSION-RELEASE.ARCH.rpm)")
    return tuple(int(p) for p in m.group("version").split(".") if p), int(m.group("release"))


def kuma_package_version(path: str) -> str:
    """VERSION-RELEASE of a package file, as dpkg-query and rpm -q report the installed package."""
    _version_key(path)  # a clear error for a name that is not a kuma-vm package
    m = _PACKAGE.match(path.rsplit("/", 1)[-1])
    assert m is not None
    return f"{m.group('version')}-{m.group('release')}"


def kuma_newest_package(paths: list[str]) -> str:
    """The file with the highest version and release ('' for none): 0.1.0-10 is newer than 0.1.0-9."""
    return max(paths, key=_version_key) if paths else ""


# Package formats by Ansible's os_family: Debian 12/13 take the .deb, the RHEL family (RHEL, Rocky, Alma, CentOS
# Stream, Fedora: os_family RedHat) the .rpm. Architectures as `uname -m` says them, named as each format does.
_FORMATS = {"Debian": "deb", "RedHat": "rpm"}
_ARCH = {"deb": {"x86_64": "amd64", "aarch64": "arm64"}, "rpm": {"x86_64": "x86_64", "aarch64": "aarch64"}}


def kuma_package_plan(os_family: str, package: str, architecture: str, version: str = "") -> dict[str, str]:
    """How kuma_common installs `package` on a host: its format (the tasks file package-FORMAT.yml), the file
    name pattern of a local build (`make packages` output) and the name to ask a repository for."""
    fmt = _FORMATS.get(str(os_family))
    if fmt is None:
        raise AnsibleFilterError(f"{package}: no package for os_family {os_family!r}: kuma-vm ships .deb packages "
                                 "for the Debian family and .rpm packages for the RHEL family (os_family RedHat)")
    arch = _ARCH[fmt].get(str(architecture))
    if arch is None:
        raise AnsibleFilterError(f"{package}: no package for the architecture {architecture!r} (built for "
                                 f"{', '.join(_ARCH[fmt])})")
    if fmt == "deb":
        return {"format": fmt, "file_pattern": f"{package}_*_{arch}.deb",
                "repository_name": f"{package}={version}" if version else package}
    return {"format": fmt, "file_pattern": f"{package}-*.{arch}.rpm",
            "repository_name": f"{package}-{version}" if version else package}


def kuma_token_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, not verified (the control plane verifies it; this only tells whether to renew):
    {} for anything that is not a JWT."""
    parts = str(token or "").strip().split(".")
    if len(parts) != 3:
        return {}
    payload = parts[1] + "=" * (-len(parts[1]) % 4)
    try:
        claims = json.loads(base64.urlsafe_b64decode(payload))
    except ValueError:
        return {}
    return claims if isinstance(claims, dict) else {}


def kuma_token_seconds_left(token: str) -> int:
    """Seconds until the token expires (negative: expired; 0 when it cannot be read)."""
    exp = kuma_token_claims(token).get("exp")
    return int(exp - time.time()) if isinstance(exp, int | float) else 0


def kuma_revoked_ids(secret_json: str) -> list[str]:
    """The token IDs (jti) a revocations (Global)Secret lists (`kumactl get global-secret zone-token-revocations
    -o json`): its data is the IDs separated by commas or newlines, base64-encoded; [] for no secret."""
    text = str(secret_json or "").strip()
    if not text:
        return []
    try:
        data = json.loads(text).get("data", "")
        ids = base64.b64decode(data).decode("utf-8", errors="replace")
    except (ValueError, AttributeError) as e:
        raise AnsibleFilterError(f"not a revocations secret (kumactl get ... -o json): {e}") from None
    return [part.strip() for part in re.split(r"[,\r\n]+", ids) if part.strip()]


def kuma_dp_stem(dataplane: dict[str, Any]) -> str:
    """The file stem of a dataplane in /etc/kuma/dataplanes: `primary` for the host's primary one (the packaged
    kuma-dp.service reads primary.yaml and primary.token), else its name (kuma-dp@NAME.service)."""
    return "primary" if dataplane.get("primary") else str(dataplane["name"])


def kuma_dp_unit(dataplane: dict[str, Any] | str) -> str:
    """The systemd unit of a dataplane (or of a file stem)."""
    stem = dataplane if isinstance(dataplane, str) else kuma_dp_stem(dataplane)
    return "kuma-dp.service" if stem == "primary" else f"kuma-dp@{stem}.service"


def kuma_dp_revocation_list(dataplane: dict[str, Any]) -> str:
    """Where the zone control plane lists the revoked tokens of a dataplane, as `kumactl get` arguments joined by
    "/": a dataplane token's mesh Secret `dataplane-token-revocations-MESH`, a zone ingress's zone token's
    GlobalSecret `zone-token-revocations`."""
    if dataplane.get("proxy_type", "dataplane") == "ingress":
        return "global-secret/zone-token-revocations"
    mesh = str(dataplane.get("mesh") or "default")
    return f"secret/dataplane-token-revocations-{mesh}/--mesh/{mesh}"


def kuma_zone_control_plane(zone_cps: list[str], hostvars: Any, zone: str | None) -> str:
    """The zone control plane host a host's dataplanes join: the one of `kuma_zone_cp` whose `kuma_zone` is the
    host's `zone`, else the first of the group ('' for none): a single-zone inventory names no zones."""
    for host in zone_cps:
        if zone and hostvars[host].get("kuma_zone") == zone:
            return host
    return zone_cps[0] if zone_cps else ""


def kuma_zone_instances(zone_cps: list[str], hostvars: Any, zone: str | None, host: str) -> list[str]:
    """The instances of `host`'s zone control plane that share its PostgreSQL store, in inventory order: the hosts
    of `kuma_zone_cp` with the same zone (`kuma_cp_zone_name`, else `kuma_zone`; none for a standalone zone) whose
    `kuma_cp_store_type` is postgres. [host] when it is not among them (SQLite, or outside the group)."""
    def zone_of(name: str) -> str:
        hv = hostvars[name]
        return str(hv.get("kuma_cp_zone_name") or hv.get("kuma_zone") or "")

    found = [h for h in zone_cps
             if zone_of(h) == (zone or "") and hostvars[h].get("kuma_cp_store_type", "sqlite") == "postgres"]
    return found if host in found else [host]


def kuma_host_names(hosts: list[str], hostvars: Any) -> list[str]:
    """Each host's inventory name and address (`ansible_host`), without repeats: the names a server certificate of
    those hosts must carry."""
    out: list[str] = []
    for host in hosts:
        for name in (host, hostvars[host].get("ansible_host") or host):
            if str(name) not in out:
                out.append(str(name))
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"kuma_newest_package": kuma_newest_package, "kuma_token_claims": kuma_token_claims,
                "kuma_token_seconds_left": kuma_token_seconds_left, "kuma_dp_stem": kuma_dp_stem,
                "kuma_dp_unit": kuma_dp_unit, "kuma_revoked_ids": kuma_revoked_ids,
                "kuma_zone_control_plane": kuma_zone_control_plane,
                "kuma_dp_revocation_list": kuma_dp_revocation_list, "kuma_package_plan": kuma_package_plan,
                "kuma_package_version": kuma_package_version, "kuma_zone_instances": kuma_zone_instances,
                "kuma_host_names": kuma_host_names}
