"""Pointing the host's resolver at the stub, and putting it back: `--dns-host-config`.

- `resolved` (systemd-resolved serves the host: resolv.conf names 127.0.0.53, or nsswitch uses `resolve`):
  resolved routes queries per link, and only to links it considers up with a routable address, so the stub
  gets a link of its own, `kuma-dns0`: a dummy interface (a veth pair where the kernel has no dummy driver),
  up, carrying the stub's 127.x address with global scope (resolved sends per-link queries bound to the
  link, so that address must be local *on that link*), with `resolvectl dns kuma-dns0 ADDR[:PORT]`,
  `domain ~mesh` and `default-route false`: only `.mesh` reaches the stub; every other name goes where it
  went before, untouched. Undo: `resolvectl revert`, delete the link (resolved forgets it). A crash leaves
  at worst `.mesh` failing; the host's other names never depend on kuma-dp.
- `resolv.conf` (anything else): /etc/resolv.conf is replaced atomically (rename of a finished temporary
  file; a symlink is replaced by a file, never followed) by one naming only the stub, keeping search/options.
  Undo: the original (bytes, mode, owner, or the symlink and its target) is put back, atomically, if the
  file is still the one kuma-dp wrote (if someone changed it since, theirs is kept; `--force` restores anyway).
- `auto`: `resolved` when resolved is running and the host uses it, else `resolv.conf`. Only for the real
  /etc/resolv.conf: with another `--dns-resolv-conf` (tests), `auto` means `resolv.conf`, so nothing but that
  file is ever touched.

Crash safety: what is about to change is written to `<state dir>/host.json` (with the backup) *before* the
change, and removed only after it is undone. So a host.json found at start means the last owner did not
finish: its change is undone first (`recover`), and `kuma-dp dns restore` (the unit's ExecStopPost) does the
same by hand. Every undo is idempotent. `<state dir>/owner.lock` (flock, with the owner's pid) makes the
stub one per host and keeps `restore` from undoing a live owner's configuration.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import resolvconf
from .settings import DEFAULT_RESOLV_CONF, DOMAIN, format_address

log = logging.getLogger("kuma-dp.dns")

STATE_FILE = "host.json"
LOCK_FILE = "owner.lock"
LINK = "kuma-dns0"
PEER = "kuma-dns0p"
RESOLVED_STUBS = ("127.0.0.53", "127.0.0.54")
Runner = Callable[[list[str]], "subprocess.CompletedProcess[str]"]


class HostDnsError(Exception):
    pass


class OwnerBusy(HostDnsError):
    def __init__(self, pid: int | None, path: Path) -> None:
        self.pid, self.path = pid, path
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"{who} holds {path}")


# --- commands ---------------------------------------------------------------------------------------------

def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin:/bin")
    return found or name


def run_command(argv: list[str]) -> subprocess.CompletedProcess[str]:
    """Run `ip` / `resolvectl` (found in PATH or the sbin directories); never raises for a failed command."""
    try:
        return subprocess.run([_binary(argv[0]), *argv[1:]], capture_output=True, text=True, timeout=20,
                              stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return subprocess.CompletedProcess(argv, 127, "", f"{argv[0]}: {e}")


def _check(runner: Runner, argv: list[str]) -> subprocess.CompletedProcess[str]:
    r = runner(argv)
    if r.returncode != 0:
        raise HostDnsError(f"`{' '.join(argv)}` failed: {(r.stderr or r.stdout).strip() or r.returncode}")
    return r


# --- paths, lock, state ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HostPaths:
    resolv_conf: Path = Path(DEFAULT_RESOLV_CONF)
    resolved_dir: Path = Path("/run/systemd/resolve")
    nsswitch: Path = Path("/etc/nsswitch.conf")

    @property
    def is_system(self) -> bool:
        return str(self.resolv_conf) == DEFAULT_RESOLV_CONF


class OwnerLock:
    """`<state dir>/owner.lock`: held (flock) by the kuma-dp that owns the host's stub, with its pid inside."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / LOCK_FILE
        self.fd: int | None = None

    def acquire(self, *, create: bool = True) -> bool:
        """Take the lock or raise OwnerBusy; False when there is no lock file and `create` is off."""
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        try:
            fd = os.open(self.path, os.O_RDWR | (os.O_CREAT if create else 0) | os.O_CLOEXEC, 0o644)
            writable = True
        except FileNotFoundError:
            return False
        except PermissionError:  # created by root (`kuma-dp dns restore`): a read-only fd locks as well
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
            writable = False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = self._read_pid(fd)
            os.close(fd)
            raise OwnerBusy(pid, self.path) from None
        if writable and create:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        return True

    @staticmethod
    def _read_pid(fd: int) -> int | None:
        try:
            return int(os.pread(fd, 32, 0).decode().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def holder(self) -> int | None:
        """The pid written in the lock file (the owner's, while it holds the lock)."""
        try:
            return int(self.path.read_text().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class HostState:
    """`<state dir>/host.json`: what was (or is about to be) changed on the host, with the backup."""

    def __init__(self, state_dir: Path) -> None:
        self.path = Path(state_dir) / STATE_FILE

    def load(self) -> dict[str, Any] | None:
        try:
            doc = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise HostDnsError(f"{self.path}: unreadable ({e}); fix or remove it, then restore the host's DNS "
                               "by hand") from None
        return doc if isinstance(doc, dict) else None

    def save(self, doc: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        # Readable by the owner's user when root wrote it (`kuma-dp dns configure`): it names the upstreams.
        resolvconf.write_atomic(self.path, (json.dumps(doc, indent=1) + "\n").encode(), 0o644)

    def clear(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        resolvconf._fsync_dir(self.path.parent)


# --- detection ---------------------------------------------------------------------------------------------

def uses_resolved(paths: HostPaths) -> bool:
    """Does glibc on this host ask systemd-resolved (resolv.conf names its stub, or nss-resolve is on)?"""
    snap = resolvconf.snapshot(paths.resolv_conf)
    servers = resolvconf.nameservers(snap.text)
    if snap.kind == "symlink" and snap.target.endswith("/systemd/resolve/stub-resolv.conf"):
        return True
    if servers and all(s in RESOLVED_STUBS for s in servers):
        return True
    with contextlib.suppress(OSError):
        for line in paths.nsswitch.read_text().splitlines():
            words = line.split("#", 1)[0].split()
            if words and words[0] == "hosts:" and "resolve" in words[1:]:
                return True
    return False


def resolved_running(paths: HostPaths, runner: Runner) -> bool:
    if not (paths.resolved_dir / "io.systemd.Resolve").exists() and \
            not (paths.resolved_dir / "stub-resolv.conf").exists():
        return False
    return runner(["resolvectl", "status", "--no-pager"]).returncode == 0


def detect(paths: HostPaths, runner: Runner) -> str:
    if paths.is_system and uses_resolved(paths) and resolved_running(paths, runner):
        return "resolved"
    return "resolv.conf"


# --- the host ----------------------------------------------------------------------------------------------

@dataclass
class Host:
    """Configures and restores one host's resolver; `state_dir` holds host.json and owner.lock."""

    state_dir: Path
    paths: HostPaths = field(default_factory=HostPaths)
    runner: Runner = run_command
    domain: str = DOMAIN

    @property
    def state(self) -> HostState:
        return HostState(self.state_dir)

    def configure(self, mode: str, listen: tuple[str, int]) -> str:
        """Point the resolver at the stub (mode: auto | resolved | resolv.conf); returns what was done."""
        if mode == "auto":
            mode = detect(self.paths, self.runner)
        if mode == "resolved":
            return self._configure_resolved(listen)
        if mode == "resolv.conf":
            return self._configure_resolv_conf(listen)
        raise HostDnsError(f"unknown host DNS mode {mode!r}")

    def restore(self, *, force: bool = False) -> str | None:
        """Undo what host.json says was done (None: nothing to do)."""
        doc = self.state.load()
        if doc is None:
            return None
        mode = doc.get("mode")
        if mode == "resolved":
            text = self._restore_resolved(doc)
        elif mode == "resolv.conf":
            text = self._restore_resolv_conf(doc, force)
        else:
            text = f"{self.state.path}: unknown mode {mode!r}; removed"
        self.state.clear()
        return text

    # --- resolv.conf ---------------------------------------------------------------------------------------

    def _configure_resolv_conf(self, listen: tuple[str, int]) -> str:
        host, port = listen
        path = self.paths.resolv_conf
        if port != 53:
            raise HostDnsError(f"resolv.conf cannot name a port: with --dns-host-config resolv.conf the stub must "
                               f"listen on port 53 (--dns-listen is {format_address(host, port)})")
        ip = ipaddress.ip_address(host)
        if ip.is_unspecified:
            host = "127.0.0.1" if ip.version == 4 else "::1"
        snap = resolvconf.snapshot(path)
        if snap.kind == "file" and snap.content.startswith(resolvconf.MARK.encode()):
            log.warning("the resolv.conf found was written by kuma-dp but no backup of the original exists; "
                        "the host's original DNS servers are unknown", extra={"path": str(path)})
        content = resolvconf.render(snap.text, host, self.state.path).encode()
        self.state.save({"mode": "resolv.conf", "pid": os.getpid(), "path": str(path),
                         "original": snap.to_json(), "written_sha256": hashlib.sha256(content).hexdigest()})
        uid, gid = (snap.uid, snap.gid) if snap.kind == "file" else (0, 0)
        try:
            resolvconf.write_atomic(path, content, 0o644, uid, gid)
        except OSError as e:
            self.state.clear()
            raise HostDnsError(f"cannot rewrite {path}: {e.strerror or e} (kuma-dp needs to create a file in "
                               f"{path.parent} and rename it over {path.name}: run it as root, or use "
                               "--dns-host-config resolved / none)") from None
        was = {"file": "a file", "symlink": f"a symlink to {snap.target}", "absent": "absent"}[snap.kind]
        return f"{path} now names only the stub at {host} (it was {was}; backup in {self.state.path})"

    def _restore_resolv_conf(self, doc: dict[str, Any], force: bool) -> str:
        path = Path(doc["path"])
        original = resolvconf.Snapshot.from_json(doc["original"])
        current = resolvconf.snapshot(path)
        if current == original or (current.kind == original.kind == "symlink"
                                   and current.target == original.target):
            return f"{path} was already the original"
        ours = current.kind == "file" and hashlib.sha256(current.content).hexdigest() == doc.get("written_sha256")
        if not ours and not force:
            log.warning("resolv.conf was changed by someone else after kuma-dp wrote it: leaving it as it is",
                        extra={"path": str(path)})
            return f"{path} was changed by someone else after kuma-dp wrote it; left as it is (--force restores)"
        try:
            resolvconf.put_back(path, original)
        except OSError as e:
            raise HostDnsError(f"cannot restore {path}: {e.strerror or e} (the backup stays in "
                               f"{self.state.path}; run `kuma-dp dns restore` as root)") from None
        return f"{path} restored" + (f" (the symlink to {original.target})" if original.kind == "symlink" else "")

    # --- systemd-resolved ----------------------------------------------------------------------------------

    def _configure_resolved(self, listen: tuple[str, int]) -> str:
        host, port = listen
        ip = ipaddress.ip_address(host)
        if ip.version != 4 or not ip.is_loopback or host in ("127.0.0.1", *RESOLVED_STUBS):
            raise HostDnsError(f"with systemd-resolved the stub needs a 127.x.y.z address of its own (not "
                               f"127.0.0.1, 127.0.0.53 or 127.0.0.54): --dns-listen is {format_address(host, port)}")
        if not resolved_running(self.paths, self.runner):
            raise HostDnsError("systemd-resolved is not running (resolvectl status failed): use "
                               "--dns-host-config resolv.conf or auto")
        doc: dict[str, Any] = {"mode": "resolved", "pid": os.getpid(), "link": LINK, "peer": None,
                               "address": host, "server": format_address(host, port), "domain": self.domain}
        self.state.save(doc)  # before anything changes: a crash from here on is undone by restore
        try:
            self._remove_link()
            r = self.runner(["ip", "link", "add", LINK, "type", "dummy"])
            if r.returncode != 0:
                # No dummy driver (a kernel without it): a veth pair is up and has a carrier just as well.
                _check(self.runner, ["ip", "link", "add", LINK, "type", "veth", "peer", "name", PEER])
                doc["peer"] = PEER
                self.state.save(doc)
                _check(self.runner, ["ip", "link", "set", PEER, "up"])
            _check(self.runner, ["ip", "link", "set", LINK, "up"])
            _check(self.runner, ["ip", "addr", "add", f"{host}/32", "dev", LINK, "scope", "global"])
            server = host if port == 53 else f"{host}:{port}"
            _check(self.runner, ["resolvectl", "dns", LINK, server])
            _check(self.runner, ["resolvectl", "domain", LINK, f"~{self.domain}"])
            _check(self.runner, ["resolvectl", "default-route", LINK, "false"])
            for setting in ("llmnr", "mdns", "dnssec", "dnsovertls"):  # plain unicast DNS to the stub only
                r = self.runner(["resolvectl", setting, LINK, "no"])
                if r.returncode != 0:
                    log.debug("resolvectl setting not applied", extra={"setting": setting,
                                                                       "error": (r.stderr or "").strip()})
        except HostDnsError:
            with contextlib.suppress(HostDnsError):
                self.restore()
            raise
        kind = "veth pair" if doc["peer"] else "dummy link"
        return (f"systemd-resolved sends .{self.domain} to the stub at {doc['server']} (link {LINK}, a {kind}; "
                f"routing domain ~{self.domain}, not a default route)")

    def _remove_link(self) -> bool:
        if self.runner(["ip", "link", "show", LINK]).returncode != 0:
            return False
        self.runner(["resolvectl", "revert", LINK])
        _check(self.runner, ["ip", "link", "del", LINK])  # a veth's peer goes with it
        return True

    def _restore_resolved(self, doc: dict[str, Any]) -> str:
        removed = self._remove_link()
        return (f"link {LINK} removed; systemd-resolved no longer sends .{doc.get('domain', self.domain)} anywhere"
                if removed else f"link {LINK} was already gone")

    # --- the upstreams the host had ------------------------------------------------------------------------

    def original_nameservers(self) -> list[str]:
        """The servers of resolv.conf as it was before kuma-dp changed it (from the backup when there is one)."""
        with contextlib.suppress(HostDnsError):
            doc = self.state.load()
            if doc and doc.get("mode") == "resolv.conf":
                return resolvconf.nameservers(resolvconf.Snapshot.from_json(doc["original"]).text)
        return resolvconf.nameservers(resolvconf.snapshot(self.paths.resolv_conf).text)
