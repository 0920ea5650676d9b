"""Noticing another program rewriting /etc/resolv.conf while kuma-dp has it pointed at the stub.

NetworkManager, dhclient, resolvconf or an operator may write /etc/resolv.conf at any time (a DHCP renewal
does). Then `.mesh` names stop resolving on the host, and what kuma-dp would restore at stop is stale. The
guard watches the file's directory with inotify (a rename over the file, a write to it, its removal) and, when
the file is no longer what kuma-dp wrote (host.json's `written_sha256`):

- kuma-dp that changes the host itself (root): points it at the stub again, taking the other program's file as
  the new original (so a stop puts back *its* servers), at most `MAX_REAPPLY` times per `WINDOW` seconds;
  beyond that it stops and says so once: two programs rewriting one file in turn is a loop nobody wins, and
  the operator must tell the other one to leave resolv.conf alone (or use `--dns-host-config resolved`/`none`).
- the packaged, unprivileged kuma-dp (root's `kuma-dp dns configure` did the change): warns once per distinct
  content, in the journal and in the unit's STATUS= line; `systemctl restart kuma-dp` re-applies.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import struct
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from . import resolvconf
from .host import Host, HostDnsError

log = logging.getLogger("kuma-dp.dns")

MAX_REAPPLY = 3
WINDOW = 600.0
DEBOUNCE = 0.2  # a writer's create + write + rename arrive as several events

_IN_MODIFY, _IN_ATTRIB, _IN_CLOSE_WRITE = 0x2, 0x4, 0x8
_IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x80, 0x100, 0x200
_IN_NONBLOCK, _IN_CLOEXEC = 0o4000, 0o2000000
_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len (then the name, NUL-padded)


class Inotify:
    """A minimal inotify watch on one directory, readable from the event loop (glibc's, through ctypes)."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if fd < 0:
            raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
        mask = _IN_MODIFY | _IN_ATTRIB | _IN_CLOSE_WRITE | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE
        if libc.inotify_add_watch(fd, os.fsencode(directory), mask) < 0:
            err = ctypes.get_errno()
            os.close(fd)
            raise OSError(err, os.strerror(err), str(directory))
        self.fd = fd

    def names(self) -> list[str]:
        """The names of the entries that changed since the last call (empty when nothing did)."""
        out: list[str] = []
        while True:
            try:
                data = os.read(self.fd, 64 * 1024)
            except BlockingIOError:
                return out
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                raise
            pos = 0
            while pos + _EVENT.size <= len(data):
                _wd, _mask, _cookie, length = _EVENT.unpack_from(data, pos)
                raw = data[pos + _EVENT.size:pos + _EVENT.size + length]
                out.append(raw.split(b"\0", 1)[0].decode(errors="replace"))
                pos += _EVENT.size + length

    def close(self) -> None:
        os.close(self.fd)


class ResolvConfGuard:
    def __init__(self, host: Host, listen: tuple[str, int], *, may_reapply: bool,
                 on_status: Callable[[str], None] | None = None,
                 on_report: Callable[[str, str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.host, self.listen, self.may_reapply = host, listen, may_reapply
        self.on_status = on_status
        self.on_report = on_report  # (state, message) for the dataplane's insight (HostDns.state's values)
        self.clock = clock
        self.path = host.paths.resolv_conf
        self.reapplied: deque[float] = deque()
        self.gave_up = False
        self._warned: str | None = None  # sha256 of the foreign content last warned about
        self._inotify: Inotify | None = None
        self._pending: asyncio.TimerHandle | None = None

    def start(self) -> None:
        """Watch from now on (errors are logged: without the guard, kuma-dp works as before)."""
        try:
            self._inotify = Inotify(self.path.parent)
        except OSError as e:
            log.warning("cannot watch resolv.conf for rewrites by other programs", extra={
                "path": str(self.path), "error": e.strerror or str(e)})
            return
        asyncio.get_running_loop().add_reader(self._inotify.fd, self._on_events)

    def stop(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fd)
            self._inotify.close()
            self._inotify = None

    def _on_events(self) -> None:
        assert self._inotify is not None
        if self.path.name in self._inotify.names() and self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(DEBOUNCE, self._settled)

    def _settled(self) -> None:
        self._pending = None
        try:
            self.check()
        except Exception:
            log.exception("checking resolv.conf after a change failed", extra={"path": str(self.path)})

    def check(self) -> str | None:
        """Look at resolv.conf now; returns what was done about a foreign rewrite (None: nothing to do)."""
        doc = self.host.state.load()
        if doc is None or doc.get("mode") != "resolv.conf":
            return None  # kuma-dp has not changed resolv.conf (or put it back): nothing to guard
        current = resolvconf.snapshot(self.path)
        digest = hashlib.sha256(current.content).hexdigest() if current.kind == "file" else current.kind
        if digest == doc.get("written_sha256"):
            return None
        if self.may_reapply and not self.gave_up:
            return self._reapply()
        if digest == self._warned:
            return None
        self._warned = digest
        text = (f"{self.path} was rewritten by another program (NetworkManager, dhclient, resolvconf?): .mesh names "
                "no longer resolve on this host")
        text += ("; kuma-dp stopped re-applying its change, since that program keeps rewriting it: configure it to "
                 "leave resolv.conf alone, or use --dns-host-config resolved or none" if self.gave_up else
                 "; `systemctl restart kuma-dp` points it at the stub again (with that program's servers as the "
                 "ones restored at stop)")
        self._report(text, "given-up" if self.gave_up else "rewritten")
        return text

    def _reapply(self) -> str:
        now = self.clock()
        while self.reapplied and now - self.reapplied[0] > WINDOW:
            self.reapplied.popleft()
        if len(self.reapplied) >= MAX_REAPPLY:
            self.gave_up = True
            return self.check() or ""
        self.reapplied.append(now)
        try:
            done = self.host.configure("resolv.conf", self.listen)
        except HostDnsError as e:
            text = f"{self.path} was rewritten by another program and cannot be pointed at the stub again: {e}"
            self._report(text, "failed")
            return text
        text = (f"{self.path} was rewritten by another program: pointed at the stub again, with that program's "
                f"file as the one restored at stop ({len(self.reapplied)} of at most {MAX_REAPPLY} times in "
                f"{WINDOW / 60:g} minutes); {done}")
        self._report(text, "reapplied")
        return text

    def _report(self, text: str, state: str) -> None:
        log.warning(text, extra={"path": str(self.path)})
        if self.on_status is not None:
            self.on_status(text)
        if self.on_report is not None:
            self.on_report(state, text)
