"""Routes to other nodes' pod subnets, marked with our own route protocol
number so that we observe and remove only what we made."""
import socket

from pyroute2 import IPRoute

from ..desired import Route
from . import absent_ok

# Unassigned in iproute2's rt_protos; `ip route show proto 112` lists ours.
PROTO = 112
RTNH_F_ONLINK = 4


def observe(ipr: IPRoute, names: dict[int, str]) -> frozenset[Route]:
    found = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.route("dump", family=family, proto=PROTO):
            if msg["proto"] != PROTO or msg.get("RTA_DST") is None:
                continue
            found.add(Route(dst=f"{msg.get('RTA_DST')}/{msg['dst_len']}", gateway=msg.get("RTA_GATEWAY"),
                            device=names.get(msg.get("RTA_OIF"), ""),
                            onlink=bool(msg["flags"] & RTNH_F_ONLINK)))
    return frozenset(found)


def _spec(route: Route, index: int) -> dict:
    return {"dst": route.dst, "gateway": route.gateway, "oif": index, "proto": PROTO,
            **({"flags": ["onlink"]} if route.onlink else {})}


def put(ipr: IPRoute, route: Route, index: int) -> None:
    """Replace: a subnet whose node moved gets its new path in one step."""
    ipr.route("replace", **_spec(route, index))


def remove(ipr: IPRoute, route: Route, index: int | None) -> None:
    if index is not None:  # its device is gone, and the route with it
        absent_ok(ipr.route, "del", **_spec(route, index))
