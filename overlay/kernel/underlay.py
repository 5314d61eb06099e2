"""The underlay: which interface and address VXLAN runs over, and a
monitor of netlink address and link events so that a change of our own
underlay address is noticed as it happens."""
import os
import select
import socket
import threading
from typing import Callable

from pyroute2 import IPRoute
from pyroute2.netlink.rtnl import RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR, RTMGRP_LINK

from ..desired import Underlay

RT_SCOPE_UNIVERSE = 0
IFA_F_TENTATIVE = 0x40


class UnderlayError(Exception):
    pass


def default_interface(ipr: IPRoute) -> str:
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.route("dump", family=family, table=254):
            if route["dst_len"] == 0 and route.get("RTA_OIF"):
                return ipr.link("get", index=route.get("RTA_OIF"))[0].get("IFLA_IFNAME")
    raise UnderlayError("no underlayInterface configured and no default route to take it from")


def read(ipr: IPRoute, interface: str | None) -> Underlay:
    """The underlay as the kernel has it now: its first global IPv4
    address, else its first usable global IPv6 address."""
    name = interface or default_interface(ipr)
    found = ipr.link_lookup(ifname=name)
    if not found:
        raise UnderlayError(f"underlay interface {name} does not exist")
    index = found[0]
    mtu = ipr.link("get", index=index)[0].get("IFLA_MTU")
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.addr("dump", family=family, index=index):
            flags = msg.get("IFA_FLAGS") or msg["flags"]
            if msg["scope"] == RT_SCOPE_UNIVERSE and not flags & IFA_F_TENTATIVE:
                return Underlay(name, msg.get("IFA_ADDRESS"), msg["prefixlen"], mtu)
    raise UnderlayError(f"underlay interface {name} has no global address")


class AddressMonitor:
    """Calls ``changed()`` from its own thread on every address or link
    event; the caller re-reads the underlay and decides.  The netlink
    socket is made, bound and read in that thread: pyroute2's sync API
    ties a socket to the thread that made it."""

    def __init__(self, changed: Callable[[], None]):
        self.changed = changed
        self.stop_r, self.stop_w = os.pipe2(os.O_CLOEXEC)
        self._bound = threading.Event()
        self.thread = threading.Thread(target=self._run, name="overlay-underlay-monitor", daemon=True)
        self.thread.start()
        self._bound.wait()  # events from here on are seen

    def _run(self) -> None:
        ipr = IPRoute()
        try:
            ipr.bind(groups=RTMGRP_LINK | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR)
            self._bound.set()
            while True:
                ready, _, _ = select.select([ipr.fileno(), self.stop_r], [], [])
                if self.stop_r in ready:
                    return
                if ipr.get():
                    self.changed()
        finally:
            self._bound.set()
            ipr.close()

    def close(self) -> None:
        os.write(self.stop_w, b"x")
        self.thread.join()
        os.close(self.stop_r)
        os.close(self.stop_w)
