"""Network namespaces: opening one by path, entering it from the current
thread, and net.* sysctls.

setns(2) moves only the calling thread, so a netlink socket opened while
inside stays bound to that namespace after we switch back; files under
/proc/sys/net opened while inside belong to that namespace too.
"""
import errno
import os
from contextlib import contextmanager

from .errors import HostNetnsError, NetnsError

CLONE_NEWNET = 0x40000000
NS_GET_NSTYPE = 0xB703   # ioctl on an nsfs file: the namespace's CLONE_NEW* type
_libc = None


def _ctypes_libc():
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
    return _libc


def _setns(fd: int) -> None:
    if hasattr(os, "setns"):  # Python 3.12+
        os.setns(fd, CLONE_NEWNET)
        return
    if _ctypes_libc().setns(fd, CLONE_NEWNET) != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def _is_netns(fd: int) -> bool:
    import fcntl

    try:
        return fcntl.ioctl(fd, NS_GET_NSTYPE) == CLONE_NEWNET
    except OSError:
        return False  # not an nsfs file at all (a regular file, a directory)


def current_inode() -> int:
    """The network namespace this thread runs in (threads may differ)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


def open_netns(path: str) -> int:
    """An fd of the network namespace at ``path`` (a bind mount such as
    /run/netns/NAME or /proc/PID/ns/net).  NetnsError when the path is
    missing (errno ENOENT), unreadable, not a network namespace, or the
    caller's own namespace (a container never shares the host's)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NetnsError(errno.ENOENT, f"network namespace {path!r} does not exist") from None
    except OSError as e:
        raise NetnsError(e.errno, f"cannot open network namespace {path!r}: {e.strerror}") from None
    try:
        if not _is_netns(fd):
            raise NetnsError(errno.EINVAL, f"{path!r} is not a network namespace")
        if os.fstat(fd).st_ino == current_inode():
            raise HostNetnsError(errno.EINVAL, f"{path!r} is the host's own network namespace")
    except BaseException:
        os.close(fd)
        raise
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


def netlink_in(fd: int, protocol: int = 0):
    """A netlink socket bound to the namespace behind ``fd``."""
    from .netlink import Netlink

    with entered(fd):
        return Netlink(protocol)


def write_sysctl(key: str, value: str) -> None:
    """Write net.* sysctl `key` (dotted, e.g. net.ipv4.ip_forward) in the
    current thread's netns."""
    path = "/proc/sys/" + key.replace(".", "/")
    with open(path, "w") as f:
        f.write(value)


def read_sysctl(key: str) -> str:
    with open("/proc/sys/" + key.replace(".", "/")) as f:
        return f.read().strip()
