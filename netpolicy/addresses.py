"""Sets of addresses as sorted disjoint integer ranges per family, and the
partition of several such sets into ranges labelled by the first set that
holds them.

netaddr does the address parsing and the ipBlock arithmetic (cidr minus
except); ranges rather than CIDRs are what nftables interval maps take, and
the complement of n scattered pod addresses is n+1 ranges but up to 32n
CIDRs.
"""
from __future__ import annotations

import bisect
import heapq
from dataclasses import dataclass

import netaddr

from .model import IPBlock

Ranges = tuple[tuple[int, int], ...]
FAMILY_MAX = {4: 2**32 - 1, 6: 2**128 - 1}


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
            address = netaddr.IPAddress(text)
            found[address.version].append((address.value, address.value))
        return cls(_merge(found[4]), _merge(found[6]))

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
        address = netaddr.IPAddress(text)
        ranges = self.family(address.version)
        i = bisect.bisect_right(ranges, (address.value, FAMILY_MAX[6] + 1)) - 1
        return i >= 0 and ranges[i][0] <= address.value <= ranges[i][1]

    def __bool__(self) -> bool:
        return bool(self.v4 or self.v6)


def union(sets) -> AddressSet:
    result = AddressSet()
    for s in sets:
        result = result | s
    return result


def first_owner(sets: list[Ranges]) -> list[tuple[int, int, int]]:
    """(lo, hi, i) covering the union of ``sets``, each range labelled with
    the lowest index i whose set holds it; adjacent ranges with the same
    label are merged."""
    starts = sorted((lo, hi, i) for i, ranges in enumerate(sets) for lo, hi in ranges)
    cuts = sorted({lo for lo, _, _ in starts} | {hi + 1 for _, hi, _ in starts})
    out: list[list[int]] = []
    active: list[tuple[int, int]] = []  # heap of (owner, hi)
    k = 0
    for a, b in zip(cuts, cuts[1:]):
        while k < len(starts) and starts[k][0] <= a:
            heapq.heappush(active, (starts[k][2], starts[k][1]))
            k += 1
        while active and active[0][1] < a:
            heapq.heappop(active)
        if not active:
            continue
        owner = active[0][0]
        if out and out[-1][2] == owner and out[-1][1] + 1 == a:
            out[-1][1] = b - 1
        else:
            out.append([a, b - 1, owner])
    return [tuple(x) for x in out]
