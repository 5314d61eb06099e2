"""Anti-spoofing seen on the wire: frames and packets crafted with scapy,
which no ordinary command sends (a forged source MAC or address), each
next to a positive control that shows the same frame does pass when it
should, so a drop is the plugin's doing."""
import pytest

from conftest import add, delete, in_ruleset, run
from packets import Capture, send, tags
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

MARK = 0x88B5  # IEEE local experimental ethertype: nothing else sends it


def mac_of(netns, ifname):
    args = ("ip", "-n", netns, "-br", "link", "show", ifname) if netns else ("ip", "-br", "link", "show", ifname)
    return run(*args).stdout.split()[2]


def test_macspoofchk_passes_the_pods_own_mac_and_drops_forged_and_borrowed_ones(bin_dir, net, make_netns):
    net["macspoofchk"] = True
    a, b = make_netns(), make_netns()
    for ns, cid in ((a, "a"), (b, "b")):
        rc, res = add(bin_dir, net, ns, cid=cid)
        assert rc == 0, res
    own, others = mac_of(a, "eth0"), mac_of(b, "eth0")
    frames = [Ether(src=src, dst="ff:ff:ff:ff:ff:ff", type=MARK) / tag
              for src, tag in ((own, b"own-mac"), ("02:de:ad:be:ef:01", b"forged-mac"), (others, b"other-pods-mac"))]
    marked = lambda frame: frame.type == MARK  # noqa: E731
    on_host, in_b = Capture(None, net["bridge"], marked), Capture(b, "eth0", marked)
    send(a, "eth0", frames)
    assert tags(on_host.stop()) == {b"own-mac"}  # the positive control passes, the others do not
    assert tags(in_b.stop(0)) == {b"own-mac"}
    for ns, cid in ((a, "a"), (b, "b")):
        assert delete(bin_dir, net, ns, cid=cid)[0] == 0
    assert not in_ruleset(net)


@pytest.fixture
def host(bin_dir, net, make_netns):
    from test_firewall import Host

    h = Host(bin_dir, net, make_netns)
    # no reverse-path filter in the host: only the firewall may drop what follows
    for key in ("all", "default"):
        run(*h.prefix, "sysctl", "-qw", f"net.ipv4.conf.{key}.rp_filter=0")
    yield h
    h.cleanup()


def test_same_bridge_isolation_holds_against_a_forged_source_address(host):
    """A pod on another bridge forging the address of a pod on the isolated
    pod's own bridge still cannot reach it: isolation is by the interface a
    packet arrives on, not by what it claims to come from."""
    a1, a2, b1 = host.make_netns(), host.make_netns(), host.make_netns()
    ra1 = host.attach(host.net_a, a1, "a1", ingressPolicy="same-bridge")
    ra2 = host.attach(host.net_a, a2, "a2", ingressPolicy="same-bridge")
    host.attach(host.net_b, b1, "b1")
    target, trusted = ra1["ips"][0]["address"].split("/")[0], ra2["ips"][0]["address"].split("/")[0]

    def crafted(pod, bridge, tag):
        to_gateway = Ether(src=mac_of(pod, "eth0"), dst=mac_of(host.host, bridge))
        return to_gateway / IP(src=trusted, dst=target, ttl=64) / UDP(sport=40000, dport=4789) / tag

    def arrives(pod, bridge, tag):
        capture = Capture(a1, "eth0", lambda frame: frame.haslayer(UDP) and frame[UDP].dport == 4789)
        send(pod, "eth0", crafted(pod, bridge, tag))
        return tag in tags(capture.stop())

    assert arrives(a2, host.net_a["bridge"], b"from-a2-routed")        # control: same bridge, via the gateway
    assert not arrives(b1, host.net_b["bridge"], b"forged-from-b1")   # forged across bridges: dropped
    host.detach(a1, "a1")
    host.attach(host.net_a, a1, "a1", ingressPolicy="open")
    assert arrives(b1, host.net_b["bridge"], b"forged-from-b1-open")  # control: the firewall was the one dropping
