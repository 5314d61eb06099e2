"""Where policies, namespaces and endpoints come from.

A source has ``list()`` (everything it holds now, as Inputs, or
PolicyError if any object is invalid) and ``watch(changed, stop)`` (block
until ``stop`` is set, calling ``changed()`` whenever ``list()`` may
answer differently).  Two here: a directory of YAML/JSON files, and the
registry the CNI plugin fills through the agent.  The overlay's store (file
or etcd) is a third with the same two methods.
"""
from __future__ import annotations

import json
import os
import threading
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

    def _files(self) -> list[str]:
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
        objects = []
        for path in self._files():
            with open(path) as f:
                objects += load_text(f.read(), path)
        return inputs_of(objects)

    def _fingerprint(self) -> list | None:
        if not os.path.exists(self.path):
            return None
        prints = []
        for path in self._files():
            try:
                st = os.stat(path)
            except FileNotFoundError:
                continue
            prints.append((path, st.st_mtime_ns, st.st_size))
        return prints

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        last = self._fingerprint()
        while not stop.wait(self.interval):
            now = self._fingerprint()
            if now != last:
                last = now
                changed()


class EndpointRegistry:
    """Endpoints registered one at a time (the netpolicy CNI plugin's ADD,
    through the agent) and removed on DEL or GC.  With ``directory``, each
    is also a JSON file there, read back at start: an agent restart must
    not forget a pod, or the first reconcile would lift its isolation."""

    def __init__(self, directory: str | None = None):
        self._lock = threading.Lock()
        self._directory = directory
        self._endpoints: dict[str, Endpoint] = {}
        self._listeners: list[Callable[[], None]] = []
        if directory:
            os.makedirs(directory, exist_ok=True)
            for name in sorted(os.listdir(directory)):
                if name.endswith(".json"):
                    path = os.path.join(directory, name)
                    with open(path) as f:
                        endpoint = parse_endpoint(json.load(f), path)
                    self._endpoints[endpoint.key] = endpoint

    def _path(self, key: str) -> str:
        # namespaces are DNS labels and names DNS subdomains: neither holds "_"
        return os.path.join(self._directory, key.replace("/", "_", 1) + ".json")

    def put(self, endpoint: Endpoint) -> None:
        with self._lock:
            if self._directory:
                path = self._path(endpoint.key)
                with open(path + ".tmp", "w") as f:
                    json.dump(endpoint_record(endpoint), f)
                os.replace(path + ".tmp", path)
            self._endpoints[endpoint.key] = endpoint
        self._notify()

    def _drop(self, key: str) -> bool:
        if self._directory:
            try:
                os.unlink(self._path(key))
            except FileNotFoundError:
                pass
        return self._endpoints.pop(key, None) is not None

    def remove(self, key: str) -> bool:
        with self._lock:
            found = self._drop(key)
        self._notify()
        return found

    def retain(self, keys) -> list[str]:
        """GC: keep only ``keys``; returns the keys removed."""
        keep = set(keys)
        with self._lock:
            gone = [k for k in self._endpoints if k not in keep]
            for k in gone:
                self._drop(k)
        self._notify()
        return gone

    def list(self) -> Inputs:
        with self._lock:
            return Inputs(endpoints=tuple(self._endpoints.values()))

    def _notify(self) -> None:
        for listener in list(self._listeners):
            listener()

    def watch(self, changed: Callable[[], None], stop: threading.Event) -> None:
        self._listeners.append(changed)
        try:
            stop.wait()
        finally:
            self._listeners.remove(changed)
