"""The node state file: what the `overlay` CNI plugin reads to give pods an
address from this node's subnet and the right MTU.  Written atomically
(temporary file + rename) whenever it changes; removed on a clean leave.
A plugin that finds no file, or one it cannot parse, must fail with a
clear CNI error: no agent has run on this node.

Format (JSON, version 1):

    {
      "version": 1,
      "cluster": "default",
      "node": "host-a",
      "clusterCIDR": "10.244.0.0/16",      null on an IPv6-only cluster
      "clusterCIDR6": "fd00:10:244::/48",  null on an IPv4-only cluster
      "subnet": "10.244.3.0/24",           this node's IPv4 pod subnet, or null
      "subnet6": "fd00:10:244:3::/64",     this node's IPv6 pod subnet, or null
      "mtu": 1450,                         MTU for pod interfaces
      "vtep": {"device": "pycni.1", "mac": "..", "address": "10.244.3.0", "address6": ".."}
      "underlay": {"interface": "eth0", "address": "192.0.2.10"}
    }

The plugin uses subnet/subnet6 as host-local ranges (gateway .1, the VTEP
holds the network address), mtu for the pod veth, and clusterCIDR(s) to
masquerade only traffic leaving the cluster.  On a clean leave the file is
renamed to <path>.left (the plugin no longer finds it; the next run prefers
the same subnet again).
"""
import json
import os

from .config import OverlayConfig
from .desired import Underlay
from .files import write_json
from .lease import Lease
from .network import vtep_address

VERSION = 1
LEFT_SUFFIX = ".left"


def render(config: OverlayConfig, lease: Lease, underlay: Underlay, mtu: int) -> dict:
    return {
        "version": VERSION, "cluster": config.cluster, "node": lease.node,
        "clusterCIDR": config.network.cidr4, "clusterCIDR6": config.network.cidr6,
        "subnet": lease.subnet, "subnet6": lease.subnet6, "mtu": mtu,
        "vtep": {"device": config.device, "mac": lease.vtep_mac,
                 "address": vtep_address(lease.subnet), "address6": vtep_address(lease.subnet6)},
        "underlay": {"interface": underlay.interface, "address": underlay.address},
    }


def write(path: str, state: dict) -> None:
    write_json(path, state)


def read(path: str) -> dict | None:
    """A state file's content, or None when absent or unreadable."""
    try:
        with open(path) as f:
            state = json.load(f)
    except (OSError, ValueError):
        return None
    return state if isinstance(state, dict) and state.get("version") == VERSION else None


def previous_subnet(path: str) -> str | None:
    """The primary subnet of the last run, live or left: preferred again."""
    state = read(path) or read(path + LEFT_SUFFIX) or {}
    return state.get("subnet") or state.get("subnet6")


def retire(path: str) -> None:
    """A clean leave: the plugin must no longer find a state file, but
    the next run should still prefer the same subnet."""
    try:
        os.replace(path, path + LEFT_SUFFIX)
    except FileNotFoundError:
        pass
