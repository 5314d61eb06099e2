"""Hosts in the kernel: a network namespace per host, its eth0 on the lab
switch (a bridge in the root namespace) with the host's underlay address.
The lab etcd's namespace is plugged in the same way."""
from __future__ import annotations

import os
import shutil
import subprocess

from .spec import LabError


def run(*cmd, check=True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def ensure_switch(bridge: str) -> None:
    if not link_exists(bridge):
        run("ip", "link", "add", bridge, "type", "bridge")
    run("ip", "link", "set", bridge, "up")


def add_namespace(netns: str) -> None:
    run("ip", "netns", "add", netns)
    run("ip", "-n", netns, "link", "set", "lo", "up")


def plug(netns: str, veth: str, address: str, switch: str) -> None:
    """eth0 in ``netns`` with ``address``, its peer ``veth`` on the switch."""
    run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", netns)
    run("ip", "link", "set", veth, "master", switch, "up")
    run("ip", "-n", netns, "addr", "add", address, "dev", "eth0")
    run("ip", "-n", netns, "link", "set", "eth0", "up")


def create(host: dict, switch: str | None) -> None:
    for sub in ("net.d", "cache", "ipam", "state", "run"):
        os.makedirs(os.path.join(host["dir"], sub), exist_ok=True)
    add_namespace(host["netns"])
    if host["underlay"]:
        plug(host["netns"], host["veth"], host["underlay"], switch)


def move(host: dict, underlay: str) -> None:
    """A new underlay address for a running host; whatever runs in it
    (its agent) follows the change."""
    # old first: deleting a primary address takes its secondaries with it
    run("ip", "-n", host["netns"], "addr", "del", host["underlay"], "dev", "eth0")
    run("ip", "-n", host["netns"], "addr", "add", underlay, "dev", "eth0")


def delete_namespace(netns: str) -> bool:
    shutil.rmtree(os.path.join("/etc/netns", netns), ignore_errors=True)
    return not netns_exists(netns) or run("ip", "netns", "delete", netns, check=False).returncode == 0


def delete_link(name: str) -> bool:
    return not link_exists(name) or run("ip", "link", "delete", name, check=False).returncode == 0


def remove(host: dict) -> None:
    """A host's namespace (its eth0 and veth pair with it) and directory."""
    if not delete_namespace(host["netns"]):
        raise LabError(f"could not delete netns {host['netns']}")
    if host.get("veth"):
        delete_link(host["veth"])
    shutil.rmtree(host["dir"], ignore_errors=True)
