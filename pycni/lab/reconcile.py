"""Making a lab what its file says: `up` builds it, `apply` brings a
running lab to a changed file, `down` removes everything.

`apply` is a reconciler, as the agent's controllers are: the desired plan
(from the file) and the current state (state.json) give, purely, the
`Changes`: pods to remove, hosts to remove, hosts whose underlay address
moves, hosts to add, pods whose labels or ports change, pods to add.
`converge` carries them out in that order, recording an entry in the
state before it makes it and dropping it once it is removed, so the state
always covers what exists.  The lab's network-policy objects are written
where the agents read them before any agent starts; then every agent and
etcd member that should run and does not is started (so apply also heals
a killed one), pods are relabelled and new pods attached once their
host's agent is ready, and on a policy lab `converge` returns once every
host enforces the file (policy.py).  Everything else keeps running
untouched.  `up` is `converge` from an empty lab.  A running lab's
networks and lab-wide settings (network policy on or off among them) stay
as they are: apply refuses a file that changes them.
"""
from __future__ import annotations

import glob
import os
import shutil
import sys
from dataclasses import dataclass

from cni_plugins.dnsname.control import stop_resolvers

from . import agents, cni, etcd, hosts, policy, processes
from .spec import ETCD, LabError, lab_root, underlay_bridge, underlay_veth
from .state import load_state, save_state

# what apply cannot change in a running lab
FIXED = ("cniVersion", "loopback", "cniPath", "networks", "overlay", "policy")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


@dataclass
class Changes:
    remove_pods: list[dict]
    remove_hosts: list[dict]
    move_hosts: list[tuple[dict, str]]  # (host as it is, its new underlay address)
    add_hosts: list[dict]
    relabel_pods: list[tuple[dict, dict]]   # (pod as it is, as it is wanted): new labels or ports
    add_pods: list[dict]


def changes(current: dict, desired: dict) -> Changes:
    """What turns lab ``current`` into ``desired`` (pure).  A host that
    gains or loses its underlay is made again; a pod is made again when its
    host, network or interface changes, or its host is made again."""
    have = {h["name"]: h for h in current["hosts"]}
    want = {h["name"]: h for h in desired["hosts"]}
    remade = {n for n in have.keys() & want.keys() if (have[n]["underlay"] is None) != (want[n]["underlay"] is None)}
    remove_hosts = [h for n, h in have.items() if n not in want or n in remade]
    gone = {h["name"] for h in remove_hosts}

    def key(pod):
        return pod["namespace"], pod["name"]

    wanted_pods = {key(p): p for p in desired["pods"]}
    remove_pods = [p for p in current["pods"]
                   if p["host"] in gone or any(p[k] != wanted_pods.get(key(p), {}).get(k)
                                               for k in ("host", "network", "ifname"))]
    kept = {key(p) for p in current["pods"]} - {key(p) for p in remove_pods}
    return Changes(
        remove_pods=remove_pods,
        remove_hosts=remove_hosts,
        move_hosts=[(have[n], want[n]["underlay"]) for n in have.keys() & want.keys() - remade
                    if have[n]["underlay"] != want[n]["underlay"]],
        add_hosts=[h for n, h in want.items() if n not in have or n in remade],
        relabel_pods=[(p, wanted_pods[key(p)]) for p in current["pods"] if key(p) in kept
                      and any(p.get(k) != wanted_pods[key(p)][k] for k in ("labels", "ports"))],
        add_pods=[p for k, p in wanted_pods.items() if k not in kept],
    )


def up(plan: dict, cni_path: str | None = None, log=_log) -> dict:
    name = plan["name"]
    if load_state(name) is not None or os.path.exists(plan["dir"]):
        raise LabError(f"lab {name} exists ({plan['dir']}); run `pycni lab down {name}` first")
    for h in plan["hosts"]:
        if hosts.netns_exists(h["netns"]):
            raise LabError(f"netns {h['netns']} already exists; run `pycni lab down {name}` first")
    plan["binDir"] = cni_path or plan.get("cniPath") or os.path.join(plan["dir"], "bin")
    state = {**plan, "hosts": [], "pods": [], "underlayBridge": None, "phase": "creating"}
    save_state(state)  # from here on, `down` finds whatever we make
    try:
        if plan["binDir"] == os.path.join(plan["dir"], "bin"):
            from ..install import install

            install(plan["binDir"])
        converge(state, plan, log)
    except BaseException as e:
        log(f"lab {name}: up failed: {e}; cleaning up")
        state["phase"] = "failed"
        save_state(state)
        down(name, state, log=log)
        raise
    return state


def apply(plan: dict, log=_log) -> dict:
    """Bring running lab ``plan["name"]`` to ``plan``; returns its state."""
    state = load_state(plan["name"])
    if state is None:
        raise LabError(f"lab {plan['name']} is not up: `pycni lab up` it first")
    differing = [key for key in FIXED if state.get(key) != plan.get(key)]
    if differing:
        raise LabError(f"lab {plan['name']}: {', '.join(differing)} cannot change in a running lab "
                       "(`pycni lab down` and `up` it instead)")
    state["file"] = plan.get("file")
    state["phase"] = "applying"
    save_state(state)
    try:
        converge(state, plan, log)
    except BaseException:
        state["phase"] = "failed"  # what exists is in the state: fix the file and apply again, or down
        save_state(state)
        raise
    return state


