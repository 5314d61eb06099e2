"""The lab's own etcd (store: etcd without etcdEndpoints): Debian's
etcd-server in a namespace of its own on the lab switch, one process per
member on successive port pairs of one address, data, logs and pid files
under ``<lab dir>/etcd/``."""
from __future__ import annotations

import os
import time

from . import hosts, processes
from .spec import LabError

READY_TIMEOUT = 60.0
READY_LINE = "ready to serve client requests"


def _paths(etcd: dict, member: dict) -> dict[str, str]:
    base = os.path.join(etcd["dir"], member["name"])
    return {"data": base + ".data", "log": base + ".log", "pid": base + ".pid"}


def create(etcd: dict, switch: str) -> None:
    os.makedirs(etcd["dir"], exist_ok=True)
    if not hosts.netns_exists(etcd["netns"]):
        hosts.add_namespace(etcd["netns"])
        hosts.plug(etcd["netns"], etcd["veth"], etcd["address"], switch)


def _start(etcd: dict, member: dict, token: str) -> int:
    """Start a member; returns where its log ends before it (its readiness
    line comes after)."""
    p = _paths(etcd, member)
    cluster = ",".join(f"{m['name']}={m['peer']}" for m in etcd["members"])
    cmd = ["etcd", "--name", member["name"], "--data-dir", p["data"],
           "--listen-client-urls", member["client"], "--advertise-client-urls", member["client"],
           "--listen-peer-urls", member["peer"], "--initial-advertise-peer-urls", member["peer"],
           "--initial-cluster", cluster, "--initial-cluster-token", token,
           "--initial-cluster-state", "existing" if os.path.isdir(p["data"]) else "new"]
    offset = os.path.getsize(p["log"]) if os.path.exists(p["log"]) else 0
    processes.spawn(cmd, p["log"], p["pid"], netns=etcd["netns"])
    return offset


def ensure_running(etcd: dict, token: str, log) -> None:
    """Start every member that is not running (all at first: they need
    each other for a quorum), then wait until those serve clients."""
    started = {}
    for member in etcd["members"]:
        if processes.running(_paths(etcd, member)["pid"]) is None:
            log(f"etcd {member['name']}: starting on {member['client']}")
            started[member["name"]] = (member, _start(etcd, member, token))
    deadline = time.monotonic() + READY_TIMEOUT
    for member, offset in started.values():
        p = _paths(etcd, member)
        while not _said(p["log"], offset, READY_LINE):
            if processes.running(p["pid"]) is None or time.monotonic() > deadline:
                raise LabError(f"etcd {member['name']} did not start; {p['log']} ends:\n"
                               + processes.log_tail(p["log"]))
            time.sleep(0.05)


def _said(log_path: str, offset: int, line: str) -> bool:
    with open(log_path, "rb") as f:
        f.seek(offset)
        return line.encode() in f.read()


def status(etcd: dict) -> dict:
    return {"netns": etcd["netns"], "address": etcd["address"],
            "members": [{"name": m["name"], "client": m["client"],
                         "pid": processes.running(_paths(etcd, m)["pid"])} for m in etcd["members"]]}


def pid_files(lab_dir: str) -> list[str]:
    d = os.path.join(lab_dir, "etcd")
    try:
        return [os.path.join(d, name) for name in sorted(os.listdir(d)) if name.endswith(".pid")]
    except FileNotFoundError:
        return []
