"""The lease store interface every backend implements, and what they share.

A store hands out per-node subnet leases out of the cluster's `Network` and
tells every node about everyone's leases.  The controller talks to nothing
else, so a backend is added without touching it:

- ``acquire(request)``: the node's live lease if it has one (republished
  with the request's attributes), else its ``preferred`` subnet if free,
  else a free subnet; atomic against other nodes acquiring at once.
- ``renew(lease)``: pushes the expiry out by the TTL and publishes the
  lease's attributes if they changed (an underlay address that moved).  A
  lease that expired meanwhile is taken again when its subnet is still
  free; `LeaseLost` when another node has it now.
- ``release(lease)``: gives it up at once (a clean leave).
- ``list()``: every live lease and the revision the list is as of.
- ``watch(since)``: a `LeaseWatch`, iterating `WatchBatch`es from that
  revision on; the first batch, and any after the store lost track (etcd
  compaction, a reconnect past history), is a reset carrying every live
  lease, so no change can be missed.  ``close()`` from another thread ends
  the iteration.

A store whose subnets are assigned elsewhere (Kubernetes: a Node's
``spec.podCIDRs``) implements ``acquire`` by reading them and publishing
the node's attributes; see overlay/README.md.

Errors: `StoreUnavailable` when no endpoint answers (the caller keeps its
dataplane and retries), `LeaseLost`, `NoFreeSubnet`.
"""
import random
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Iterable, Iterator

from ..lease import Lease, LeaseRequest, subnet_key
from ..network import Network

ENUMERABLE_SLOTS = 1 << 16
SAMPLED_SLOTS = 1024


class StoreError(Exception):
    pass


class StoreUnavailable(StoreError):
    pass


class LeaseLost(StoreError):
    pass


class NoFreeSubnet(StoreError):
    pass


@dataclass(frozen=True)
class LeaseEvent:
    key: str
    lease: Lease | None         # None: the lease is gone (released or expired)


@dataclass(frozen=True)
class WatchBatch:
    events: tuple[LeaseEvent, ...]
    reset: bool = False         # events are every live lease; forget the rest
    revision: int = 0


class LeaseWatch(ABC):
    @abstractmethod
    def __iter__(self) -> Iterator[WatchBatch]: ...

    @abstractmethod
    def close(self) -> None:
        """Thread-safe; the iterator ends soon after."""


class LeaseStore(ABC):
    def __init__(self, network: Network):
        self.network = network

    @abstractmethod
    def acquire(self, request: LeaseRequest) -> Lease: ...

    @abstractmethod
    def renew(self, lease: Lease) -> Lease: ...

    @abstractmethod
    def release(self, lease: Lease) -> None: ...

    @abstractmethod
    def list(self) -> tuple[list[Lease], int]: ...

    @abstractmethod
    def watch(self, since: int | None = None) -> LeaseWatch: ...

    def close(self) -> None:
        pass

    # --- shared by the stores that allocate subnets themselves -------------------
    def lease_for(self, request: LeaseRequest, slot: int, expires: float) -> Lease:
        subnet, subnet6 = self.network.subnets(slot)
        return Lease(node=request.node, subnet=subnet, subnet6=subnet6, public_ip=request.public_ip,
                     vtep_mac=request.vtep_mac, ttl=request.ttl, expires=expires)

    def candidate_slots(self, request: LeaseRequest, taken_keys: Iterable[str]) -> Iterator[int]:
        """Slots to try, best first: the preferred subnet if it is one of
        ours and free, then free ones in random order (nodes starting
        together rarely collide, unlike lowest-first).  A huge plan (an
        IPv6-only /32 of /64s) is sampled rather than enumerated."""
        taken = set(taken_keys)
        preferred = self.network.slot_of(request.preferred) if request.preferred else None
        if preferred is not None and self.key_of(preferred) not in taken:
            yield preferred
        count = self.network.slot_count
        if count <= ENUMERABLE_SLOTS:
            free = [slot for slot in range(count) if slot != preferred and self.key_of(slot) not in taken]
            random.shuffle(free)
            yield from free
        else:
            for _ in range(SAMPLED_SLOTS):
                slot = random.randrange(count)
                if self.key_of(slot) not in taken:
                    yield slot

    def no_free_subnet(self) -> NoFreeSubnet:
        return NoFreeSubnet(f"no free subnet left in {', '.join(self.network.cidrs())}")

    def key_of(self, slot: int) -> str:
        subnet, subnet6 = self.network.subnets(slot)
        return subnet_key(subnet or subnet6)


def own_lease(leases: Iterable[Lease], node: str) -> Lease | None:
    return next((lease for lease in leases if lease.node == node), None)
