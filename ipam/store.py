"""The reference host-local on-disk store, byte for byte (standard library only).

``<dataDir>/<network>/`` holds one file per reserved address, named by the
address (Python's compressed form equals Go's net.IP.String()) and holding
``<containerID>\\r\\n<ifname>``; ``last_reserved_ip.<N>`` holds the address
last handed out from range set N; ``lock`` is flock()ed exclusively around
every change, so this store and the Go plugin can share one directory.
"""
import errno
import fcntl
import ipaddress
import os

LAST_IP_PREFIX = "last_reserved_ip."
LINE_BREAK = "\r\n"
LOCK_NAME = "lock"


def address_of(filename: str):
    """The address a reservation file stands for, or None for other files."""
    if "." not in filename and ":" not in filename:
        return None
    try:
        return ipaddress.ip_address(filename)
    except ValueError:
        return None


def owner_key(container_id: str, ifname: str) -> str:
    return container_id.strip() + LINE_BREAK + ifname


class Store:
    def __init__(self, data_dir: str, network: str):
        self.dir = os.path.join(data_dir, network)
        self._lock_fd = None

    # -- locking ----------------------------------------------------------
    def ensure_dir(self) -> None:
        os.makedirs(self.dir, mode=0o755, exist_ok=True)

    def __enter__(self):
        self.ensure_dir()
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

    # -- reservations (call with the lock held) ----------------------------
    def path(self, addr) -> str:
        return os.path.join(self.dir, str(addr))

    def reserve(self, addr, container_id: str, ifname: str) -> bool:
        """Create the reservation file; False if the address is taken."""
        try:
            fd = os.open(self.path(addr), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        except FileExistsError:
            return False
        try:
            with os.fdopen(fd, "w", newline="") as f:
                f.write(owner_key(container_id, ifname))
        except BaseException:
            self.remove(addr)
            raise
        return True

    def remove(self, addr) -> None:
        try:
            os.unlink(self.path(addr))
        except FileNotFoundError:
            pass

    def last_reserved(self, range_index: int):
        try:
            with open(os.path.join(self.dir, f"{LAST_IP_PREFIX}{range_index}")) as f:
                return address_of(f.read().strip())
        except OSError:
            return None

    def set_last_reserved(self, range_index: int, addr) -> None:
        with open(os.path.join(self.dir, f"{LAST_IP_PREFIX}{range_index}"), "w") as f:
            f.write(str(addr))

    # -- lock-free reads ----------------------------------------------------
    def read_owner(self, addr) -> str | None:
        """The stripped content of a reservation file, None if it is gone."""
        try:
            with open(self.path(addr), newline="") as f:
                return f.read().strip()
        except OSError as e:
            if e.errno in (errno.ENOENT, errno.EISDIR, errno.ENOTDIR):
                return None
            raise

    def reservations(self) -> dict:
        """{address: owner text} for every reservation file (no lock taken;
        files may come and go meanwhile, callers re-verify under the lock)."""
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return {}
        out = {}
        for name in names:
            addr = address_of(name)
            if addr is None or str(addr) != name:
                continue
            owner = self.read_owner(addr)
            if owner is not None:
                out[addr] = owner
        return out

    def find(self, container_id: str, ifname: str, reservations: dict | None = None) -> list:
        """Addresses held by this attachment: files holding id + ifname, or,
        as the reference, if there are none, files holding only the id (the
        format before ifname was recorded)."""
        if reservations is None:
            reservations = self.reservations()
        key = owner_key(container_id, ifname)
        found = [a for a, owner in reservations.items() if owner == key]
        if not found:
            old = container_id.strip()
            found = [a for a, owner in reservations.items() if owner == old]
        return found

    def release_if_owned(self, candidates: dict) -> list:
        """With the lock held: remove each {address: owner} candidate whose
        file still holds that owner.  Returns the addresses removed."""
        released = []
        for addr, owner in candidates.items():
            if self.read_owner(addr) == owner:
                self.remove(addr)
                released.append(addr)
        return released
