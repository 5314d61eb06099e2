"""Leases in etcd v3 (3.4 and later), through etcd3gw.

etcd3gw speaks the JSON of etcd's gRPC gateway over HTTP (requests): pure
Python, thread-friendly blocking calls, no grpcio wheel or generated stubs,
maintained by OpenStack, and it talks to Debian's etcd-server 3.4 as is.
We use it for requests and transactions; the watch stream is read here
(`EtcdWatch`) because etcd3gw's own watcher drops a broken stream silently
in a worker thread, and a resumable watch must see that to reconnect.

Layout: ``<prefix>/leases/<subnet key>`` -> the lease's JSON, attached to
an etcd lease whose TTL is the lease's; etcd deletes the key when it runs
out, and every watcher sees the DELETE.  Creation is a transaction
"create_revision == 0" (create only if absent); changes compare the key's
mod revision (compare and swap).  Several endpoints: a call that cannot
reach one member moves on to the next.
"""
import base64
import json
import logging
import os
import socket
import threading
import time
from typing import Callable, Iterator
from urllib.parse import urlsplit

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors

from ..lease import Lease, LeaseRequest
from ..network import Network
from .base import (LeaseEvent, LeaseLost, LeaseStore, LeaseWatch, StoreUnavailable, WatchBatch,
                   own_lease)

log = logging.getLogger(__name__)

UNREACHABLE = (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
               etcd_errors.InternalServerError)
ACQUIRE_ATTEMPTS = 8
RECONNECT_DELAY = (0.05, 2.0)   # first and longest wait after every endpoint failed
ELECTION_GRACE = 5.0            # how long requests go round the members before the store is unavailable


