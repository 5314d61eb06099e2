"""The cluster's network-policy state in the overlay's store (the same
file directory or etcd cluster the overlay keeps its leases in), so every
node enforces policies about pods on the others.

Two kinds of entries, under the store's own place (beside the overlay's
``leases``):

- objects: NetworkPolicy and Namespace objects (Pods too) as a YAML file
  holds them, written by whoever manages policy (``pycni policy apply
  --store``, or anything writing the same keys);
- endpoints: every node's CNI registrations, one per attachment
  ``{"attachment": {...}, "endpoint": {... "node": NODE}}`` (the registry's
  own record), written by that node's controller (`StorePublisher`) and
  read by all.

File store: ``<path>/netpolicy/objects/*.yaml|json`` and
``<path>/netpolicy/endpoints/<node>/<digest>.json``.  etcd: keys
``<prefix>/netpolicy/objects/<kind>/<namespace>/<name>`` (the object's
JSON) and ``<prefix>/netpolicy/endpoints/<node>/<digest>``.

A store is a `Source` (list + watch).  A pod two nodes registered (its old
sandbox's DEL not yet done on the one it left) is their registrations
merged, as for the attachments of one pod on one node.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
from typing import Callable, Iterable
from urllib.parse import urlsplit

from .model import Endpoint, Inputs
from .parse import PolicyError, endpoint_record, parse_endpoint, parse_objects
from .sources import Attachment, DirectorySource, inputs_of, merge, merged_endpoint, poll

log = logging.getLogger("pycni.netpolicy")
OBJECT_KINDS = {"NetworkPolicy": "networkpolicies", "Namespace": "namespaces", "Pod": "pods"}


def attachment_digest(attachment: Attachment) -> str:
    return hashlib.sha256(attachment.key.encode()).hexdigest()[:32]


def _record(attachment: Attachment, endpoint: Endpoint) -> dict:
    return {"attachment": attachment.record(), "endpoint": endpoint_record(endpoint)}


def _attachment_in(text) -> Attachment | None:
    """The attachment of a registration record (None if it is not one)."""
    try:
        return Attachment.from_record(json.loads(text).get("attachment") or {})
    except (ValueError, PolicyError, AttributeError):
        return None


def _endpoints(records: Iterable[tuple[str, dict]]) -> Inputs:
    """Registration records (origin, record) -> one endpoint per pod."""
    by_pod: dict[str, list[tuple[str, Endpoint]]] = {}
    for origin, record in records:
        if not isinstance(record, dict):
            raise PolicyError(origin, ["a registration must be an object"])
        attachment = Attachment.from_record(record.get("attachment") or {})
        endpoint = parse_endpoint(record.get("endpoint"), origin)
        by_pod.setdefault(endpoint.key, []).append((f"{endpoint.node}/{attachment.key}", endpoint))
    return Inputs(endpoints=tuple(merged_endpoint([e for _, e in sorted(found)])
                                  for _, found in sorted(by_pod.items())))


class FileStore:
    """The netpolicy part of the overlay's file store (one machine: labs)."""

    def __init__(self, path: str, interval: float = 0.5):
        self.root = os.path.join(path, "netpolicy")
        self.objects_dir = os.path.join(self.root, "objects")
        self.endpoints_dir = os.path.join(self.root, "endpoints")
        self.interval = interval
        os.makedirs(self.objects_dir, exist_ok=True)
        os.makedirs(self.endpoints_dir, exist_ok=True)
        self._objects = DirectorySource(self.objects_dir)

    def _node_dir(self, node: str) -> str:
        return os.path.join(self.endpoints_dir, node)

    def _record_files(self):
        for node in sorted(os.listdir(self.endpoints_dir)):
            directory = self._node_dir(node)
            for name in sorted(os.listdir(directory)) if os.path.isdir(directory) else ():
                if name.endswith(".json"):
                    yield node, os.path.join(directory, name)

    def list(self) -> Inputs:
        records = []
        for _, path in self._record_files():
            try:
                with open(path) as f:
                    records.append((path, json.load(f)))
            except FileNotFoundError:
                continue  # removed since listed
            except ValueError as e:
                raise PolicyError(path, [f"not JSON: {e}"]) from None
        return merge([self._objects.list(), _endpoints(records)])

    def _fingerprint(self) -> list:
        """What changes when any entry does: object files' times and sizes,
        and the endpoint directories' times (records are renamed in)."""
        prints = [(path, st.st_mtime_ns, st.st_size) for path in self._objects.files()
                  for st in [os.stat(path)]]
        for directory in [self.endpoints_dir, *(self._node_dir(n) for n in sorted(os.listdir(self.endpoints_dir)))]:
            try:
                prints.append((directory, os.stat(directory).st_mtime_ns))
            except FileNotFoundError:
                continue
        return prints

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        poll(self._fingerprint, changed, stop, self.interval)

    # --- a node's registrations -----------------------------------------------------
    def publish(self, node: str, attachment: Attachment, endpoint: Endpoint | None) -> None:
        path = os.path.join(self._node_dir(node), attachment_digest(attachment) + ".json")
        if endpoint is None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            return
        os.makedirs(self._node_dir(node), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "w") as f:
            json.dump(_record(attachment, endpoint), f)
        os.replace(tmp, path)

    def published(self, node: str) -> dict[str, Attachment]:
        """Attachment key -> attachment of what ``node`` has published."""
        found = {}
        for owner, path in self._record_files():
            if owner == node:
                try:
                    with open(path) as f:
                        attachment = _attachment_in(f.read())
                except OSError:
                    continue
                if attachment is not None:
                    found[attachment.key] = attachment
        return found

    # --- objects ------------------------------------------------------------------------
    def replace_objects(self, objects: list[dict]) -> None:
        """Make the store's objects these (raw, already validated)."""
        path = os.path.join(self.objects_dir, "objects.json")
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, f)
        for name in os.listdir(self.objects_dir):
            if name != "objects.json" and not name.endswith(".tmp"):
                os.unlink(os.path.join(self.objects_dir, name))
        os.replace(tmp, path)