def converge(state: dict, plan: dict, log) -> None:
    """Carry out changes(state, plan) on the machine, keeping ``state``
    (saved after every step) equal to what exists."""
    diff = changes(state, plan)

    def host_of(pod):
        return next(h for h in state["hosts"] if h["name"] == pod["host"])

    for pod in diff.remove_pods:
        log(f"pod {pod['namespace']}/{pod['name']}: removing")
        if not cni.detach(state, host_of(pod), pod, log):
            raise LabError(f"could not delete netns {pod['netns']}")
        state["pods"].remove(pod)
        save_state(state)
    for host in diff.remove_hosts:
        log(f"host {host['name']}: removing")
        if agents.needed(state) and not agents.stop(host):
            raise LabError(f"host {host['name']}: its agent would not stop")
        if state.get("policy"):
            policy.forget_host(state, host)
        hosts.remove(host)
        state["hosts"].remove(host)
        save_state(state)
    if plan["underlayBridge"]:
        state["underlayBridge"] = plan["underlayBridge"]
        save_state(state)
        hosts.ensure_switch(state["underlayBridge"])
    store = (state["overlay"] or {}).get("etcd")
    if store:
        etcd.create(store, state["underlayBridge"])
        etcd.ensure_running(store, f"{state['name']}-{state['overlay']['cluster']}", log)
    for host, underlay in diff.move_hosts:
        log(f"host {host['name']}: underlay {host['underlay']} -> {underlay}")
        hosts.move(host, underlay)
        host["underlay"] = underlay
        save_state(state)
    for host in diff.add_hosts:
        log(f"host {host['name']}: netns {host['netns']}")
        state["hosts"].append(host)
        save_state(state)
        hosts.create(host, state["underlayBridge"])
        cni.write_conflists(state, host)
    order = [h["name"] for h in plan["hosts"]]
    state["hosts"].sort(key=lambda h: order.index(h["name"]))
    save_state(state)
    if state.get("policy"):
        state["objects"] = plan["objects"]
        save_state(state)
        policy.publish(state)
    if agents.needed(state):
        agents.ensure_running(state, state["hosts"], log)
    if state.get("policy"):
        policy.reconcile(state)   # the new objects first, then the pods they apply to
    networks = {n["name"]: n for n in state["networks"]}
    for pod, wanted in diff.relabel_pods:
        log(f"pod {pod['namespace']}/{pod['name']}: labels {wanted['labels']}, ports {wanted['ports']}")
        pod.update(labels=wanted["labels"], ports=wanted["ports"])
        save_state(state)
        if policy.policed(state, networks[pod["network"]]):
            policy.relabel(host_of(pod), pod)
    for pod in diff.add_pods:
        state["pods"].append(pod)
        save_state(state)
        cni.attach(state, host_of(pod), pod)
        save_state(state)
        log(f"pod {pod['namespace']}/{pod['name']} on {pod['host']}: {', '.join(pod['ips']) or 'no IPs'}")
    order = [(p["namespace"], p["name"]) for p in plan["pods"]]
    state["pods"].sort(key=lambda p: order.index((p["namespace"], p["name"])))
    if state.get("policy"):
        policy.enforce(state)
    state["phase"] = "up"
    save_state(state)


def down(name: str, plan: dict | None = None, log=_log) -> int:
    """Remove everything lab ``name`` made, from its state (or ``plan``,
    or the names alone); returns how many things could not be removed."""
    state = load_state(name) or plan
    problems = 0
    lab_dir = os.path.join(lab_root(), name)
    if state is not None and state.get("binDir"):
        by_name = {h["name"]: h for h in state["hosts"]}
        for pod in reversed(state["pods"]):
            cni.detach(state, by_name.get(pod["host"]), pod, log)
    if state is not None and state.get("policy"):
        policy.withdraw(state, log)
    # agents leave (and release their leases) before their store goes
    for host_dir in glob.glob(os.path.join(lab_dir, "hosts", "*")):
        if not agents.stop({"dir": host_dir}):
            log(f"could not stop the agent of {host_dir}")
            problems += 1
    for pid_file in etcd.pid_files(lab_dir):
        if not processes.stop(pid_file):
            log(f"could not stop the process of {pid_file}")
            problems += 1
    for host_dir in glob.glob(os.path.join(lab_dir, "hosts", "*")):
        stop_resolvers(os.path.join(host_dir, "run"))  # normally the last DEL stopped them
    # every netns of the lab: the recorded ones plus any left over by prefix
    names = []
    if state is not None:
        names += [p["netns"] for p in state["pods"]] + [h["netns"] for h in state["hosts"]]
    prefix = f"pycni-{name}-"
    try:
        names += sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix) and n not in names)
    except FileNotFoundError:
        pass
    for ns in names:
        if not hosts.delete_namespace(ns):
            log(f"could not delete netns {ns}")
            problems += 1
    links = [h["veth"] for h in (state or {}).get("hosts", []) if h.get("veth")]
    for link in links + [underlay_veth(name, ETCD), underlay_bridge(name)]:
        if not hosts.delete_link(link):
            log(f"could not delete link {link}")
            problems += 1
    shutil.rmtree(lab_dir, ignore_errors=True)
    if os.path.exists(lab_dir):
        problems += 1
    return problems
