"""An in-memory ipam Store, as the reference keeps a fake beside its disk
store: the allocator's logic is tested with it, no disk and no root."""
import threading

from ipam.store import Store


class MemoryStore(Store):
    def __init__(self, reservations: dict | None = None):
        self.held = dict(reservations or {})   # address -> owner
        self.last = {}                          # range set index -> address
        self._lock = threading.Lock()
        self.locked = False

    def __enter__(self):
        self._lock.acquire()
        self.locked = True
        return self

    def __exit__(self, *exc):
        self.locked = False
        self._lock.release()

    def reserve(self, addr, owner: str) -> bool:
        assert self.locked, "reserve outside the lock"
        if addr in self.held:
            return False
        self.held[addr] = owner
        return True

    def remove(self, addr) -> None:
        assert self.locked, "remove outside the lock"
        self.held.pop(addr, None)

    def owner(self, addr) -> str | None:
        return self.held.get(addr)

    def reservations(self) -> dict:
        return dict(self.held)

    def last_reserved(self, range_id: int):
        return self.last.get(range_id)

    def set_last_reserved(self, range_id: int, addr) -> None:
        self.last[range_id] = addr

    def ensure_ready(self) -> None:
        pass
