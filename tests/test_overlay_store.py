"""Lease stores against real backends: the file store in a temp directory
and etcd (Debian's etcd-server) on loopback, one member or three."""
import queue
import threading
import time

import netaddr
import pytest

from overlay.lease import LeaseRequest
from overlay.network import Network
from overlay.store import LeaseLost
from overlay.store.etcdstore import EtcdStore
from overlay.store.filestore import FileStore
from overlay_env import EtcdCluster, wait_for
from conftest import unique

NETWORK = Network(cidr4="10.241.0.0/16", prefix4=24, cidr6="fd00:241::/48", prefix6=64)
TTL = 3  # etcd's smallest lease TTL on default timing


@pytest.fixture(scope="module")
def etcd(tmp_path_factory):
    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    yield cluster
    cluster.stop()


@pytest.fixture(params=["file", "etcd"])
def make_store(request, tmp_path):
    """Factory: each call is another agent's view of the same store."""
    made = []
    if request.param == "file":
        path = str(tmp_path / "leases")

        def make():
            made.append(FileStore(NETWORK, path))
            return made[-1]
    else:
        cluster = request.getfixturevalue("etcd")
        prefix = "/" + unique("pycni-test/")

        def make():
            made.append(EtcdStore(NETWORK, cluster.endpoints, prefix))
            return made[-1]
    yield make
    for store in made:
        store.close()


def ask(node, preferred=None, ip="10.250.0.1", ttl=60):
    return LeaseRequest(node=node, public_ip=ip, vtep_mac="02:00:00:00:00:01", ttl=ttl, preferred=preferred)


class Watcher:
    """A store's watch on a thread; batches land on a queue."""

    def __init__(self, store):
        self.watch = store.watch()
        self.batches = queue.Queue()
        self.thread = threading.Thread(target=lambda: [self.batches.put(b) for b in self.watch], daemon=True)
        self.thread.start()
        self.leases = {}

    def wait(self, predicate, what):
        def seen():
            while not self.batches.empty():
                batch = self.batches.get()
                if batch.reset:
                    self.leases = {}
                for e in batch.events:
                    if e.lease is None:
                        self.leases.pop(e.key, None)
                    else:
                        self.leases[e.key] = e.lease
            return predicate(self.leases)
        wait_for(seen, timeout=20, what=what)

    def close(self):
        self.watch.close()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_concurrent_acquires_get_distinct_subnets(make_store):
    stores = [make_store() for _ in range(8)]
    leases = [None] * len(stores)

    def acquire(i):
        leases[i] = stores[i].acquire(ask(f"n{i}"))

    threads = [threading.Thread(target=acquire, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({lease.subnet for lease in leases}) == len(leases)
    assert len({lease.subnet6 for lease in leases}) == len(leases)
    for lease in leases:
        assert netaddr.IPNetwork(lease.subnet) in netaddr.IPNetwork("10.241.0.0/16")
        assert netaddr.IPNetwork(lease.subnet).prefixlen == 24
        assert NETWORK.subnets(NETWORK.slot_of(lease.subnet)) == (lease.subnet, lease.subnet6)
    listed, _ = make_store().list()
    assert sorted(lease.node for lease in listed) == sorted(f"n{i}" for i in range(8))


def test_a_restarted_agent_keeps_its_subnet(make_store):
    first = make_store().acquire(ask("a"))
    # restart while the lease is live: the same lease, with the new attributes
    again = make_store().acquire(ask("a", ip="10.250.0.9"))
    assert again.subnet == first.subnet and again.public_ip == "10.250.0.9"
    assert [lease.public_ip for lease in make_store().list()[0]] == ["10.250.0.9"]
    # after a clean leave, the previous subnet is preferred when still free
    make_store().release(again)
    others = [make_store().acquire(ask(f"o{i}")) for i in range(3)]
    assert first.subnet not in {lease.subnet for lease in others}
    back = make_store().acquire(ask("a", preferred=first.subnet))
    assert back.subnet == first.subnet


def test_renewal_keeps_a_lease_past_its_ttl_and_expiry_frees_it(make_store):
    store = make_store()
    kept = store.acquire(ask("kept", ttl=TTL))
    store.acquire(ask("lapsing", ttl=TTL))
    watcher = Watcher(make_store())
    watcher.wait(lambda leases: {l.node for l in leases.values()} == {"kept", "lapsing"}, "both leases")
    deadline = time.monotonic() + 3 * TTL
    while time.monotonic() < deadline:
        kept = store.renew(kept)
        assert kept.expires > time.time()
        time.sleep(TTL / 3)
    watcher.wait(lambda leases: {l.node for l in leases.values()} == {"kept"}, "the unrenewed lease to expire")
    assert [lease.node for lease in make_store().list()[0]] == ["kept"]
    watcher.close()


def test_watch_sees_join_change_and_leave(make_store):
    watcher = Watcher(make_store())
    store = make_store()
    lease = store.acquire(ask("w"))
    watcher.wait(lambda leases: lease.key in leases, "the join")
    moved = store.renew(lease.replace(public_ip="10.250.0.77"))
    watcher.wait(lambda leases: leases.get(lease.key) and leases[lease.key].public_ip == "10.250.0.77",
                 "the underlay change")
    assert moved.public_ip == "10.250.0.77"
    store.release(moved)
    watcher.wait(lambda leases: lease.key not in leases, "the leave")
    assert make_store().list()[0] == []
    watcher.close()


def test_an_expired_lease_is_renewed_with_the_same_subnet_unless_taken(make_store):
    store = make_store()
    lease = store.acquire(ask("x", ttl=TTL))
    wait_for(lambda: not make_store().list()[0], timeout=4 * TTL, what="expiry")
    renewed = store.renew(lease)
    assert renewed.subnet == lease.subnet
    assert [l.node for l in make_store().list()[0]] == ["x"]
    # now let it expire again, and another node takes the subnet
    wait_for(lambda: not make_store().list()[0], timeout=4 * TTL, what="expiry")
    thief = make_store().acquire(ask("y", preferred=lease.subnet))
    assert thief.subnet == lease.subnet
    with pytest.raises(LeaseLost):
        store.renew(renewed)


@pytest.fixture
def etcd3(tmp_path):
    cluster = EtcdCluster(tmp_path, size=3)
    yield cluster
    cluster.stop()


def test_etcd_keeps_serving_with_one_member_of_three_killed(etcd3):
    prefix = "/" + unique("pycni-test/")
    store = EtcdStore(NETWORK, etcd3.endpoints, prefix)
    observer = EtcdStore(NETWORK, etcd3.endpoints, prefix)
    watcher = Watcher(observer)
    before = store.acquire(ask("before", ttl=TTL))
    watcher.wait(lambda leases: before.key in leases, "a lease before the kill")
    etcd3.kill(0)  # the member both clients talk to first, watch stream included
    after = store.acquire(ask("after"))
    watcher.wait(lambda leases: after.key in leases, "a lease after the kill, through a resumed watch")
    for _ in range(3):
        before = store.renew(before)
        time.sleep(TTL / 3)
    assert {l.node for l in store.list()[0]} == {"before", "after"}
    store.release(after)
    watcher.wait(lambda leases: after.key not in leases, "a release after the kill")
    watcher.close()
