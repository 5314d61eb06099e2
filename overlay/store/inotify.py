"""Linux inotify through ctypes: the file store's change notification.

Chosen over polling with stat(): a watcher wakes within microseconds of
another agent's link, rename or unlink and costs nothing while nothing changes,
so fifty agents watching one directory neither burn CPU nor wait out a
poll interval.  Network namespaces share the filesystem, so it serves lab
hosts too.
"""
import ctypes
import os
import struct

IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_Q_OVERFLOW = 0x00004000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len
_libc = ctypes.CDLL(None, use_errno=True)


class Inotify:
    def __init__(self, path: str, mask: int):
        self.fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        if _libc.inotify_add_watch(self.fd, os.fsencode(path), mask) < 0:
            err = ctypes.get_errno()
            os.close(self.fd)
            raise OSError(err, f"inotify_add_watch {path}")

    def fileno(self) -> int:
        return self.fd

    def read(self) -> list[tuple[int, str]]:
        """(mask, name) of every queued event; [] when none are queued."""
        events = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return events
            offset = 0
            while offset < len(data):
                _, mask, _, length = _HEADER.unpack_from(data, offset)
                offset += _HEADER.size
                name = data[offset:offset + length].rstrip(b"\0").decode(errors="replace")
                offset += length
                events.append((mask, name))

    def close(self) -> None:
        os.close(self.fd)
