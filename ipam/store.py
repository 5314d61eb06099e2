"""Where host-local keeps its reservations: the interface the allocator is
written against, and the reference plugin's on-disk store behind it.

The interface is the reference's ``backend.Store`` in Python terms: an
exclusive lock (the store is a context manager), reserve/remove/owner of
one address, every reservation (readable without the lock: callers
re-verify under it), and the last address handed out per range set.  An
owner is the text the reference writes, ``<containerID>\\r\\n<ifname>``
(``owner_key``).  tests/ipam_memory_store.py is an in-memory one.

``DiskStore`` is the reference layout byte for byte (standard library
only): ``<dataDir>/<network>/`` holds one file per reserved address, named
by the address (Python's compressed form equals Go's net.IP.String()) and
holding the owner; ``last_reserved_ip.<N>`` holds the address last handed
out from range set N; ``lock`` is flock()ed exclusively around every
change, so this store and the Go plugin can share one directory.
"""
import errno
import fcntl
import ipaddress
import os

from cni_plugins.core.records import create_atomic

LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"
LOCK_NAME = "lock"


def owner_key(container_id: str, ifname: str) -> str:
    return container_id.strip() + LINE_BREAK + ifname


class Store:
    """What the allocator needs of a reservation store."""

    def __enter__(self):
        """Take the store's exclusive lock (changes happen under it)."""
        raise NotImplementedError

    def __exit__(self, *exc):
        raise NotImplementedError

    def reserve(self, addr, owner: str) -> bool:
        """Reserve ``addr`` for ``owner``; False if it is taken."""
        raise NotImplementedError

    def remove(self, addr) -> None:
        """Forget the reservation of ``addr`` (absent is fine)."""
        raise NotImplementedError

    def owner(self, addr) -> str | None:
        """The owner of ``addr`` (stripped), None if it is free."""
        raise NotImplementedError

    def reservations(self) -> dict:
        """{address: owner} of every reservation."""
        raise NotImplementedError

    def last_reserved(self, range_id: int):
        """The address last handed out from range set ``range_id``, or None."""
        raise NotImplementedError

    def set_last_reserved(self, range_id: int, addr) -> None:
        raise NotImplementedError

    def ensure_ready(self) -> None:
        """Raise OSError when the store cannot take reservations (STATUS)."""
        raise NotImplementedError


def address_of(filename: str):
    """The address a reservation file stands for, or None for other files."""
    if "." not in filename and ":" not in filename:
        return None
    try:
        return ipaddress.ip_address(filename)
    except ValueError:
        return None


class DiskStore(Store):
    def __init__(self, data_dir: str, network: str):
        self.dir = os.path.join(data_dir, network)
        self._lock_fd = None

    def ensure_ready(self) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        if not os.access(self.dir, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, f"{self.dir} is not writable")

    def __enter__(self):
        os.makedirs(self.dir, mode=0o755, exist_ok=True)
        fd = os.open(os.path.join(self.dir, LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._lock_fd = fd
        return self

    def __exit__(self, *exc):
        fd, self._lock_fd = self._lock_fd, None
        os.close(fd)  # closing drops the flock

    def _path(self, addr) -> str:
        return os.path.join(self.dir, str(addr))

    def reserve(self, addr, owner: str) -> bool:
        # never an empty file, even from a plugin killed half-way: it would
        # name no owner, and no DEL would ever release the address
        return create_atomic(self._path(addr), owner.encode())

    def remove(self, addr) -> None:
        try:
            os.unlink(self._path(addr))
        except FileNotFoundError:
            pass

    def owner(self, addr) -> str | None:
        try:
            with open(self._path(addr), newline="") as f:
                return f.read().strip()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
                return None
            raise

    def reservations(self) -> dict:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            addr = address_of(name)
            if addr is None or str(addr) != name:
                continue
            owner = self.owner(addr)
            if owner is not None:
                out[addr] = owner
        return out

    def last_reserved(self, range_id: int):
        try:
            with open(os.path.join(self.dir, f"{LAST_IP_PREFIX}{range_id}")) as f:
                return address_of(f.read().strip())
        except OSError:
            return None

    def set_last_reserved(self, range_id: int, addr) -> None:
        with open(os.path.join(self.dir, f"{LAST_IP_PREFIX}{range_id}"), "w") as f:
            f.write(str(addr))
