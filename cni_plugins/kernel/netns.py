"""Entering network namespaces from the current thread.

setns(2) moves only the calling thread, so a netlink socket opened while
inside stays bound to that namespace after we switch back; files under
/proc/sys/net opened while inside belong to that namespace too.
"""
import os
from contextlib import contextmanager

from ..core.errors import CNIError, INVALID_ENV

CLONE_NEWNET = 0x40000000
_libc = None


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def open_netns(path: str, code: int = INVALID_ENV) -> int:
    """Open a netns path, turning 'no such netns' into a CNI error."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise CNIError(code, f"network namespace {path!r} does not exist") from None
    except OSError as e:
        raise CNIError(code, f"cannot open network namespace {path!r}: {e.strerror}") from None
    if os.fstat(fd).st_ino == os.stat("/proc/thread-self/ns/net").st_ino:
        os.close(fd)
        raise CNIError(INVALID_ENV, f"{path!r} is the host's own network namespace")
    return fd


@contextmanager
def entered(fd: int):
    """Run the body inside the namespace behind ``fd``, then come back."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        _setns(fd)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def write_sysctl(key: str, value: str) -> None:
    """Write net.* sysctl `key` (dotted, e.g. net.ipv4.ip_forward) in the
    current thread's netns."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path, "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()
