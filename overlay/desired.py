"""Desired dataplane state: a pure function of our lease, everyone's leases,
the config and our underlay, as plain data.  No I/O; unit-tested as is.

For each other node, per pod subnet family we also have:
- over VXLAN: a route to its subnet via its VTEP address, onlink, on our
  VXLAN device; a permanent neighbour entry VTEP address -> VTEP MAC; an
  FDB entry VTEP MAC -> its underlay address;
- with directRouting, when its underlay address is on our underlay subnet
  (and of that family): a plain route via its underlay address instead.
Every known node's underlay address is allowed to send us VXLAN.
"""
from dataclasses import dataclass
from typing import Iterable

import netaddr

from .config import OverlayConfig
from .lease import Lease
from .network import vtep_address

# Outer IP + UDP + VXLAN headers + inner Ethernet header.
ENCAP_OVERHEAD = {4: 20 + 8 + 8 + 14, 6: 40 + 8 + 8 + 14}


@dataclass(frozen=True)
class Underlay:
    interface: str
    address: str        # the address VXLAN packets leave from and come to
    prefixlen: int
    mtu: int

    @property
    def version(self) -> int:
        return netaddr.IPAddress(self.address).version

    def on_link(self, address: str) -> bool:
        ip = netaddr.IPAddress(address)
        return ip.version == self.version and ip in netaddr.IPNetwork(f"{self.address}/{self.prefixlen}")


@dataclass(frozen=True)
class DeviceSpec:
    name: str
    vni: int
    port: int
    link: str           # underlay interface
    local: str          # underlay address
    mac: str
    mtu: int


@dataclass(frozen=True)
class Route:
    dst: str
    gateway: str
    device: str
    onlink: bool


@dataclass(frozen=True)
class Neighbour:
    address: str
    mac: str


@dataclass(frozen=True)
class FdbEntry:
    mac: str
    dst: str


@dataclass(frozen=True)
class Desired:
    device: DeviceSpec
    addresses: frozenset[str]        # on the device, "a.b.c.0/32"
    routes: frozenset[Route]
    neighbours: frozenset[Neighbour]
    fdb: frozenset[FdbEntry]
    allowed: frozenset[str]          # underlay addresses VXLAN is accepted from


def overlay_mtu(config: OverlayConfig, underlay: Underlay) -> int:
    return config.mtu or underlay.mtu - ENCAP_OVERHEAD[underlay.version]


def desired_state(own: Lease, leases: Iterable[Lease], config: OverlayConfig, underlay: Underlay) -> Desired:
    device = DeviceSpec(name=config.device, vni=config.vni, port=config.port, link=underlay.interface,
                        local=underlay.address, mac=own.vtep_mac, mtu=overlay_mtu(config, underlay))
    own_subnets = _by_family(own)
    addresses = {f"{vtep_address(subnet)}/{32 if version == 4 else 128}" for version, subnet in own_subnets.items()}
    routes, neighbours, fdb, allowed = set(), set(), set(), set()
    for peer in leases:
        if not _reachable_peer(peer, own, underlay):
            continue
        allowed.add(peer.public_ip)
        direct = config.direct_routing and underlay.on_link(peer.public_ip)
        for version, subnet in _by_family(peer).items():
            if version not in own_subnets:
                continue
            if direct and version == underlay.version:
                routes.add(Route(subnet, peer.public_ip, underlay.interface, onlink=False))
                continue
            vtep = vtep_address(subnet)
            routes.add(Route(subnet, vtep, config.device, onlink=True))
            neighbours.add(Neighbour(vtep, peer.vtep_mac))
            fdb.add(FdbEntry(peer.vtep_mac, peer.public_ip))
    return Desired(device, frozenset(addresses), frozenset(routes), frozenset(neighbours),
                   frozenset(fdb), frozenset(allowed))


def _by_family(lease: Lease) -> dict[int, str]:
    return {version: subnet for version, subnet in ((4, lease.subnet), (6, lease.subnet6)) if subnet}


def _reachable_peer(peer: Lease, own: Lease, underlay: Underlay) -> bool:
    """Another node we can encapsulate to: not us (by name or by a stale
    lease still naming our underlay address) and on our underlay family."""
    if peer.node == own.node or peer.key == own.key or peer.public_ip == underlay.address:
        return False
    try:
        return netaddr.IPAddress(peer.public_ip).version == underlay.version
    except (netaddr.AddrFormatError, ValueError):
        return False
