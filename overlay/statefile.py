"""The node state file: what the `overlay` CNI plugin reads to give pods an
address from this node's subnet and the right MTU.  Its format, reader and
writer belong to the plugin (cni_plugins/overlay.py: `NodeState`), which
must not import this package; here the controller renders its lease into
it, keeps it in step with the kernel's view and retires it on a clean leave.

The file is rewritten when its content differs from what it should be,
including when it was removed or damaged behind our back: a plugin that
finds no usable file answers "try again later", and the next reconcile
(at the latest the slow resync) heals it.
"""
import os

from cni_plugins.overlay import LEFT_SUFFIX, NodeState, NodeStateError, read_state, write_state

from .config import OverlayConfig
from .desired import Underlay
from .lease import Lease
from .network import vtep_address


def render(config: OverlayConfig, lease: Lease, underlay: Underlay, mtu: int) -> NodeState:
    return NodeState(
        cluster=config.cluster, node=lease.node,
        cluster_cidr=config.network.cidr4, cluster_cidr6=config.network.cidr6,
        subnet=lease.subnet, subnet6=lease.subnet6, mtu=mtu,
        vtep={"device": config.device, "mac": lease.vtep_mac,
              "address": vtep_address(lease.subnet), "address6": vtep_address(lease.subnet6)},
        underlay={"interface": underlay.interface, "address": underlay.address})


def read(path: str) -> NodeState | None:
    """The state in a file, or None when absent or unusable."""
    try:
        return read_state(path)
    except (OSError, NodeStateError):
        return None


def sync(path: str, state: NodeState) -> bool:
    """Write ``state`` unless the file already holds it; True if written."""
    if read(path) == state:
        return False
    write_state(path, state)
    return True


def previous_subnet(path: str) -> str | None:
    """The primary subnet of the last run, live or left: preferred again."""
    state = read(path) or read(path + LEFT_SUFFIX)
    return (state.subnet or state.subnet6) if state else None


def retire(path: str) -> None:
    """A clean leave: the plugin must no longer find a state file, but
    the next run should still prefer the same subnet."""
    try:
        os.replace(path, path + LEFT_SUFFIX)
    except FileNotFoundError:
        pass
