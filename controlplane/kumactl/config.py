"""The kumactl config file, in Kuma's format (`~/.kumactl/config`):

    contexts:
    - name: prod
      controlPlane: prod
    controlPlanes:
    - name: prod
      coordinates:
        apiServer:
          url: https://cp.example:5682
          caCertFile: /etc/kuma/ca.crt
          authType: tokens
          authConf:
            token: eyJ...
    currentContext: prod

Keys this module does not know (Kuma's `defaults`, `addHeaders`, ...) are kept as they are. The file can hold
tokens, so it is written atomically with mode 0600 in a 0700 directory.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import KumactlError

DEFAULT_CONFIG_PATH = Path("~") / ".kumactl" / "config"
CONFIG_ENV = "KUMACTL_CONFIG"
DEFAULT_URL = "http://127.0.0.1:5681"
AUTH_TYPES = {"tokens": ("token",)}  # auth type -> the auth-conf keys it needs


@dataclass
class ControlPlane:
    name: str
    url: str
    ca_cert_file: str | None = None
    auth_type: str | None = None
    auth_conf: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def token(self) -> str | None:
        return self.auth_conf.get("token") if self.auth_type == "tokens" else None

    def to_doc(self) -> dict[str, Any]:
        api: dict[str, Any] = {"url": self.url}
        if self.ca_cert_file:
            api["caCertFile"] = self.ca_cert_file
        if self.auth_type:
            api["authType"] = self.auth_type
        if self.auth_conf:
            api["authConf"] = dict(self.auth_conf)
        if self.headers:
            api["addHeaders"] = [{"key": k, "value": v} for k, v in self.headers.items()]
        return {"name": self.name, "coordinates": {"apiServer": api}}

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> ControlPlane:
        if not isinstance(doc, dict) or not isinstance(doc.get("name"), str):
            raise KumactlError(f"{where}: every entry of controlPlanes needs a name")
        api = ((doc.get("coordinates") or {}).get("apiServer") or {})
        if not isinstance(api, dict) or not isinstance(api.get("url"), str):
            raise KumactlError(f"{where}: control plane {doc['name']!r} has no coordinates.apiServer.url")
        headers = {}
        for h in api.get("addHeaders") or []:
            if isinstance(h, dict) and "key" in h:
                headers[str(h["key"])] = str(h.get("value", ""))
        conf = api.get("authConf") or {}
        return cls(name=doc["name"], url=api["url"], ca_cert_file=api.get("caCertFile") or None,
                   auth_type=api.get("authType") or None,
                   auth_conf={str(k): str(v) for k, v in conf.items()} if isinstance(conf, dict) else {},
                   headers=headers)


DEFAULT_CONTROL_PLANE = ControlPlane(name="local", url=DEFAULT_URL)


def resolve_path(flag: str | None) -> Path:
    """--config-file, else $KUMACTL_CONFIG, else ~/.kumactl/config."""
    raw = flag or os.environ.get(CONFIG_ENV) or str(DEFAULT_CONFIG_PATH)
    return Path(raw).expanduser()


class KumactlConfig:
    """The parsed file. `data` is the whole document, so unknown keys survive a rewrite."""

    def __init__(self, path: Path | None, data: dict[str, Any] | None = None) -> None:
        self.path = path
        self.data: dict[str, Any] = data if data is not None else {}
        self.data.setdefault("contexts", [])
        self.data.setdefault("controlPlanes", [])
        self.data.setdefault("currentContext", "")
        for key in ("contexts", "controlPlanes"):
            if not isinstance(self.data[key], list):
                raise KumactlError(f"{self._where()}: {key} must be a list")

    @property
    def exists(self) -> bool:
        return self.path is not None and self.path.exists()

    @classmethod
    def load(cls, path: Path) -> KumactlConfig:
        """The file at `path`, or an empty config when there is none (nothing is written until a change)."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return cls(path)
        except OSError as e:
            raise KumactlError(f"cannot read the kumactl config {path}: {e.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise KumactlError(f"the kumactl config {path} is not valid YAML: {e}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise KumactlError(f"the kumactl config {path} must be a YAML map (contexts, controlPlanes, "
                               "currentContext)")
        return cls(path, data)

    def _where(self) -> str:
        return str(self.path) if self.path else "kumactl config"

    # --- queries -------------------------------------------------------------------------------------------

    @property
    def current_context(self) -> str:
        return str(self.data.get("currentContext") or "")

    def control_planes(self) -> list[ControlPlane]:
        return [ControlPlane.from_doc(d, self._where()) for d in self.data["controlPlanes"]]

    def control_plane(self, name: str) -> ControlPlane | None:
        return next((cp for cp in self.control_planes() if cp.name == name), None)

    def _context(self, name: str) -> dict[str, Any] | None:
        return next((c for c in self.data["contexts"] if isinstance(c, dict) and c.get("name") == name), None)

    def current(self) -> ControlPlane:
        """The control plane of the current context; Kuma's local default when the file has none at all."""
        if not self.data["controlPlanes"] and not self.current_context:
            return DEFAULT_CONTROL_PLANE
        name = self.current_context
        if not name:
            raise KumactlError(f"{self._where()} has no current context",
                               "choose one: kumactl config control-planes switch --name NAME "
                               "(kumactl config control-planes list shows them)")
        ctx = self._context(name)
        if ctx is None:
            raise KumactlError(f"{self._where()}: the current context {name!r} is not among contexts",
                               "fix it with: kumactl config control-planes switch --name NAME")
        cp_name = str(ctx.get("controlPlane") or "")
        cp = self.control_plane(cp_name)
        if cp is None:
            raise KumactlError(f"{self._where()}: context {name!r} names control plane {cp_name!r}, "
                               "which is not among controlPlanes",
                               "add it with: kumactl config control-planes add --name NAME --address URL")
        return cp

    def current_control_plane_name(self) -> str | None:
        ctx = self._context(self.current_context) if self.current_context else None
        return str(ctx.get("controlPlane")) if ctx else None

    # --- changes ---------------------------------------------------------------------------------------------

    def add(self, cp: ControlPlane, *, overwrite: bool = False) -> None:
        """Add (or with `overwrite` replace) a control plane and its context, and make it current."""
        planes = self.data["controlPlanes"]
        idx = next((i for i, d in enumerate(planes) if isinstance(d, dict) and d.get("name") == cp.name), None)
        if idx is not None and not overwrite:
            raise KumactlError(f"Control Plane with name {cp.name!r} already exists. "
                               "Use --overwrite to replace an existing one.")
        if idx is None:
            planes.append(cp.to_doc())
        else:
            planes[idx] = cp.to_doc()
        ctx = self._context(cp.name)
        if ctx is None:
            self.data["contexts"].append({"name": cp.name, "controlPlane": cp.name})
        else:
            ctx["controlPlane"] = cp.name
        self.data["currentContext"] = cp.name

    def switch(self, name: str) -> None:
        if self._context(name) is None:
            known = ", ".join(str(c.get("name")) for c in self.data["contexts"] if isinstance(c, dict))
            raise KumactlError(f"there is no Control Plane with name {name!r}",
                               f"known: {known}" if known else
                               "add one with: kumactl config control-planes add --name NAME --address URL")
        self.data["currentContext"] = name

    def remove(self, name: str) -> bool:
        """Remove a control plane and the contexts that use it; True if it was the current one."""
        planes = self.data["controlPlanes"]
        if not any(isinstance(d, dict) and d.get("name") == name for d in planes):
            raise KumactlError(f"there is no Control Plane with name {name!r}")
        self.data["controlPlanes"] = [d for d in planes if not (isinstance(d, dict) and d.get("name") == name)]
        removed = [c for c in self.data["contexts"] if isinstance(c, dict) and c.get("controlPlane") == name]
        self.data["contexts"] = [c for c in self.data["contexts"] if c not in removed]
        was_current = any(c.get("name") == self.current_context for c in removed)
        if was_current:
            self.data["currentContext"] = ""
        return was_current

    def save(self) -> None:
        """Write atomically (temp file + rename) with mode 0600; the directory is created 0700."""
        if self.path is None:
            raise KumactlError("--no-config is set: there is no config file to change")
        path = self.path
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        except OSError as e:
            raise KumactlError(f"cannot write the kumactl config {path}: {e.strerror}") from None
        try:
            with os.fdopen(fd, "w") as f:
                os.fchmod(f.fileno(), 0o600)
                yaml.safe_dump(self.data, f, sort_keys=False, default_flow_style=False)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise KumactlError(f"cannot write the kumactl config {path}: {e.strerror}") from None
