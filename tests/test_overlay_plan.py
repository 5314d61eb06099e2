"""Desired state and diff: pure functions, no root, no kernel."""
import pytest

from overlay.config import ConfigError, from_mapping
from overlay.desired import FdbEntry, Neighbour, Route, Underlay, desired_state
from overlay.diff import Observed, diff
from overlay.lease import Lease
from overlay.network import Network, NetworkConfigError

CONFIG = from_mapping({"clusterCIDR": "10.244.0.0/16", "clusterCIDR6": "fd00:244::/48", "nodeName": "a"})
UNDERLAY = Underlay("eth0", "192.0.2.1", 24, 1500)


def lease(node, slot, ip, mac):
    subnet, subnet6 = CONFIG.network.subnets(slot)
    return Lease(node=node, subnet=subnet, subnet6=subnet6, public_ip=ip, vtep_mac=mac, ttl=60)


A = lease("a", 1, "192.0.2.1", "02:00:00:00:00:0a")
B = lease("b", 2, "192.0.2.2", "02:00:00:00:00:0b")
C = lease("c", 3, "198.51.100.3", "02:00:00:00:00:0c")


def test_every_peer_gets_a_route_neighbour_and_fdb_entry_per_family():
    d = desired_state(A, [A, B, C], CONFIG, UNDERLAY)
    assert d.device.mtu == 1450 and d.device.local == "192.0.2.1" and d.device.mac == A.vtep_mac
    assert d.addresses == {"10.244.1.0/32", "fd00:244:0:1::/128"}
    assert Route("10.244.2.0/24", "10.244.2.0", "pycni.1", True) in d.routes
    assert Route("fd00:244:0:2::/64", "fd00:244:0:2::", "pycni.1", True) in d.routes
    assert len(d.routes) == 4
    assert d.neighbours == {Neighbour("10.244.2.0", B.vtep_mac), Neighbour("fd00:244:0:2::", B.vtep_mac),
                            Neighbour("10.244.3.0", C.vtep_mac), Neighbour("fd00:244:0:3::", C.vtep_mac)}
    assert d.fdb == {FdbEntry(B.vtep_mac, "192.0.2.2"), FdbEntry(C.vtep_mac, "198.51.100.3")}
    assert d.allowed == {"192.0.2.2", "198.51.100.3"}


def test_direct_routing_only_for_peers_on_our_underlay_subnet_and_family():
    config = from_mapping({"clusterCIDR": "10.244.0.0/16", "clusterCIDR6": "fd00:244::/48", "nodeName": "a",
                           "directRouting": True})
    d = desired_state(A, [A, B, C], config, UNDERLAY)
    assert Route("10.244.2.0/24", "192.0.2.2", "eth0", False) in d.routes
    # B's IPv6 subnet cannot go via an IPv4 underlay next hop: VXLAN
    assert Route("fd00:244:0:2::/64", "fd00:244:0:2::", "pycni.1", True) in d.routes
    assert Route("10.244.3.0/24", "10.244.3.0", "pycni.1", True) in d.routes
    assert Neighbour("10.244.2.0", B.vtep_mac) not in d.neighbours


def test_ipv6_underlay_overhead_and_configured_mtu():
    v6 = Underlay("eth0", "2001:db8::1", 64, 9000)
    peer = lease("b", 2, "2001:db8::2", "02:00:00:00:00:0b")
    assert desired_state(A, [peer], CONFIG, v6).device.mtu == 9000 - 70
    assert desired_state(A, [peer], CONFIG, v6).allowed == {"2001:db8::2"}
    # a peer on the other underlay family cannot be reached by our device
    assert desired_state(A, [B], CONFIG, v6).routes == frozenset()
    fixed = from_mapping({"clusterCIDR": "10.244.0.0/16", "nodeName": "a", "mtu": 1400})
    assert desired_state(A, [], fixed, UNDERLAY).device.mtu == 1400


def test_stale_leases_naming_us_are_skipped():
    old_self = lease("a-old-name", 7, "192.0.2.1", "02:00:00:00:00:07")
    d = desired_state(A, [A, old_self], CONFIG, UNDERLAY)
    assert d.routes == frozenset() and d.allowed == frozenset()


def test_diff_adds_removes_and_replaces_a_moved_node():
    before = desired_state(A, [B, C], CONFIG, UNDERLAY)
    observed = Observed(before.device, True, before.addresses, before.routes, before.neighbours, before.fdb,
                        before.allowed)
    assert not diff(before, observed)
    moved = desired_state(A, [B.replace(public_ip="192.0.2.99")], CONFIG, UNDERLAY)  # C left, B moved
    plan = diff(moved, observed)
    assert plan.device is None
    assert plan.fdb.add == {FdbEntry(B.vtep_mac, "192.0.2.99")}
    assert plan.fdb.remove == {FdbEntry(B.vtep_mac, "192.0.2.2"), FdbEntry(C.vtep_mac, "198.51.100.3")}
    assert {r.dst for r in plan.routes.remove} == {"10.244.3.0/24", "fd00:244:0:3::/64"}
    assert plan.routes.add == frozenset()
    assert plan.allowed == {"192.0.2.99"}


def test_diff_recreates_a_device_whose_fixed_attributes_changed():
    d = desired_state(A, [B], CONFIG, UNDERLAY)
    observed = Observed(d.device, True, d.addresses, d.routes, d.neighbours, d.fdb, d.allowed)
    moved = desired_state(A, [B], CONFIG, Underlay("eth0", "192.0.2.50", 24, 1500))
    plan = diff(moved, observed)
    assert plan.device == "recreate"
    # everything on the old device has to be put on the new one
    assert plan.routes.add == moved.routes and plan.neighbours.add == moved.neighbours
    assert plan.fdb.add == moved.fdb and not plan.routes.remove
    mtu_only = diff(desired_state(A, [B], CONFIG, Underlay("eth0", "192.0.2.1", 24, 9000)), observed)
    assert mtu_only.device == "update" and not mtu_only.routes
    assert diff(d, Observed(None)).device == "create"


def test_network_slots_pair_ipv4_and_ipv6_subnets():
    net = Network(cidr4="10.244.0.0/16", prefix4=24, cidr6="fd00:244::/48", prefix6=80)
    assert net.slot_count == 256
    assert net.subnets(5) == ("10.244.5.0/24", "fd00:244:0:0:5::/80")
    assert net.slot_of("10.244.5.0/24") == 5
    assert net.slot_of("10.244.5.0/25") is None and net.slot_of("10.245.0.0/24") is None
    assert Network(cidr6="fd00::/48").subnets(1) == (None, "fd00:0:0:1::/64")
    with pytest.raises(NetworkConfigError):
        Network(cidr4="10.244.0.0/16", cidr6="fd00::/120", prefix6=124)  # 16 v6 subnets for 256 nodes
    with pytest.raises(NetworkConfigError):
        Network()


def test_config_rejects_typos_and_bad_values():
    with pytest.raises(ConfigError, match="clusterCidr"):
        from_mapping({"clusterCidr": "10.0.0.0/16"})
    with pytest.raises(ConfigError):
        from_mapping({"clusterCIDR": "10.244.0.0/16", "vni": 1 << 24})
    with pytest.raises(ConfigError):
        from_mapping({"clusterCIDR": "10.244.0.0/16", "store": "consul"})
    c = from_mapping({"clusterCIDR": "10.244.0.0/16", "cluster": "blue", "etcdEndpoints": "http://a:1,http://b:2"})
    assert c.state_file == "/run/pycni/overlay/blue.json" and c.etcd_endpoints == ("http://a:1", "http://b:2")
