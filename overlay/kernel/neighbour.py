"""Permanent neighbour entries VTEP address -> VTEP MAC on our device: no
ARP or NDP ever crosses the overlay."""
import socket

from pyroute2 import IPRoute

from ..desired import Neighbour
from . import absent_ok

NUD_PERMANENT = 0x80


def observe(ipr: IPRoute, index: int) -> frozenset[Neighbour]:
    found = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.neigh("dump", family=family, ifindex=index):
            if msg["ifindex"] == index and msg["state"] & NUD_PERMANENT and msg.get("NDA_LLADDR"):
                found.add(Neighbour(msg.get("NDA_DST"), msg.get("NDA_LLADDR")))
    return frozenset(found)


def put(ipr: IPRoute, neighbour: Neighbour, index: int) -> None:
    ipr.neigh("replace", dst=neighbour.address, lladdr=neighbour.mac, ifindex=index, state="permanent")


def remove(ipr: IPRoute, neighbour: Neighbour, index: int) -> None:
    absent_ok(ipr.neigh, "del", dst=neighbour.address, lladdr=neighbour.mac, ifindex=index)