class EtcdStore:
    """The netpolicy part of the overlay's etcd store (etcd 3.4+, through
    its gRPC gateway with etcd3gw, as the overlay's store)."""

    def __init__(self, endpoints: list[str], prefix: str = "/pycni/overlay/default", timeout: float = 2.0,
                 refresh: float = 30.0):
        import etcd3gw

        if not endpoints:
            raise ValueError("the etcd store needs at least one endpoint")
        self.root = prefix.rstrip("/") + "/netpolicy/"
        self.refresh = refresh
        self._clients = []
        for url in endpoints:
            parts = urlsplit(url if "://" in url else "http://" + url)
            self._clients.append(etcd3gw.Etcd3Client(host=parts.hostname, port=parts.port or 2379,
                                                     protocol=parts.scheme, timeout=timeout, api_path="/v3/"))

    def _call(self, request):
        """``request(client)`` on the first member that answers."""
        from etcd3gw import exceptions

        error = None
        for client in self._clients:
            try:
                return request(client)
            except (exceptions.ConnectionFailedError, exceptions.ConnectionTimeoutError,
                    exceptions.InternalServerError) as e:
                error = e
        raise OSError(f"no etcd endpoint answered: {error}")

    def _raw(self, kind: str) -> list[tuple[str, bytes]]:
        """(key, value) of every entry under ``kind``/."""
        return [(meta["key"].decode() if isinstance(meta["key"], bytes) else meta["key"], value)
                for value, meta in self._call(lambda c: c.get_prefix(self.root + kind + "/"))]

    def _entries(self, kind: str) -> list[tuple[str, object]]:
        """(key, decoded JSON) of every entry under ``kind``/."""
        found = []
        for key, value in self._raw(kind):
            try:
                found.append((key, json.loads(value)))
            except ValueError as e:
                raise PolicyError(key, [f"not JSON: {e}"]) from None
        return found

    def list(self) -> Inputs:
        parsed = [obj for key, raw in self._entries("objects") for obj in parse_objects([raw], key)]
        return merge([inputs_of(parsed), _endpoints(self._entries("endpoints"))])

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Events as they come; and every ``refresh`` seconds a nudge anyway
        (etcd3gw's watch stream ends silently when a member goes away)."""
        events: queue.Queue = queue.Queue()

        def follow():
            while not stop.is_set():
                try:
                    iterator, cancel = self._call(lambda c: c.watch_prefix(self.root))
                except OSError:
                    stop.wait(1.0)
                    continue
                events.put(cancel)
                for _ in iterator:
                    changed()
                stop.wait(1.0)

        threading.Thread(target=follow, daemon=True, name="netpolicy-etcd-watch").start()
        while not stop.wait(self.refresh):
            changed()
        while not events.empty():
            events.get()()

    def publish(self, node: str, attachment: Attachment, endpoint: Endpoint | None) -> None:
        key = f"{self.root}endpoints/{node}/{attachment_digest(attachment)}"
        if endpoint is None:
            self._call(lambda c: c.delete(key))
        else:
            self._call(lambda c: c.put(key, json.dumps(_record(attachment, endpoint))))

    def published(self, node: str) -> dict[str, Attachment]:
        found = (_attachment_in(value) for value, _ in self._call(
            lambda c: c.get_prefix(f"{self.root}endpoints/{node}/")))
        return {a.key: a for a in found if a is not None}

    def replace_objects(self, objects: list[dict]) -> None:
        wanted = {}
        for obj in objects:
            meta = obj.get("metadata") or {}
            kind = OBJECT_KINDS[obj["kind"]]
            namespace = meta.get("namespace") or ("default" if obj["kind"] != "Namespace" else "_")
            wanted[f"{self.root}objects/{kind}/{namespace}/{meta['name']}"] = json.dumps(obj)
        for key in {key for key, _ in self._raw("objects")} - set(wanted):
            self._call(lambda c: c.delete(key))
        for key, value in wanted.items():
            self._call(lambda c: c.put(key, value))


def open_store(kind: str, path: str | None = None, endpoints: list[str] | None = None,
               prefix: str = "/pycni/overlay/default"):
    """The store the overlay is configured with: ``file`` (``path``, the
    overlay's store_path) or ``etcd`` (``endpoints``, ``prefix``: the
    overlay's etcd_endpoints and etcd_prefix)."""
    if kind == "file":
        return FileStore(path)
    if kind == "etcd":
        return EtcdStore(endpoints or [], prefix)
    raise ValueError(f"unknown store {kind!r} (file or etcd)")


class StorePublisher:
    """Copies this node's registrations into the store, in the background:
    a registration is enforced here before ADD returns, and other nodes
    learn of the pod a moment later (meanwhile their policies treat it as
    an unknown address: denied where a policy isolates).  Failed writes
    are retried; the latest state of each attachment wins."""

    def __init__(self, store, node: str, retry: float = 1.0):
        self.store, self.node, self.retry = store, node, retry
        self._pending: dict[str, tuple[Attachment, Endpoint | None]] = {}
        self._lock = threading.Condition()
        self._stopped = False
        self._busy = False
        self._thread = threading.Thread(target=self._run, daemon=True, name="netpolicy-publish")
        self._thread.start()

    def __call__(self, attachment: Attachment, endpoint: Endpoint | None) -> None:
        with self._lock:
            self._pending[attachment.key] = (attachment, endpoint)
            self._lock.notify_all()

    def sync(self, registered: dict[str, tuple[Attachment, Endpoint]]) -> None:
        """Make what the store holds for this node ``registered``
        (attachment key -> (attachment, endpoint)): at start, after
        changes made while the controller was down."""
        for key, attachment in self.store.published(self.node).items():
            if key not in registered:
                self(attachment, None)
        for attachment, endpoint in registered.values():
            self(attachment, endpoint)

    def flush(self, timeout: float = 30.0) -> bool:
        """Wait until everything queued is written; False on timeout."""
        with self._lock:
            return self._lock.wait_for(lambda: not self._pending and not self._busy, timeout)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        self._thread.join()

    def _run(self) -> None:
        while True:
            with self._lock:
                self._lock.wait_for(lambda: self._pending or self._stopped)
                if self._stopped:
                    return
                key = next(iter(self._pending))
                attachment, endpoint = self._pending.pop(key)
                self._busy = True
            try:
                self.store.publish(self.node, attachment, endpoint)
                failed = False
            except (OSError, ValueError) as e:
                log.warning("netpolicy: publishing %s to the store failed (retrying): %s", attachment.key, e)
                failed = True
            with self._lock:
                self._busy = False
                if failed:
                    self._pending.setdefault(key, (attachment, endpoint))
                self._lock.notify_all()
            if failed:
                with self._lock:
                    self._lock.wait(self.retry)
