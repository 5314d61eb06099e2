"""FDB entries VTEP MAC -> underlay address on our VXLAN device."""
from pyroute2 import IPRoute

from ..desired import FdbEntry
from . import absent_ok

ZERO_MAC = "00:00:00:00:00:00"


def observe(ipr: IPRoute, index: int) -> frozenset[FdbEntry]:
    found = set()
    for msg in ipr.fdb("dump", ifindex=index):
        mac, dst = msg.get("NDA_LLADDR"), msg.get("NDA_DST")
        if msg["ifindex"] == index and dst and mac and mac != ZERO_MAC:
            found.add(FdbEntry(mac, dst))
    return frozenset(found)


def put(ipr: IPRoute, entry: FdbEntry, index: int) -> None:
    # append: a VXLAN FDB entry is (MAC, remote); the stale remote of a
    # moved node is removed on its own, before this runs.
    ipr.fdb("append", ifindex=index, lladdr=entry.mac, dst=entry.dst)


def remove(ipr: IPRoute, entry: FdbEntry, index: int) -> None:
    absent_ok(ipr.fdb, "del", ifindex=index, lladdr=entry.mac, dst=entry.dst)
