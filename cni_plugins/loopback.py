"""loopback: bring up `lo` in the container's network namespace.

The plan is fixed (lo up, with 127.0.0.1/8, which the kernel gives it), so
there is no config to parse and nothing of ours to record or undo.
"""
import ipaddress

from .core.errors import INVALID_ENV, UNKNOWN_CONTAINER, require_same
from .core.request import Request
from .core.sandbox import Sandbox

PLUGIN = "loopback"
LOOPBACK = ipaddress.ip_interface("127.0.0.1/8")


def add(req: Request) -> dict:
    with Sandbox(req.netns, INVALID_ENV) as sandbox:
        lo = sandbox.nl.link("lo")
        sandbox.nl.set_link(lo.index, up=True)
        addrs = [a for _, a in sandbox.nl.addresses(lo.index)]
    prev = req.prev_result
    if prev is not None:
        return prev  # chained: pass the previous result through unchanged
    return {
        "interfaces": [{"name": "lo", "mac": "00:00:00:00:00:00", "sandbox": req.netns}],
        "ips": [{"address": str(a), "interface": 0} for a in addrs],
    }


def delete(req: Request) -> None:
    # Bringing lo down serves nobody: the netns is about to go, and DEL must
    # succeed when it is already gone.  Nothing of ours exists to remove.
    return None


def check(req: Request) -> None:
    with Sandbox(req.netns, UNKNOWN_CONTAINER) as sandbox:
        lo = sandbox.nl.link("lo")
        if lo is None or not lo.up:
            differences = ["lo is not up"]
        elif LOOPBACK not in {a for _, a in sandbox.nl.addresses(lo.index)}:
            differences = ["lo lacks 127.0.0.1/8"]
        else:
            differences = []
    require_same(PLUGIN, differences)
