"""One node agent per host of an overlay lab or a lab with network
policy: `pycni agent` with the overlay duty, the policy duty or both, run
inside the host's namespace (`ip netns exec`), its settings, status, log
and pid file under ``<host dir>/agent/``.

The plugins the lab runs for pods (in the host's netns, each in a mount
namespace of its own, as `ip netns exec` does) see the same files as the
agent, so the host's agent serves them; they read the node state it writes
at ``<host dir>/run/overlay/<cluster>.json``, under the PYCNI_RUN_DIR they
get.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time

from cni_plugins.core.records import read_json, write_atomic
from cni_plugins.overlay import state_path

from . import policy, processes
from .spec import LabError

READY_TIMEOUT = 60.0


def paths(host: dict) -> dict[str, str]:
    d = os.path.join(host["dir"], "agent")
    return {name: os.path.join(d, file) for name, file in
            (("config", "overlay.json"), ("status", "status.json"), ("pid", "agent.pid"), ("log", "agent.log"))}


def needed(plan: dict) -> bool:
    """Whether the lab's hosts run agents."""
    return bool(plan["overlay"] or plan.get("policy"))


def settings(plan: dict, host: dict) -> dict:
    overlay = plan["overlay"]
    return {**overlay["settings"], "nodeName": host["name"], "underlayInterface": "eth0",
            "stateFile": state_path(os.path.join(host["dir"], "run"), overlay["cluster"])}


def command(plan: dict, host: dict) -> list[str]:
    """The host's `pycni agent`: the overlay duty with its settings file,
    the policy duty with its flags."""
    p = paths(host)
    cmd = [sys.executable, "-m", "pycni.cli", "agent", "--node-name", host["name"], "--status-file", p["status"]]
    if plan["overlay"]:
        cmd += ["--overlay-config", p["config"]]
    if plan.get("policy"):
        cmd += policy.agent_flags(plan, host)
    return cmd


def start(plan: dict, host: dict) -> None:
    from ..install import search_path

    p = paths(host)
    if plan["overlay"]:
        write_atomic(p["config"], json.dumps(settings(plan, host), indent=2).encode())
    processes.spawn(command(plan, host), p["log"], p["pid"], netns=host["netns"],
                    env={"PYTHONPATH": os.pathsep.join(search_path())})


def running(host: dict) -> int | None:
    return processes.running(paths(host)["pid"])


def status(host: dict) -> dict | None:
    """The agent's own report, when it is this running agent's."""
    pid = running(host)
    report = read_json(paths(host)["status"])
    return report if pid is not None and isinstance(report, dict) and report.get("pid") == pid else None


def ensure_running(plan: dict, hosts: list[dict], log) -> None:
    """Start the agent of every host that has none running (a new host,
    or one whose agent died), then wait until all of them are ready."""
    for host in hosts:
        if running(host) is None:
            log(f"host {host['name']}: starting its agent")
            start(plan, host)
    deadline = time.monotonic() + READY_TIMEOUT
    for host in hosts:
        while not (status(host) or {}).get("ready"):
            if running(host) is None or time.monotonic() > deadline:
                p = paths(host)
                why = "exited" if running(host) is None else f"is not ready after {READY_TIMEOUT:.0f}s"
                raise LabError(f"host {host['name']}: its agent {why}; {p['log']} ends:\n"
                               + processes.log_tail(p["log"]))
            time.sleep(0.05)


def stop(host: dict, sig: int = signal.SIGTERM) -> bool:
    """SIGTERM: the agent leaves the overlay (lease released, dataplane
    removed; network policy's tables stay, until the host's namespace
    goes).  An agent its pid file lost track of (its own status file
    names it, and it was started with that very file) is stopped too."""
    p = paths(host)
    stopped = processes.stop(p["pid"], sig)
    report = read_json(p["status"])
    pid = report.get("pid") if isinstance(report, dict) else None
    start = processes.started_as(pid, p["status"]) if isinstance(pid, int) else None
    return (processes.terminate(pid, start, sig) if start else True) and stopped


def lease(plan: dict, host: dict) -> dict | None:
    """The host's share of the overlay, as its node state file says."""
    state = read_json(settings(plan, host)["stateFile"])
    if not isinstance(state, dict):
        return None
    return {key: state.get(key) for key in ("subnet", "subnet6", "mtu", "vtep")} | {
        "underlay": (state.get("underlay") or {}).get("address")}
