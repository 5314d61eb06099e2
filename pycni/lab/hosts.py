"""Hosts in the kernel: a network namespace per host, its eth0 on the lab
switch (a bridge in the root namespace) with the host's underlay address.
The lab etcd's namespace is plugged in the same way."""
from __future__ import annotations

import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import time
from contextlib import contextmanager

from cni_plugins.kernel import netns as kernel_netns

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
    announce(netns, address)


def state_dir(host: dict) -> str:
    """The host's PYCNI_STATE_DIR: the plugins run for its pods keep their
    records there, and its agent the netpolicy plugin's registrations."""
    return os.path.join(host["dir"], "state")


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
    announce(host["netns"], underlay)


def announce(netns: str, address: str) -> None:
    """A gratuitous ARP for an address just put on eth0 in ``netns``, as a
    DHCP client or NetworkManager sends one: a neighbour that still maps
    the address to the MAC of a host that had it before learns the new
    one at once instead of after its entry goes stale (up to a minute)."""
    ip = ipaddress.ip_interface(address).ip
    if ip.version != 4:
        return  # IPv6: the address's own DAD and the neighbours' probes do it
    with inside(netns), socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
        sock.bind(("eth0", 0))
        mac = sock.getsockname()[4]
        arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, mac, ip.packed, bytes(6), ip.packed)
        sock.send(b"\xff" * 6 + mac + b"\x08\x06" + arp)


@contextmanager
def inside(netns: str):
    """Run the body in network namespace ``netns`` (this thread only):
    sockets made there stay there."""
    fd = kernel_netns.open_netns(f"/run/netns/{netns}")
    try:
        with kernel_netns.entered(fd):
            yield
    finally:
        os.close(fd)


def delete_namespace(netns: str) -> bool:
    shutil.rmtree(os.path.join("/etc/netns", netns), ignore_errors=True)
    return not netns_exists(netns) or run("ip", "netns", "delete", netns, check=False).returncode == 0


def delete_link(name: str) -> bool:
    """Delete a link of ours in the root namespace.  A veth whose peer was
    in a namespace just deleted goes by itself, a moment later (the kernel
    cleans namespaces up asynchronously): then deleting it may fail."""
    if not link_exists(name) or run("ip", "link", "delete", name, check=False).returncode == 0:
        return True
    deadline = time.monotonic() + 5
    while link_exists(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not link_exists(name)


def remove(host: dict) -> None:
    """A host's namespace (its eth0 and veth pair with it) and directory."""
    if not delete_namespace(host["netns"]):
        raise LabError(f"could not delete netns {host['netns']}")
    if host.get("veth"):
        delete_link(host["veth"])
    shutil.rmtree(host["dir"], ignore_errors=True)
