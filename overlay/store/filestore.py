"""The embedded lease store: a directory, no server.

    <path>/lock             flock'ed around every read-modify-write
    <path>/leases/<key>.json one lease per file, replaced atomically
                            (core.records.write_atomic; its temporary
                            file's name does not end in .json, so
                            listings and watchers pass it by)

It serves the agents of one machine, including lab hosts that are network
namespaces sharing the filesystem.  Expiry needs no daemon: a lease past its
``expires`` counts as absent, watchers report it gone when its time comes,
and the next acquire removes the file.  A file that cannot be read as a
lease (torn by a power cut, foreign) is skipped.
"""
import fcntl
import json
import os
import select
import threading
import time
from contextlib import contextmanager
from typing import Iterator

from cni_plugins.core.records import write_atomic

from ..lease import Lease, LeaseRequest
from ..network import Network
from .base import LeaseEvent, LeaseLost, LeaseStore, LeaseWatch, WatchBatch, own_lease
from .inotify import IN_CREATE, IN_DELETE, IN_MOVED_TO, IN_Q_OVERFLOW, Inotify

SUFFIX = ".json"


class FileStore(LeaseStore):
    def __init__(self, network: Network, path: str):
        super().__init__(network)
        self.path = path
        self.leases_dir = os.path.join(path, "leases")
        os.makedirs(self.leases_dir, exist_ok=True)

    # --- the interface -----------------------------------------------------------
    def acquire(self, request: LeaseRequest) -> Lease:
        with self._locked():
            now = time.time()
            live = self._collect_garbage(now)
            mine = own_lease(live.values(), request.node)
            if mine:
                return self._write(mine.replace(public_ip=request.public_ip, vtep_mac=request.vtep_mac,
                                                ttl=request.ttl, expires=now + request.ttl))
            for slot in self.candidate_slots(request, live):
                return self._write(self.lease_for(request, slot, now + request.ttl))
            raise self.no_free_subnet()

    def renew(self, lease: Lease) -> Lease:
        with self._locked():
            now = time.time()
            current = self.read(lease.key)
            if current and not current.expired(now) and current.node != lease.node:
                raise LeaseLost(f"{lease.key} is now leased to {current.node}")
            return self._write(lease.replace(expires=now + lease.ttl))

    def release(self, lease: Lease) -> None:
        with self._locked():
            current = self.read(lease.key)
            if current and current.node == lease.node:
                os.unlink(self._file(lease.key))

    def list(self) -> tuple[list[Lease], int]:
        now = time.time()
        return [lease for lease in self.read_all().values() if not lease.expired(now)], 0

    def watch(self, since: int | None = None) -> LeaseWatch:
        return FileWatch(self)

    # --- files -------------------------------------------------------------------
    def _file(self, key: str) -> str:
        return os.path.join(self.leases_dir, key + SUFFIX)

    def read(self, key: str) -> Lease | None:
        """The lease in a file, None when absent or unreadable (torn,
        foreign, not named after its own subnet)."""
        try:
            with open(self._file(key)) as f:
                lease = Lease.from_json(json.load(f))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None
        return lease if lease.key == key else None

    def read_all(self) -> dict[str, Lease]:
        leases = {}
        for name in os.listdir(self.leases_dir):
            if name.endswith(SUFFIX) and (lease := self.read(name[:-len(SUFFIX)])):
                leases[lease.key] = lease
        return leases

    def _collect_garbage(self, now: float) -> dict[str, Lease]:
        live = {}
        for key, lease in self.read_all().items():
            if lease.expired(now):
                os.unlink(self._file(key))
            else:
                live[key] = lease
        return live

    def _write(self, lease: Lease) -> Lease:
        write_atomic(self._file(lease.key), json.dumps(lease.to_json()).encode())
        return lease

    @contextmanager
    def _locked(self):
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)


class FileWatch(LeaseWatch):
    """Inotify on the leases directory; only the files named by an event
    are read again.  Wakes also when the earliest known lease expires."""

    def __init__(self, store: FileStore):
        self.store = store
        # Watch before the first scan: nothing changed in between is missed.
        # write_atomic links a new file complete under its name (IN_CREATE)
        # and renames a complete replacement over an old one (IN_MOVED_TO).
        self.inotify = Inotify(store.leases_dir, IN_CREATE | IN_MOVED_TO | IN_DELETE)
        self.stop_r, self.stop_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._running = self._closed = False

    def __iter__(self) -> Iterator[WatchBatch]:
        with self._lock:
            if self._closed:
                return
            self._running = True
        try:
            known = {lease.key: lease for lease in self.store.list()[0]}
            yield WatchBatch(tuple(LeaseEvent(k, v) for k, v in known.items()), reset=True)
            while self._wait(known):
                changed = self.inotify.read()
                if any(mask & IN_Q_OVERFLOW for mask, _ in changed):
                    keys = set(known) | set(self.store.read_all())
                else:
                    keys = {name[:-len(SUFFIX)] for _, name in changed if name.endswith(SUFFIX)}
                events = self._changes(known, keys, time.time())
                if events:
                    yield WatchBatch(tuple(events))
        finally:
            with self._lock:
                self._closed = True
                self._release()

    def _release(self) -> None:
        self.inotify.close()
        os.close(self.stop_r)
        os.close(self.stop_w)

    def _wait(self, known: dict[str, Lease]) -> bool:
        """Block until a change, the next expiry or close(); False on close."""
        timeout = None
        if known:
            timeout = max(0.0, min(lease.expires for lease in known.values()) - time.time())
        ready, _, _ = select.select([self.inotify, self.stop_r], [], [], timeout)
        return self.stop_r not in ready

    def _changes(self, known: dict[str, Lease], keys: set[str], now: float) -> list[LeaseEvent]:
        events = []
        for key in keys:
            lease = self.store.read(key)
            if lease and lease.expired(now):
                lease = None
            if lease is None:
                if known.pop(key, None):
                    events.append(LeaseEvent(key, None))
            else:
                if not lease.same_published(known.get(key)):
                    events.append(LeaseEvent(key, lease))
                known[key] = lease  # a renewal only moves the expiry: no event
        for key in [k for k, lease in known.items() if lease.expired(now)]:
            del known[key]
            events.append(LeaseEvent(key, None))
        return events

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._running:
                os.write(self.stop_w, b"x")  # the iterator releases the descriptors
            else:
                self._release()
