"""Network policy in a lab: the lab file's namespaces, pod labels and
ports, and NetworkPolicy objects, enforced by every host's agent.

- Where the objects go: ``<lab dir>/netpolicy/objects.json`` (a List of
  the Namespace and NetworkPolicy objects).  On a lab without an overlay
  every host's agent reads that directory (``--policy-dir``).  On an
  overlay lab the objects go into the overlay's store (file or etcd),
  which every host's agent reads beside every host's pods; the file stays
  as the lab's record (``pycni policy explain -f`` takes it).
- How pods are known: the generated conflists end in the netpolicy
  plugin, and a pod's labels and named ports reach it at ADD as the
  runtimeConfig capabilities ``labels`` and ``podPorts``, so its rules are
  in place before its namespace is used.  A kept pod whose labels or ports
  change is registered again with its host's controller, as the plugin
  registers it (same attachment, new endpoint).
- When `up` and `apply` return, the file is enforced everywhere: every
  host's controller is asked to reconcile (the control socket's
  ``reconcile``), on an overlay lab only once the store lists every pod
  as the lab has it (each host publishes its own pods in the background).
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager

from cni_plugins import netpolicy as plugin
from cni_plugins.core.errors import CNIError
from cni_plugins.core.records import write_atomic

from .hosts import inside, state_dir
from .spec import LabError

PUBLISH_TIMEOUT = 30.0


def policed(plan: dict, network: dict) -> bool:
    """Whether the network's chain has the netpolicy plugin: the lab's own
    conflists on a policy lab, or a full plugin list that names it."""
    if "plugins" in network:
        return any(p.get("type") == plugin.PLUGIN for p in network["plugins"])
    return bool(plan.get("policy"))


def conflist_entry(host: dict) -> dict:
    """The netpolicy plugin, last in a generated conflist.  Its label files'
    directory is the host's own (the lab gives labels as capabilities; no
    file of the machine's must add any)."""
    return {"type": plugin.PLUGIN, "capabilities": {"labels": True, "podPorts": True},
            "labelsDir": os.path.join(host["dir"], "netpolicy", "pods")}


def capability_args(pod: dict) -> dict:
    return {"labels": pod["labels"],
            "podPorts": [{"name": p["name"], "containerPort": p["port"], "protocol": p["protocol"]}
                         for p in pod["ports"]]}


def objects_dir(plan: dict) -> str:
    return os.path.join(plan["dir"], "netpolicy")


def agent_flags(plan: dict, host: dict) -> list[str]:
    """The policy duty's flags: the host's state dir (the netpolicy plugin's
    registrations beside the other plugins' records), and the objects'
    directory or, on an overlay lab, the overlay's store (the agent's
    overlay settings)."""
    flags = ["--network-policy", "--state-dir", state_dir(host)]
    return flags if plan["overlay"] else flags + ["--policy-dir", objects_dir(plan)]


@contextmanager
def cluster_store(state: dict):
    """The overlay's store as the agents see it (from the first host's
    namespace: the lab's etcd is on the lab switch), or None."""
    overlay = state.get("overlay")
    if not overlay or not state["hosts"]:
        yield None
        return
    from netpolicy.store import open_store

    settings = overlay["settings"]
    with inside(state["hosts"][0]["netns"]):
        yield open_store(settings["store"], path=settings.get("storePath"), endpoints=settings.get("etcdEndpoints"),
                         prefix=settings.get("etcdPrefix", ""))


def publish(state: dict) -> None:
    """The lab's objects where every host's agent reads them."""
    listing = {"apiVersion": "v1", "kind": "List", "items": state["objects"]}
    write_atomic(os.path.join(objects_dir(state), "objects.json"), json.dumps(listing, indent=1).encode())
    with cluster_store(state) as store:
        if store is not None:
            try:
                store.replace_objects(state["objects"])
            except OSError as e:
                raise LabError(f"cannot write the policies into the overlay's store: {e}") from None


def forget_host(state: dict, host: dict) -> None:
    """Take a leaving host's pods out of the overlay's store (its agent
    removed those it knew of; one that died could not)."""
    try:
        with cluster_store(state) as store:
            if store is not None:
                for attachment in store.published(host["name"]).values():
                    store.publish(host["name"], attachment, None)
    except OSError as e:
        raise LabError(f"cannot take host {host['name']}'s pods out of the overlay's store: {e}") from None


def withdraw(state: dict, log) -> None:
    """Take the lab's objects out of the overlay's store (an etcd of the
    user's outlives the lab); best effort, for `down`."""
    try:
        with cluster_store(state) as store:
            if store is not None:
                store.replace_objects([])
    except OSError as e:
        log(f"could not remove the lab's policies from the overlay's store: {e}")


def _call(host: dict, request: dict) -> dict:
    """One request to the host's policy controller (in its namespace)."""
    try:
        with inside(host["netns"]):
            return plugin.call(plugin.PolicyConfig(network=""), request)
    except CNIError as e:
        raise LabError(f"host {host['name']}: {e.msg}{': ' + e.details if e.details else ''}") from None


def endpoint(pod: dict) -> dict:
    """The pod as the netpolicy plugin registers it."""
    return {"namespace": pod["namespace"], "name": pod["name"], "labels": pod["labels"],
            "addresses": plugin.container_addresses(pod["result"] or {}), "ports": pod["ports"]}


def relabel(host: dict, pod: dict) -> None:
    """Give the pod's host its new labels and ports (pod holds them)."""
    attachment = {"network": pod["network"], "containerID": pod["containerId"], "ifname": pod["ifname"]}
    _call(host, {"op": "register", "attachment": attachment, "endpoint": endpoint(pod)})


def reconcile(state: dict) -> None:
    """Every host's controller reads its sources now (the objects just
    published among them)."""
    for host in state["hosts"]:
        _call(host, {"op": "reconcile"})


def enforce(state: dict) -> None:
    """Return once every host enforces the lab's objects and pods."""
    with cluster_store(state) as store:
        if store is not None:
            _await_published(state, store)
    reconcile(state)


def _await_published(state: dict, store) -> None:
    networks = {n["name"]: n for n in state["networks"]}
    want = {f"{p['namespace']}/{p['name']}": _comparable(endpoint(p)) for p in state["pods"]
            if policed(state, networks[p["network"]])}
    deadline = time.monotonic() + PUBLISH_TIMEOUT
    while True:
        try:
            have = {e.key: _comparable({"labels": e.labels, "addresses": e.addresses, "ports": [
                {"name": p.name, "port": p.port, "protocol": p.protocol} for p in e.ports]})
                for e in store.list().endpoints}
        except (OSError, ValueError) as e:   # PolicyError is a ValueError
            have = {"?": str(e)}
        if have == want:
            return
        if time.monotonic() > deadline:
            differ = sorted(k for k in want.keys() | have.keys() if want.get(k) != have.get(k))
            raise LabError(f"the overlay's store does not list the pods as the lab has them after "
                           f"{PUBLISH_TIMEOUT:.0f}s: {', '.join(differ)}")
        time.sleep(0.1)


def _comparable(record: dict) -> tuple:
    return (tuple(sorted(dict(record["labels"]).items())), tuple(sorted(record["addresses"])),
            tuple(sorted((p["name"], p["port"], p["protocol"]) for p in record["ports"])))
