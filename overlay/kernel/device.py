"""Our VXLAN device and the VTEP addresses on it."""
import errno
import socket

import netaddr
from pyroute2 import IPRoute, NetlinkError

from ..desired import DeviceSpec
from . import absent_ok

IFF_UP = 0x1
IFA_F_NODAD = 0x02


class ForeignDevice(Exception):
    """A device with our name that is not a VXLAN device: not ours to touch."""


def index_of(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return found[0] if found else None


def observe(ipr: IPRoute, name: str) -> tuple[DeviceSpec | None, int | None, bool]:
    """(spec as the kernel has it, ifindex, is up); (None, None, False) when absent."""
    try:
        link = ipr.link("get", ifname=name)[0]
    except NetlinkError as e:
        if e.code == errno.ENODEV:
            return None, None, False
        raise
    info = link.get("IFLA_LINKINFO")
    if info is None or info.get("IFLA_INFO_KIND") != "vxlan":
        raise ForeignDevice(f"{name} exists and is not a VXLAN device")
    data = info.get("IFLA_INFO_DATA")
    lower = data.get("IFLA_VXLAN_LINK")
    lower_name = ipr.link("get", index=lower)[0].get("IFLA_IFNAME") if lower else ""
    spec = DeviceSpec(name=name, vni=data.get("IFLA_VXLAN_ID"), port=data.get("IFLA_VXLAN_PORT"),
                      link=lower_name,
                      local=data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6") or "",
                      mac=link.get("IFLA_ADDRESS"), mtu=link.get("IFLA_MTU"))
    return spec, link["index"], bool(link["flags"] & IFF_UP)


def create(ipr: IPRoute, spec: DeviceSpec) -> int:
    """A VXLAN device with learning off: every remote is an FDB entry we put."""
    local = "vxlan_local" if netaddr.IPAddress(spec.local).version == 4 else "vxlan_local6"
    ipr.link("add", ifname=spec.name, kind="vxlan", vxlan_id=spec.vni, vxlan_port=spec.port,
             vxlan_link=index_of(ipr, spec.link), vxlan_learning=0, address=spec.mac, mtu=spec.mtu,
             **{local: spec.local})
    index = index_of(ipr, spec.name)
    ipr.link("set", index=index, state="up")
    return index


def update(ipr: IPRoute, index: int, spec: DeviceSpec) -> None:
    ipr.link("set", index=index, address=spec.mac, mtu=spec.mtu, state="up")


def delete(ipr: IPRoute, name: str) -> None:
    index = index_of(ipr, name)
    if index is not None:
        absent_ok(ipr.link, "del", index=index)


def addresses(ipr: IPRoute, index: int) -> frozenset[str]:
    """Our VTEP addresses: every address on the device but the kernel's
    own IPv6 link-local one."""
    found = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for msg in ipr.addr("dump", family=family, index=index):
            address = msg.get("IFA_ADDRESS")
            if not netaddr.IPAddress(address).is_link_local():
                found.add(f"{address}/{msg['prefixlen']}")
    return frozenset(found)


def add_address(ipr: IPRoute, index: int, cidr: str) -> None:
    address, length = cidr.split("/")
    flags = IFA_F_NODAD if ":" in address else 0  # a VTEP address is ours alone: no DAD wait
    ipr.addr("replace", index=index, address=address, prefixlen=int(length), flags=flags)


def remove_address(ipr: IPRoute, index: int, cidr: str) -> None:
    address, length = cidr.split("/")
    absent_ok(ipr.addr, "del", index=index, address=address, prefixlen=int(length))
