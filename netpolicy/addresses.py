"""Sets of addresses as sorted disjoint integer ranges per family.

netaddr does the address parsing and the ipBlock arithmetic (cidr minus
except); ranges rather than CIDRs are what nftables interval maps take, and
the complement of n scattered pod addresses is n+1 ranges but up to 32n
CIDRs.
"""
from __future__ import annotations

import bisect
from functools import lru_cache
from dataclasses import dataclass

import netaddr

from .model import IPBlock

Ranges = tuple[tuple[int, int], ...]
FAMILY_MAX = {4: 2**32 - 1, 6: 2**128 - 1}


@lru_cache(maxsize=65536)  # pods' addresses are parsed over and over (peers, kernel listings)
def parse_address(text: str) -> tuple[int, int]:
    address = netaddr.IPAddress(text)
    return address.version, address.value


def _merge(ranges) -> Ranges:
    merged: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple((lo, hi) for lo, hi in merged)


@dataclass(frozen=True)
class AddressSet:
    v4: Ranges = ()
    v6: Ranges = ()

    @classmethod
    def everything(cls) -> AddressSet:
        return cls(((0, FAMILY_MAX[4]),), ((0, FAMILY_MAX[6]),))

    @classmethod
    def of_addresses(cls, addresses) -> AddressSet:
        found: dict[int, list] = {4: [], 6: []}
        for text in addresses:
            version, value = parse_address(text)
            found[version].append((value, value))
        return cls(_merge(found[4]), _merge(found[6]))

    @classmethod
    def of_values(cls, version: int, values) -> AddressSet:
        """Single addresses of one family, as integers."""
        ranges = _merge((v, v) for v in values)
        return cls(ranges, ()) if version == 4 else cls((), ranges)

    @classmethod
    def of_ip_block(cls, block: IPBlock) -> AddressSet:
        network = netaddr.IPNetwork(block.cidr)
        kept = netaddr.IPSet([network]) - netaddr.IPSet(block.excepts)
        ranges = tuple((r.first, r.last) for r in kept.iter_ipranges())
        return cls(ranges, ()) if network.version == 4 else cls((), ranges)

    def family(self, version: int) -> Ranges:
        return self.v4 if version == 4 else self.v6

    def __or__(self, other: AddressSet) -> AddressSet:
        return AddressSet(_merge(self.v4 + other.v4), _merge(self.v6 + other.v6))

    def __contains__(self, text: str) -> bool:
        version, value = parse_address(text)
        ranges = self.family(version)
        i = bisect.bisect_right(ranges, (value, FAMILY_MAX[6] + 1)) - 1
        return i >= 0 and ranges[i][0] <= value <= ranges[i][1]

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


def union(sets) -> AddressSet:
    result = AddressSet()
    for s in sets:
        result = result | s
    return result

