"""loopback: bring up `lo` in the container's network namespace."""
import ipaddress
import os

from .kernel import netns
from .core.errors import CHECK_FAILED, CNIError, INVALID_ENV, UNKNOWN_CONTAINER
from .kernel.netlink import Netlink
from .core.request import Request


def _lo(netns_path: str, code: int):
    fd = netns.open_netns(netns_path, code)
    try:
        with netns.entered(fd):
            nl = Netlink()
    finally:
        os.close(fd)
    return nl


def add(req: Request) -> dict:
    with _lo(req.netns, INVALID_ENV) as nl:
        lo = nl.link("lo")
        nl.set_link(lo.index, up=True)
        addrs = [a for _, a in nl.addresses(lo.index)]
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
    with _lo(req.netns, UNKNOWN_CONTAINER) as nl:
        lo = nl.link("lo")
        if lo is None or not lo.up:
            raise CNIError(CHECK_FAILED, "loopback: lo is not up")
        if ipaddress.ip_interface("127.0.0.1/8") not in {a for _, a in nl.addresses(lo.index)}:
            raise CNIError(CHECK_FAILED, "loopback: lo lacks 127.0.0.1/8")
