"""host-local's allocation logic over an in-memory store: round-robin
order, gateways skipped, exhaustion, requested addresses, all-or-none,
duplicate refusal, release of only our own, GC.  No disk, no root."""
import ipaddress

import pytest

from cni_plugins.core.errors import CNIError
from ipam.allocator import IPAllocator
from ipam.config import RangeSet
from ipam.store import owner_key
from ipam_memory_store import MemoryStore

ip = ipaddress.ip_address


def sets(*specs):
    return [RangeSet(spec, i) for i, spec in enumerate(specs)]


def allocate(alloc, range_sets, cid, ifname="eth0", requested=()):
    return [str(a) for a, _ in alloc.allocate(range_sets, [ip(r) for r in requested], cid, ifname)]


def test_round_robin_skips_the_gateway_and_continues_after_the_last_address():
    store = MemoryStore()
    alloc = IPAllocator(store)
    rs = sets([{"subnet": "10.9.0.0/29"}])  # .1 gateway, .2-.6 usable
    assert [allocate(alloc, rs, f"c{i}") for i in range(3)] == [["10.9.0.2"], ["10.9.0.3"], ["10.9.0.4"]]
    alloc.release("c0", "eth0")
    # .2 is free again, but the next one is after the last handed out
    assert allocate(alloc, rs, "c3") == ["10.9.0.5"]
    assert store.last_reserved(0) == ip("10.9.0.5")


def test_exhausted_range_is_code_100_and_reserves_nothing():
    store = MemoryStore()
    alloc = IPAllocator(store)
    rs = sets([{"subnet": "10.9.0.0/30"}])  # only .2
    allocate(alloc, rs, "a")
    with pytest.raises(CNIError) as e:
        allocate(alloc, rs, "b")
    assert e.value.code == 100
    assert store.reservations() == {ip("10.9.0.2"): owner_key("a", "eth0")}


def test_one_address_per_range_set_all_or_none():
    store = MemoryStore()
    alloc = IPAllocator(store)
    full = sets([{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/126"}])  # v6: ::1 gw, ::2, ::3
    assert allocate(alloc, full, "a") == ["10.9.0.2", "fd00:9::2"]
    assert allocate(alloc, full, "b") == ["10.9.0.3", "fd00:9::3"]
    with pytest.raises(CNIError) as e:
        allocate(alloc, full, "c")  # v4 has room, v6 does not: the v4 address goes back
    assert e.value.code == 100
    assert sorted(map(str, store.reservations())) == ["10.9.0.2", "10.9.0.3", "fd00:9::2", "fd00:9::3"]


def test_requested_addresses_taken_gateway_or_outside_every_range_are_code_101():
    store = MemoryStore({ip("10.9.0.7"): owner_key("other", "eth0")})
    alloc = IPAllocator(store)
    rs = sets([{"subnet": "10.9.0.0/24"}])
    assert allocate(alloc, rs, "a", requested=["10.9.0.9"]) == ["10.9.0.9"]
    for wanted in ("10.9.0.7", "10.9.0.1", "10.99.0.5"):
        with pytest.raises(CNIError) as e:
            allocate(alloc, rs, "b", requested=[wanted])
        assert e.value.code == 101, wanted
    assert set(store.reservations()) == {ip("10.9.0.7"), ip("10.9.0.9")}


def test_an_attachment_cannot_hold_two_addresses_of_one_range_set():
    alloc = IPAllocator(MemoryStore())
    rs = sets([{"subnet": "10.9.0.0/24"}])
    allocate(alloc, rs, "a")
    with pytest.raises(CNIError) as e:
        allocate(alloc, rs, "a")
    assert e.value.code == 101 and "duplicate allocation" in e.value.msg
    assert allocate(alloc, rs, "a", ifname="eth1") == ["10.9.0.3"]  # another interface may


def test_release_frees_only_the_attachments_own_addresses_including_the_old_id_only_format():
    store = MemoryStore({ip("10.9.0.20"): "legacy", ip("10.9.0.21"): owner_key("b", "eth0")})
    alloc = IPAllocator(store)
    rs = sets([{"subnet": "10.9.0.0/24"}])
    allocate(alloc, rs, "a")
    assert alloc.release("a", "eth1") == []
    assert alloc.release("a", "eth0") == ["10.9.0.2"]
    assert alloc.release("legacy", "eth0") == ["10.9.0.20"]  # no id+ifname file: the id-only one
    assert set(store.reservations()) == {ip("10.9.0.21")}


def test_collect_keeps_valid_attachments_and_frees_the_rest():
    store = MemoryStore({ip("10.9.0.2"): owner_key("keep", "eth0"), ip("10.9.0.3"): owner_key("gone", "eth0"),
                         ip("10.9.0.4"): "keep", ip("10.9.0.5"): owner_key("keep", "eth1")})
    alloc = IPAllocator(store)
    assert sorted(alloc.collect({("keep", "eth0")})) == ["10.9.0.3", "10.9.0.5"]
    assert set(store.reservations()) == {ip("10.9.0.2"), ip("10.9.0.4")}
