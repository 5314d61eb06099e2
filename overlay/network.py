"""The cluster's address plan: which per-node subnets exist and which VTEP
address belongs to each.  Pure arithmetic (netaddr), no I/O.

A node's subnets are numbered by *slot*: slot i is the i-th subnet of the
IPv4 cluster CIDR and, on a dual-stack cluster, the i-th subnet of the IPv6
CIDR too.  Deriving the IPv6 subnet from the IPv4 one (instead of allocating
both independently, as flannel does) means that one atomic "create if
absent" on the primary subnet reserves both, so two nodes can never end up
sharing an IPv6 subnet after a race.  It needs the IPv6 CIDR to hold at
least as many subnets as the IPv4 one, which any realistic plan does
(/16 -> 256 /24s against /48 -> 65536 /64s).
"""
from dataclasses import dataclass

import netaddr


WIDTH = {4: 32, 6: 128}


class NetworkConfigError(ValueError):
    pass


@dataclass(frozen=True)
class Network:
    cidr4: str | None = None
    prefix4: int = 24
    cidr6: str | None = None
    prefix6: int = 64

    def __post_init__(self):
        if not self.cidr4 and not self.cidr6:
            raise NetworkConfigError("a cluster CIDR (IPv4, IPv6 or both) is required")
        for cidr, prefix, version in ((self.cidr4, self.prefix4, 4), (self.cidr6, self.prefix6, 6)):
            if not cidr:
                continue
            net = _parse(cidr, version)
            if str(net.cidr) != cidr:
                object.__setattr__(self, "cidr4" if version == 4 else "cidr6", str(net.cidr))
            if not net.prefixlen < prefix <= WIDTH[version] - 2:
                raise NetworkConfigError(f"subnet prefix /{prefix} does not fit in {cidr}")
        if self.cidr4 and self.cidr6 and self._count(6) < self._count(4):
            raise NetworkConfigError(
                f"{self.cidr6} has fewer /{self.prefix6} subnets than {self.cidr4} has /{self.prefix4}s")

    # --- slots ------------------------------------------------------------------
    @property
    def primary_version(self) -> int:
        return 4 if self.cidr4 else 6

    @property
    def slot_count(self) -> int:
        return self._count(self.primary_version)

    def _count(self, version: int) -> int:
        cidr, prefix = self._plan(version)
        return 1 << (prefix - netaddr.IPNetwork(cidr).prefixlen)

    def _plan(self, version: int) -> tuple[str, int]:
        return (self.cidr4, self.prefix4) if version == 4 else (self.cidr6, self.prefix6)

    def _subnet(self, version: int, slot: int) -> str | None:
        cidr, prefix = self._plan(version)
        if not cidr:
            return None
        base = netaddr.IPNetwork(cidr)
        size = 1 << (WIDTH[base.version] - prefix)
        return f"{netaddr.IPAddress(base.first + slot * size, version)}/{prefix}"

    def subnets(self, slot: int) -> tuple[str | None, str | None]:
        """(IPv4 subnet, IPv6 subnet) of a slot; None for a family the cluster lacks."""
        if not 0 <= slot < self.slot_count:
            raise IndexError(slot)
        return self._subnet(4, slot), self._subnet(6, slot)

    def slot_of(self, subnet: str) -> int | None:
        """The slot of a primary-family subnet, or None when it is not one of
        this plan's subnets (another prefix length, outside the CIDR)."""
        cidr, prefix = self._plan(self.primary_version)
        try:
            net = netaddr.IPNetwork(subnet)
        except (netaddr.AddrFormatError, ValueError):
            return None
        base = netaddr.IPNetwork(cidr)
        if net.version != base.version or net.prefixlen != prefix or net not in base or net.ip != net.network:
            return None
        return (net.first - base.first) >> (WIDTH[base.version] - prefix)

    def cidrs(self) -> list[str]:
        return [c for c in (self.cidr4, self.cidr6) if c]


def vtep_address(subnet: str | None) -> str | None:
    """A node's VTEP address is its subnet's network address (x.y.z.0, or
    the IPv6 prefix itself), as flannel does: every peer derives it from the
    lease, and it uses no address host-local could hand to a pod (the
    bridge gateway is .1, pods .2 up)."""
    return str(netaddr.IPNetwork(subnet).network) if subnet else None


def _parse(cidr: str, version: int) -> netaddr.IPNetwork:
    try:
        net = netaddr.IPNetwork(cidr)
    except (netaddr.AddrFormatError, ValueError) as e:
        raise NetworkConfigError(f"bad CIDR {cidr!r}: {e}") from None
    if net.version != version:
        raise NetworkConfigError(f"{cidr} is not an IPv{version} CIDR")
    return net
