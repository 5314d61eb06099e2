"""Handing out and taking back addresses, over any Store (store.py): the
reference's IPAllocator, one object per network.  No file, lock or disk
detail lives here, so the logic is tested with an in-memory store.
"""
from cni_plugins.core.errors import CNIError, IPAM_CONFLICT, IPAM_EXHAUSTED

from .store import Store, owner_key


class IPAllocator:
    def __init__(self, store: Store):
        self.store = store

    def held_by(self, container_id: str, ifname: str, reservations: dict | None = None) -> list:
        """Addresses held by this attachment: reservations owned by id +
        ifname, or, as the reference, if there are none, owned by the id
        alone (the format before ifname was recorded)."""
        if reservations is None:
            reservations = self.store.reservations()
        key = owner_key(container_id, ifname)
        found = [a for a, owner in reservations.items() if owner == key]
        if not found:
            old = container_id.strip()
            found = [a for a, owner in reservations.items() if owner == old]
        return found

    def allocate(self, range_sets: list, requested: list, container_id: str, ifname: str) -> list:
        """Reserve one address per range set for this attachment, all or
        none; returns [(address, range)] in range-set order.

        Errors: 100 when a range set is full, 101 when a requested address
        is taken, out of every range or a gateway, or when the attachment
        already holds an address in a range set (the reference forbids
        duplicate allocation)."""
        requested, store, owner = list(requested), self.store, owner_key(container_id, ifname)
        out, last = [], {}
        with store:
            try:
                held = None
                for rs in range_sets:
                    want = next((a for a in requested if rs.range_for(a) is not None), None)
                    if want is not None:
                        requested.remove(want)
                        addr, rng = want, rs.range_for(want)
                        if want == rng.gateway:
                            raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                           f"requested ip {want} is subnet's gateway")
                        if not store.reserve(want, owner):
                            raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                           f"requested IP address {want} is not available in range set {rs}")
                    else:
                        if held is None:
                            held = self.held_by(container_id, ifname)
                        dup = next((a for a in held if rs.range_for(a) is not None), None)
                        if dup is not None:
                            raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                           f"{dup} has been allocated to {container_id}, "
                                           "duplicate allocation is not allowed")
                        addr, rng = next(((a, r) for a, r in rs.candidates(store.last_reserved(rs.index))
                                          if store.reserve(a, owner)), (None, None))
                        if addr is None:
                            raise CNIError(IPAM_EXHAUSTED, f"failed to allocate for range {rs.index}: "
                                           f"no IP addresses available in range set: {rs}")
                    out.append((addr, rng))
                    last[rs.index] = addr
                if requested:
                    raise CNIError(IPAM_CONFLICT, "failed to allocate all requested IPs: "
                                   + " ".join(str(a) for a in requested))
                for index, addr in last.items():
                    store.set_last_reserved(index, addr)
            except BaseException:
                for addr, _ in out:
                    store.remove(addr)
                raise
        return out

    def _release_if_owned(self, candidates: dict) -> list[str]:
        """Under the lock: remove each {address: owner} candidate whose
        owner is still that one.  Returns the addresses removed."""
        with self.store:
            released = []
            for addr, owner in candidates.items():
                if self.store.owner(addr) == owner:
                    self.store.remove(addr)
                    released.append(str(addr))
            return released

    def release(self, container_id: str, ifname: str) -> list[str]:
        """Free every address this attachment holds; returns them (may be
        none).  Reservations are read without the lock; the lock is taken
        only to re-check and remove the candidates found."""
        reservations = self.store.reservations()
        mine = {a: reservations[a] for a in self.held_by(container_id, ifname, reservations)}
        return self._release_if_owned(mine) if mine else []

    def collect(self, valid: set[tuple[str, str]]) -> list[str]:
        """Free every reservation not owned by a (containerID, ifname) in
        ``valid``; returns the addresses released.  Reservations in the
        old id-only format are kept if any valid attachment has that id."""
        keep = {owner_key(cid, ifname) for cid, ifname in valid} | {cid.strip() for cid, _ in valid}
        stale = {a: owner for a, owner in self.store.reservations().items() if owner not in keep}
        return self._release_if_owned(stale) if stale else []
