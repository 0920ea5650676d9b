"""recvmmsg/sendmmsg for the DNS answer loop (64-bit little-endian Linux, through ctypes: standard library only).

Why: with the answers precomputed, a `.mesh` reply costs little more than its two system calls, and CPython's
`recvfrom`/`sendto` add their own work to each (a 4 KiB bytes object per datagram, the source address
turned into a `(str, int)` tuple and parsed back for the reply, the GIL released and taken twice). One
`recvmmsg` takes up to BATCH datagrams that are already waiting into fixed buffers, the reply overwrites
each query in place (same id, same source address as the destination), and one `sendmmsg` sends them all.
With one query waiting it is still one call each way, so a quiet server answers as soon as before.

`Batch(fd, slot)` owns the buffers for one socket; `batch.recv()` returns how many datagrams arrived (their
bytes and lengths are in `buf`/`length(i)`), `batch.send(first, count)` sends slots first..first+count-1 with
the lengths set by `set_reply_len`. Slot i's source address is `source(i)` as the socket module gives it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
import sys
from typing import Any

BATCH = 64
MSG_WAITFORONE = 0x10000  # block for the first datagram only, then take what is already queued
_SOCKADDR = 128  # sizeof(struct sockaddr_storage)


class _Iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _Msghdr(ctypes.Structure):
    _fields_ = [("msg_name", ctypes.c_void_p), ("msg_namelen", ctypes.c_uint32),
                ("msg_iov", ctypes.POINTER(_Iovec)), ("msg_iovlen", ctypes.c_size_t),
                ("msg_control", ctypes.c_void_p), ("msg_controllen", ctypes.c_size_t), ("msg_flags", ctypes.c_int)]


class _Mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _Msghdr), ("msg_len", ctypes.c_uint32)]


_MMSG_SIZE = ctypes.sizeof(_Mmsghdr)
_LEN_OFFSET = _Mmsghdr.msg_len.offset
_NAMELEN_OFFSET = _Msghdr.msg_namelen.offset


def _libc() -> Any | None:
    # The views below read size_t and pointers as 64-bit little-endian words: other layouts use the plain loop.
    if (not sys.platform.startswith("linux") or sys.byteorder != "little"
            or ctypes.sizeof(ctypes.c_size_t) != 8 or ctypes.sizeof(ctypes.c_void_p) != 8):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        recvmmsg, sendmmsg = libc.recvmmsg, libc.sendmmsg
    except (OSError, AttributeError):
        return None
    # No argtypes: every argument is passed as a ctypes object built once (Batch), which skips ctypes'
    # per-call conversion (about a third of a call's cost).
    recvmmsg.restype = ctypes.c_int
    sendmmsg.restype = ctypes.c_int
    return libc


_LIBC = _libc()


def available() -> bool:
    """Whether this platform has recvmmsg/sendmmsg (Linux); elsewhere the loop uses recvfrom/sendto."""
    return _LIBC is not None


class Batch:
    """BATCH slots of `slot` bytes each, with their iovecs, source addresses and message headers."""

    def __init__(self, fd: int, slot: int, batch: int = BATCH) -> None:
        if _LIBC is None:
            raise OSError("recvmmsg/sendmmsg are not available on this platform")
        self.slot, self.size = slot, batch
        self._buf = (ctypes.c_char * (slot * batch))()
        self._iov = (_Iovec * batch)()
        self._names = (ctypes.c_char * (_SOCKADDR * batch))()
        self._msgs = (_Mmsghdr * batch)()
        base, names = ctypes.addressof(self._buf), ctypes.addressof(self._names)
        for i in range(batch):
            self._iov[i].iov_base = base + i * slot
            self._iov[i].iov_len = slot
            hdr = self._msgs[i].msg_hdr
            hdr.msg_name = names + i * _SOCKADDR
            hdr.msg_namelen = _SOCKADDR
            hdr.msg_iov = ctypes.pointer(self._iov[i])
            hdr.msg_iovlen = 1
        self._msgs_addr = ctypes.addressof(self._msgs)
        # Views for the hot loop: plain indexing, no ctypes attribute access per datagram.
        self.buf = memoryview(self._buf).cast("B")
        self.iov_lens = self._iov_lens = memoryview(self._iov).cast("B").cast("Q")  # slot i's at [2 * i + 1]
        self.msg_words = self._msg_words = memoryview(self._msgs).cast("B").cast("I")  # the headers, 32-bit words
        self.len_word = self._len_word = _LEN_OFFSET // 4  # slot i's received length at [i * stride + len_word]
        self._namelen_word = _NAMELEN_OFFSET // 4
        self.stride = self._stride = _MMSG_SIZE // 4
        self._names_view = memoryview(self._names).cast("B")
        self._recvmmsg, self._sendmmsg = _LIBC.recvmmsg, _LIBC.sendmmsg
        self._fd = ctypes.c_int(fd)
        self._headers = [ctypes.c_void_p(self._msgs_addr + i * _MMSG_SIZE) for i in range(batch)]  # from slot i
        self._counts = [ctypes.c_uint(i) for i in range(batch + 1)]
        self._zero, self._wait_one = ctypes.c_int(0), ctypes.c_int(MSG_WAITFORONE)
        self._used = 0  # slots the last recv filled

    def recv(self) -> int:
        """Block for at least one datagram and take up to BATCH; their slots are ready for replies. Raises
        OSError (the socket closed, interrupted...)."""
        words, stride, nl = self._msg_words, self._stride, self._namelen_word
        lens = self._iov_lens
        slot = self.slot
        for i in range(self._used):  # the last batch's datagrams and replies changed these
            lens[2 * i + 1] = slot
            words[i * stride + nl] = _SOCKADDR
        self._used = 0
        n: int = self._recvmmsg(self._fd, self._headers[0], self._counts[self.size], self._wait_one, None)
        if n < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        self._used = n
        return n

    def length(self, i: int) -> int:
        """Bytes received in slot i (cut at the slot size, as recvfrom cuts a longer datagram)."""
        return int(self._msg_words[i * self._stride + self._len_word])

    def set_reply_len(self, i: int, n: int) -> None:
        self._iov_lens[2 * i + 1] = n

    def send(self, first: int, count: int) -> int:
        """Send slots first..first+count-1 (each to its datagram's source); a datagram the kernel refuses is
        skipped as `sendto`'s OSError would be. Returns how many were sent."""
        sent = 0
        end = first + count
        while first < end:
            n: int = self._sendmmsg(self._fd, self._headers[first], self._counts[end - first], self._zero)
            if n <= 0:
                first += 1  # this one failed (the client's port closed...): drop it, send the rest
                continue
            sent += n
            first += n
        return sent

    def source(self, i: int) -> Any:
        """Slot i's source address as `socket.recvfrom` gives it: (host, port) or (host, port, flow, scope)."""
        raw = self._names_view[i * _SOCKADDR:(i + 1) * _SOCKADDR]
        family = int.from_bytes(raw[:2], sys.byteorder)
        if family == socket.AF_INET:
            return socket.inet_ntop(socket.AF_INET, bytes(raw[4:8])), struct.unpack(">H", raw[2:4])[0]
        if family == socket.AF_INET6:
            port, flow = struct.unpack(">HI", raw[2:8])
            scope = struct.unpack("=I", raw[24:28])[0]
            return socket.inet_ntop(socket.AF_INET6, bytes(raw[8:24])), port, flow, scope
        raise OSError(f"unexpected address family {family} from recvmmsg")
