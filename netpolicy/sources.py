"""Where policies, namespaces and endpoints come from.

A source has ``list()`` (everything it holds now, as Inputs, or
PolicyError if any object is invalid) and ``watch(changed, stop)`` (block
until ``stop`` is set, calling ``changed()`` whenever ``list()`` may
answer differently).  Here: a directory of YAML/JSON files, and the
registry the CNI plugin fills through the policy controller; store.py
holds the cluster's (the overlay's file or etcd store).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from .model import Endpoint, Inputs, Namespace, Policy
from .parse import PolicyError, endpoint_record, load_text, parse_endpoint

SUFFIXES = (".yaml", ".yml", ".json")


class Source(Protocol):
    def list(self) -> Inputs: ...

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None: ...


def _unique(objects, kind: str) -> tuple:
    seen: dict[str, object] = {}
    for obj in objects:
        key = obj.name if isinstance(obj, Namespace) else obj.key
        if key in seen:
            raise PolicyError(obj.origin, [f"{kind} {key} is also defined at {seen[key].origin}"])
        seen[key] = obj
    return tuple(seen.values())


def inputs_of(objects) -> Inputs:
    """Model objects -> Inputs; the same object twice is an error."""
    return Inputs(
        policies=_unique([o for o in objects if isinstance(o, Policy)], "NetworkPolicy"),
        namespaces=_unique([o for o in objects if isinstance(o, Namespace)], "Namespace"),
        endpoints=_unique([o for o in objects if isinstance(o, Endpoint)], "Pod"),
    )


def merge(all_inputs: list[Inputs]) -> Inputs:
    """Several sources' inputs as one; for the same key a later source wins
    (so the live registry overrides static files)."""
    policies, namespaces, endpoints = {}, {}, {}
    for inputs in all_inputs:
        policies.update((p.key, p) for p in inputs.policies)
        namespaces.update((n.name, n) for n in inputs.namespaces)
        endpoints.update((e.key, e) for e in inputs.endpoints)
    return Inputs(tuple(policies.values()), tuple(namespaces.values()), tuple(endpoints.values()))


class DirectorySource:
    """Every *.yaml, *.yml and *.json file under ``path`` (or ``path``
    itself when it is a file); watched by polling names, sizes and times."""

    def __init__(self, path: str, interval: float = 1.0):
        self.path = path
        self.interval = interval
        self._parsed: dict[str, tuple[tuple, list]] = {}   # path -> (identity, objects): unchanged files are not parsed again

    def files(self) -> list[str]:
        # A missing directory is an error, not "no policies": an unmounted
        # volume must not lift every pod's isolation.
        if not os.path.exists(self.path):
            raise PolicyError(self.path, ["no such file or directory"])
        if os.path.isfile(self.path):
            return [self.path]
        found = []
        for root, dirs, files in os.walk(self.path):
            dirs.sort()
            found += [os.path.join(root, f) for f in sorted(files) if f.endswith(SUFFIXES)]
        return found

    def list(self) -> Inputs:
        objects, parsed = [], {}
        for path in self.files():
            with open(path) as f:
                st = os.fstat(f.fileno())
                identity = (st.st_ino, st.st_mtime_ns, st.st_size)
                cached = self._parsed.get(path)
                found = cached[1] if cached and cached[0] == identity else load_text(f.read(), path)
            parsed[path] = (identity, found)
            objects += found
        self._parsed = parsed
        return inputs_of(objects)

    def _fingerprint(self) -> list | None:
        if not os.path.exists(self.path):
            return None
        prints = []
        for path in self.files():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            prints.append((path, st.st_mtime_ns, st.st_size))
        return prints

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        poll(self._fingerprint, changed, stop, self.interval)


def poll(fingerprint: Callable[[], object], changed: Callable[[], None], stop: threading.Event,
         interval: float) -> None:
    """Call ``changed()`` whenever ``fingerprint()`` answers differently,
    looking every ``interval`` seconds until ``stop`` is set."""
    last = fingerprint()
    while not stop.wait(interval):
        now = fingerprint()
        if now != last:
            last = now
            changed()


@dataclass(frozen=True)
class Attachment:
    """What the CNI plugin registers an endpoint for: one interface of one
    container on one network.  Registrations are kept per attachment, not
    per pod name: a late DEL of a pod's previous sandbox must not remove
    the pod that took its name, and a pod on two networks has both."""
    network: str
    container_id: str
    ifname: str

    @property
    def key(self) -> str:
        return f"{self.network}/{self.container_id}/{self.ifname}"

    def record(self) -> dict:
        return {"network": self.network, "containerID": self.container_id, "ifname": self.ifname}

    @classmethod
    def from_record(cls, record: dict) -> Attachment:
        try:
            return cls(str(record["network"]), str(record["containerID"]), str(record["ifname"]))
        except (KeyError, TypeError):
            raise PolicyError("attachment", [f"{record!r}: needs network, containerID and ifname"]) from None


def merged_endpoint(endpoints: list[Endpoint]) -> Endpoint:
    """One pod registered by several attachments: all its addresses and
    named ports (labels are the pod's: the last registration's)."""
    if len(endpoints) == 1:
        return endpoints[0]
    last = endpoints[-1]
    return dataclasses.replace(
        last, addresses=tuple(dict.fromkeys(a for e in endpoints for a in e.addresses)),
        ports=tuple(dict.fromkeys(p for e in endpoints for p in e.ports)))


class EndpointRegistry:
    """Endpoints the netpolicy CNI plugin registers (through the policy
    controller's control socket) per attachment, removed on DEL or GC.
    With ``directory``, each registration is also a JSON file there, read
    back at start: a restarted controller must not forget a pod, or its
    first reconcile would lift the pod's isolation.  The files are replaced
    atomically, not synced: they matter for a controller restart, and a
    machine restart takes the pods with it."""

    def __init__(self, directory: str | None = None,
                 on_change: Callable[[Attachment, Endpoint | None], None] | None = None):
        self._lock = threading.RLock()
        self._directory = directory
        self.on_change = on_change   # told every registration and removal (the cluster store's publisher)
        self._attachments: dict[str, tuple[Attachment, Endpoint]] = {}
        self._by_pod: dict[str, dict[str, Endpoint]] = {}   # namespace/name -> attachment key -> endpoint
        if directory:
            os.makedirs(directory, exist_ok=True)
            for name in sorted(os.listdir(directory)):
                if name.endswith(".tmp"):  # a write a crash interrupted
                    os.unlink(os.path.join(directory, name))
                elif name.endswith(".json"):
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        record = json.load(f)
                    self._remember(Attachment.from_record(record.get("attachment") or {}),
                                   parse_endpoint(record.get("endpoint"), path))

    def _path(self, attachment: Attachment) -> str:
        # network names and container IDs may be long: the file is named by a digest
        return os.path.join(self._directory, hashlib.sha256(attachment.key.encode()).hexdigest()[:32] + ".json")

    def _remember(self, attachment: Attachment, endpoint: Endpoint) -> None:
        self._forget(attachment)
        self._attachments[attachment.key] = (attachment, endpoint)
        self._by_pod.setdefault(endpoint.key, {})[attachment.key] = endpoint

    def _forget(self, attachment: Attachment) -> str | None:
        """The pod the attachment was registered for, now forgotten."""
        found = self._attachments.pop(attachment.key, None)
        if found is None:
            return None
        pod = found[1].key
        del self._by_pod[pod][attachment.key]
        if not self._by_pod[pod]:
            del self._by_pod[pod]
        return pod

    def put(self, attachment: Attachment, endpoint: Endpoint) -> list[str]:
        """Register; returns the pods (namespace/name) whose endpoint changed."""
        with self._lock:
            if self._directory:
                path = self._path(attachment)
                tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
                with open(tmp, "w") as f:
                    json.dump({"attachment": attachment.record(), "endpoint": endpoint_record(endpoint)}, f)
                os.replace(tmp, path)
            before = self._attachments.get(attachment.key)
            self._remember(attachment, endpoint)
        if self.on_change:
            self.on_change(attachment, endpoint)
        return list(dict.fromkeys([endpoint.key] + ([before[1].key] if before else [])))

    def remove(self, attachment: Attachment) -> list[str]:
        """DEL; returns the pods whose endpoint changed (none if unknown)."""
        with self._lock:
            if self._directory:
                try:
                    os.unlink(self._path(attachment))
                except FileNotFoundError:
                    pass
            pod = self._forget(attachment)
        if pod and self.on_change:
            self.on_change(attachment, None)
        return [pod] if pod else []

    def retain(self, network: str, keep) -> list[str]:
        """GC of one network: forget its attachments not in ``keep``
        ((containerID, ifname) pairs); returns the pods that changed."""
        keep = set(keep)
        with self._lock:
            gone = [a for a, _ in self._attachments.values()
                    if a.network == network and (a.container_id, a.ifname) not in keep]
            return list(dict.fromkeys(pod for a in gone for pod in self.remove(a)))

    def registrations(self) -> dict[str, tuple[Attachment, Endpoint]]:
        """Attachment key -> (attachment, endpoint), all of them."""
        with self._lock:
            return dict(self._attachments)

    def registered(self, attachment: Attachment) -> Endpoint | None:
        with self._lock:
            found = self._attachments.get(attachment.key)
            return found[1] if found else None

    def endpoint(self, pod: str) -> Endpoint | None:
        """The pod's endpoint as its registrations make it, or None."""
        with self._lock:
            found = self._by_pod.get(pod)
            return merged_endpoint([found[k] for k in sorted(found)]) if found else None

    def list(self) -> Inputs:
        with self._lock:
            return Inputs(endpoints=tuple(merged_endpoint([found[k] for k in sorted(found)])
                                          for _, found in sorted(self._by_pod.items())))

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        """Registrations are applied by whoever makes them (the controller's
        register/unregister/retain): nothing to watch."""
        stop.wait()