def _b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def _range_end(prefix: str) -> str:
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdStore(LeaseStore):
    def __init__(self, network: Network, endpoints: list[str], prefix: str = "/pycni/overlay/default",
                 timeout: float = 2.0):
        super().__init__(network)
        if not endpoints:
            raise ValueError("etcd store needs at least one endpoint")
        self.endpoints = list(endpoints)
        self.prefix = prefix.rstrip("/") + "/leases/"
        self.timeout = timeout
        self._clients = [self._client(url) for url in self.endpoints]
        self._current = 0
        self._lock = threading.Lock()  # one request at a time through our clients' sessions

    def _client(self, url: str) -> etcd3gw.Etcd3Client:
        parts = urlsplit(url if "://" in url else "http://" + url)
        return etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379, protocol=parts.scheme,
                                   timeout=self.timeout, api_path="/v3/")

    def call(self, request: Callable[[etcd3gw.Etcd3Client], object]):
        """Run a request on the endpoint that answered last, moving on to
        the next one while a member is unreachable.  When none answers,
        go round again for up to ELECTION_GRACE seconds: a cluster that just
        lost its leader answers nothing until it has elected another."""
        deadline = time.monotonic() + ELECTION_GRACE
        delay = RECONNECT_DELAY[0]
        with self._lock:
            while True:
                for _ in range(len(self._clients)):
                    client = self._clients[self._current]
                    try:
                        return request(client)
                    except UNREACHABLE as e:
                        log.debug("etcd %s: %s", self.endpoints[self._current], e)
                        self._current = (self._current + 1) % len(self._clients)
                if time.monotonic() + delay > deadline:
                    raise StoreUnavailable(f"no etcd endpoint answered: {', '.join(self.endpoints)}")
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])

    def url(self, path: str) -> str:
        """A gateway URL on the endpoint that answered last (for the watch)."""
        return self._clients[self._current].get_url(path)

    def next_endpoint(self) -> None:
        with self._lock:
            self._current = (self._current + 1) % len(self._clients)

    # --- requests ---------------------------------------------------------------------
    def _post(self, path: str, body: dict) -> dict:
        return self.call(lambda client: client.post(client.get_url(path), json=body))

    def _txn(self, compare: list, success: list) -> tuple[bool, int]:
        result = self._post("/kv/txn", {"compare": compare, "success": success, "failure": []})
        return bool(result.get("succeeded")), int(result["header"]["revision"])

    def _key(self, key: str) -> str:
        return self.prefix + key

    def decode(self, kv: dict) -> Lease | None:
        try:
            lease = Lease.from_json(json.loads(base64.b64decode(kv["value"])),
                                    revision=int(kv["mod_revision"]), store_id=int(kv.get("lease", 0)))
        except (KeyError, TypeError, ValueError) as e:
            log.warning("skipping malformed lease %s: %s", kv.get("key"), e)
            return None
        return lease if self._key(lease.key) == base64.b64decode(kv["key"]).decode() else None

    def _value(self, lease: Lease) -> str:
        record = lease.to_json()
        del record["expires"]  # etcd holds the TTL
        return _b64(json.dumps(record))

    def _grant(self, ttl: int) -> int:
        return int(self._post("/lease/grant", {"TTL": ttl, "ID": 0})["ID"])

    def _keepalive(self, store_id: int) -> int:
        """Seconds left after a refresh; 0 when the etcd lease is gone."""
        if not store_id:
            return 0
        result = self._post("/lease/keepalive", {"ID": store_id}).get("result", {})
        return max(0, int(result.get("TTL", 0)))

    def _revoke(self, store_id: int) -> None:
        try:
            self._post("/kv/lease/revoke", {"ID": store_id})
        except etcd_errors.Etcd3Exception as e:  # already gone
            log.debug("revoke %s: %s", store_id, e)

    def _create(self, lease: Lease, store_id: int) -> Lease | None:
        key = _b64(self._key(lease.key))
        ok, revision = self._txn(
            [{"key": key, "target": "CREATE", "result": "EQUAL", "create_revision": 0}],
            [{"request_put": {"key": key, "value": self._value(lease), "lease": store_id}}])
        return lease.replace(revision=revision, store_id=store_id) if ok else None

    def _swap(self, lease: Lease, seen_revision: int) -> Lease | None:
        key = _b64(self._key(lease.key))
        ok, revision = self._txn(
            [{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": seen_revision}],
            [{"request_put": {"key": key, "value": self._value(lease), "lease": lease.store_id}}])
        return lease.replace(revision=revision) if ok else None

    def _get(self, key: str) -> Lease | None:
        kvs = self._post("/kv/range", {"key": _b64(self._key(key))}).get("kvs", [])
        return self.decode(kvs[0]) if kvs else None

    # --- the interface ----------------------------------------------------------------
    def list(self) -> tuple[list[Lease], int]:
        result = self._post("/kv/range", {"key": _b64(self.prefix), "range_end": _b64(_range_end(self.prefix))})
        leases = [lease for kv in result.get("kvs", []) if (lease := self.decode(kv))]
        return leases, int(result["header"]["revision"])

    def acquire(self, request: LeaseRequest) -> Lease:
        store_id = 0
        try:
            for _ in range(ACQUIRE_ATTEMPTS):
                leases, _ = self.list()
                mine = own_lease(leases, request.node)
                if mine:
                    adopted = self._adopt(mine, request)
                    if adopted:
                        return adopted
                    continue
                store_id = store_id or self._grant(request.ttl)
                for slot in self.candidate_slots(request, (lease.key for lease in leases)):
                    created = self._create(self.lease_for(request, slot, 0.0), store_id)
                    if created:
                        store_id = 0  # in use now: keep it
                        return created.replace(expires=time.time() + request.ttl)
                raise self.no_free_subnet()
            raise StoreUnavailable("etcd: leases changed under every attempt to acquire one")
        finally:
            if store_id:
                self._revoke(store_id)

    def _adopt(self, mine: Lease, request: LeaseRequest) -> Lease | None:
        """Our node's lease is still live (an agent restart): keep it and its
        etcd lease, publishing the request's attributes if they changed."""
        left = self._keepalive(mine.store_id)
        if not left:
            return None
        wanted = mine.replace(public_ip=request.public_ip, vtep_mac=request.vtep_mac, ttl=request.ttl)
        if not wanted.same_published(mine):
            wanted = self._swap(wanted, mine.revision)
        return wanted.replace(expires=time.time() + left) if wanted else None

    def renew(self, lease: Lease) -> Lease:
        left = self._keepalive(lease.store_id)
        current = self._get(lease.key)
        if current and current.node != lease.node:
            raise LeaseLost(f"{lease.key} is now leased to {current.node}")
        if left and current:
            renewed = lease.replace(store_id=current.store_id, revision=current.revision)
            if not lease.same_published(current):
                renewed = self._swap(renewed, current.revision)
                if renewed is None:
                    raise LeaseLost(f"{lease.key} changed under us")
            return renewed.replace(expires=time.time() + left)
        # Expired meanwhile (the store was out of reach longer than the TTL):
        # take the same subnet again if nobody else has.
        store_id = self._grant(lease.ttl)
        created = self._create(lease, store_id)
        if created is None:
            self._revoke(store_id)
            raise LeaseLost(f"{lease.key} was taken while our lease was expired")
        log.info("lease %s had expired; acquired it again", lease.key)
        return created.replace(expires=time.time() + lease.ttl)

    def release(self, lease: Lease) -> None:
        current = self._get(lease.key)
        if current and current.node == lease.node:
            key = _b64(self._key(lease.key))
            self._txn([{"key": key, "target": "MOD", "result": "EQUAL", "mod_revision": current.revision}],
                      [{"request_delete_range": {"key": key}}])
            self._revoke(current.store_id)

    def watch(self, since: int | None = None) -> LeaseWatch:
        return EtcdWatch(self, since)


class EtcdWatch(LeaseWatch):
    """A watch stream that resumes after the last revision it delivered,
    on the next endpoint when a member goes away; a reset when etcd has
    compacted that history away."""

    def __init__(self, store: EtcdStore, since: int | None):
        self.store = store
        self.revision = since
        self._closed = threading.Event()
        self._response: requests.Response | None = None
        self._lock = threading.Lock()

    def __iter__(self) -> Iterator[WatchBatch]:
        delay = RECONNECT_DELAY[0]
        while not self._closed.is_set():
            try:
                if self.revision is None:
                    yield self._reset()
                for batch in self._stream():
                    delay = RECONNECT_DELAY[0]
                    yield batch
            except (StoreUnavailable, requests.RequestException, ValueError, KeyError) as e:
                log.info("etcd watch interrupted (%s); resuming after revision %s", e, self.revision)
            if not self._closed.is_set():
                self.store.next_endpoint()
                self._closed.wait(delay)
                delay = min(delay * 2, RECONNECT_DELAY[1])

    def _reset(self) -> WatchBatch:
        leases, self.revision = self.store.list()
        return WatchBatch(tuple(LeaseEvent(lease.key, lease) for lease in leases), reset=True,
                          revision=self.revision)

    def _stream(self) -> Iterator[WatchBatch]:
        prefix = self.store.prefix
        body = {"create_request": {"key": _b64(prefix), "range_end": _b64(_range_end(prefix)),
                                   "start_revision": self.revision + 1}}
        response = requests.post(self.store.url("/watch"), json=body, stream=True,
                                 timeout=(self.store.timeout, None))
        with self._lock:
            self._response = response
        if self._closed.is_set():
            self._shutdown()
        response.raise_for_status()
        buffered = b""
        for chunk in response.iter_content(chunk_size=None):
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in filter(None, (line.strip() for line in lines)):
                batch = self._batch(json.loads(line))
                if batch:
                    yield batch

    def _batch(self, message: dict) -> WatchBatch | None:
        if "error" in message:
            raise ValueError(f"watch error: {message['error']}")
        result = message["result"]
        if int(result.get("compact_revision", 0)):
            log.info("etcd compacted past revision %s: listing again", self.revision)
            return self._reset()
        if result.get("canceled"):
            raise ValueError(f"watch canceled: {result.get('cancel_reason', '')}")
        events = []
        for event in result.get("events", []):
            kv = event["kv"]
            key = base64.b64decode(kv["key"]).decode()[len(self.store.prefix):]
            lease = None if event.get("type") == "DELETE" else self.store.decode(kv)
            events.append(LeaseEvent(key, lease))
            self.revision = int(kv["mod_revision"])
        return WatchBatch(tuple(events), revision=self.revision) if events else None

    def _shutdown(self) -> None:
        with self._lock:
            response = self._response
        if response is None:
            return
        try:  # unblock the reader at once, whatever thread it is in
            fd = response.raw._fp.fileno()
            sock = socket.socket(fileno=os.dup(fd))
            sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        except (AttributeError, OSError, ValueError):
            pass
        response.close()

    def close(self) -> None:
        self._closed.set()
        self._shutdown()
