"""portmap chained after bridge, in real namespaces.  Everything runs inside
a private "host" netns (``ip netns exec HOST``), so the machine's own
ruleset is never touched: the host netns gets the bridge, our nft table and
the conntrack entries; a "client" netns stands for a remote machine."""
import os
import random
import subprocess

import pytest

from cni_plugins.kernel import netns
from cni_plugins.kernel.conntrack import Conntrack
from cni_plugins.portmap import PROTOCOLS
from conftest import exec_plugin, run, unique

PY = "/usr/bin/python3"

SERVER = r"""
import socket, sys
proto, port, token = sys.argv[1], int(sys.argv[2]), sys.argv[3]
kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
s = socket.socket(socket.AF_INET6, kind)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", port))
if kind == socket.SOCK_STREAM:
    s.listen(16)
print("ready", flush=True)
def name(peer):
    return peer[0].removeprefix("::ffff:")
while True:
    if kind == socket.SOCK_STREAM:
        c, peer = s.accept()
        c.sendall(f"{token} {name(peer)}\n".encode())
        c.close()
    else:
        data, peer = s.recvfrom(2048)
        s.sendto(f"{token} {name(peer)}\n".encode(), peer)
"""

CLIENT = r"""
import socket, sys
proto, addr, port, sport = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
fam = socket.AF_INET6 if ":" in addr else socket.AF_INET
s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.settimeout(float(sys.argv[5]) if len(sys.argv) > 5 else 2)
if sport:
    s.bind(("", sport))
try:
    if proto == "tcp":
        s.connect((addr, port))
        print(s.recv(200).decode().strip())
    else:
        s.sendto(b"hi", (addr, port))
        print(s.recvfrom(200)[0].decode().strip())
except OSError:
    print("")
"""


def request(ns, proto, addr, port, sport=0, timeout=2):
    """What the server answered ('TOKEN PEER'), or '' when nothing did."""
    cmd = ["ip", "netns", "exec", ns, PY, "-c", CLIENT, proto, addr, str(port), str(sport), str(timeout)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30).stdout.strip()


class Lab:
    """A private host netns with a bridge network, a client netns on an
    'external' link, pods chained bridge -> portmap, servers in pods."""

    def __init__(self, bin_dir, net, make_netns):
        # a pod reaching its own published port needs the bridge port's
        # hairpin mode, as with the reference plugins
        net["hairpinMode"] = True
        self.bin_dir, self.net, self.make_netns = bin_dir, net, make_netns
        self.host = make_netns("ph")
        self.client = make_netns("pc")
        self.prefix = ("ip", "netns", "exec", self.host)
        self.procs, self.attached = [], []
        third = random.randint(0, 255)
        self.ext_net = f"10.23{random.randint(0, 9)}.{third}"
        self.ext_ip, self.client_ip = f"{self.ext_net}.1", f"{self.ext_net}.2"
        self.ext6_net = f"fd00:23{random.randint(0, 9)}:{random.randint(0, 0xffff):x}:1"
        self.ext6_ip, self.client6_ip = f"{self.ext6_net}::1", f"{self.ext6_net}::2"
        a, b = unique("pxa"), unique("pxb")
        run("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        run("ip", "link", "set", a, "netns", self.host)
        run("ip", "link", "set", b, "netns", self.client)
        self.ext = a
        for ns, dev, v4, v6 in ((self.host, a, self.ext_ip, self.ext6_ip), (self.client, b, self.client_ip,
                                                                             self.client6_ip)):
            run("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
            run("ip", "-n", ns, "link", "set", dev, "up")

    def plugin(self, plugin, command, conf, pod, cid, **kw):
        return exec_plugin(self.bin_dir, plugin, command, conf, netns=f"/run/netns/{pod}" if pod else "",
                           container_id=cid, prefix=self.prefix, **kw)

    def pm_conf(self, prev, mappings, version=None, **extra):
        version = version or self.net["cniVersion"]
        conf = {"cniVersion": version, "name": self.net["name"], "type": "portmap",
                "runtimeConfig": {"portMappings": mappings}, **extra}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def attach(self, pod, cid, mappings, net=None, **extra):
        """bridge ADD then portmap ADD; returns (bridge result, portmap result)."""
        net = net or self.net
        rc, res = self.plugin("bridge", "ADD", net, pod, cid)
        assert rc == 0, res
        self.attached.append((pod, cid, net, mappings, res, extra))
        rc, out = self.plugin("portmap", "ADD", self.pm_conf(res, mappings, net["cniVersion"], **extra), pod, cid)
        assert rc == 0, out
        return res, out

    def detach(self, pod, cid):
        for item in list(self.attached):
            if item[:2] == (pod, cid):
                _, _, net, mappings, res, extra = item
                rc, out = self.plugin("portmap", "DEL", self.pm_conf(res, mappings, net["cniVersion"], **extra),
                                      pod, cid)
                assert rc == 0, out
                assert self.plugin("bridge", "DEL", net, pod, cid)[0] == 0
                self.attached.remove(item)

    def serve(self, pod, proto, port, token):
        p = subprocess.Popen(["ip", "netns", "exec", pod, PY, "-u", "-c", SERVER, proto, str(port), token],
                             stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(p)
        assert p.stdout.readline().strip() == "ready"
        return p

    def route_localnet(self, res):
        bridge = res["interfaces"][0]["name"]
        return run(*self.prefix, "cat", f"/proc/sys/net/ipv4/conf/{bridge}/route_localnet").stdout.strip()

    def nft(self):
        return run(*self.prefix, "nft", "list", "ruleset").stdout

    def conntrack(self, proto, port):
        """'orig-src>orig-dst reply-src' of the host's entries to a port (our
        own ctnetlink client: the conntrack tool is not a dependency)."""
        fd = os.open(f"/run/netns/{self.host}", os.O_RDONLY)
        try:
            with netns.entered(fd):
                ct = Conntrack()
            try:
                entries = ct.entries(4)
            finally:
                ct.close()
        finally:
            os.close(fd)
        return " ".join(f"{o['src']}>{o['dst']}:{r['src']}" for o, r, _ in entries
                        if o["proto"] == PROTOCOLS[proto] and o["dport"] == port)

    def cleanup(self):
        for p in self.procs:
            p.kill()
            p.wait()
        for pod, cid, *_ in list(self.attached):
            try:
                self.detach(pod, cid)
            except AssertionError:
                pass


@pytest.fixture
def lab(bin_dir, net, make_netns):
    lab = Lab(bin_dir, net, make_netns)
    yield lab
    lab.cleanup()


def addr(res, family=4):
    return next(ip["address"].split("/")[0] for ip in res["ips"] if (":" in ip["address"]) == (family == 6))


def gateway(res, family=4):
    return next(ip["gateway"] for ip in res["ips"] if (":" in ip["address"]) == (family == 6))


def hport():
    return random.randint(20000, 40000)


# --- reachability -----------------------------------------------------------------
def test_tcp_published_port_from_outside_host_localhost_pods_and_hairpin(lab):
    pod, other = lab.make_netns(), lab.make_netns()
    port = hport()
    res, out = lab.attach(pod, "web", [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}])
    assert out == res  # the chained result passes through unchanged
    other_res, _ = lab.attach(other, "other", [])
    lab.serve(pod, "tcp", 8080, "web")
    gw = gateway(res)

    # a remote client, through prerouting: no SNAT needed, it sees its own address
    assert request(lab.client, "tcp", lab.ext_ip, port) == f"web {lab.client_ip}"
    # the host itself, on its own address and on localhost (output hook)
    assert request(lab.host, "tcp", lab.ext_ip, port).startswith("web ")
    assert request(lab.host, "tcp", "127.0.0.1", port) == f"web {gw}"
    assert lab.route_localnet(res) == "1"
    # another pod through the gateway address, and the pod itself (hairpin)
    assert request(other, "tcp", gw, port) == f"web {gw}"
    assert request(other, "tcp", lab.ext_ip, port) == f"web {gw}"
    assert request(pod, "tcp", gw, port) == f"web {gw}"
    assert request(pod, "tcp", lab.ext_ip, port) == f"web {gw}"
    # the mapped port only: not some other host port
    assert request(lab.client, "tcp", lab.ext_ip, port + 1) == ""

    # CHECK, then DEL removes every element (and the empty table)
    conf = lab.pm_conf(res, [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}])
    rc, out = lab.plugin("portmap", "CHECK", conf, pod, "web")
    assert rc == 0, out
    assert str(port) in lab.nft()
    lab.detach(pod, "web")
    assert "pycni_portmap" not in lab.nft()
    assert request(lab.client, "tcp", lab.ext_ip, port) == ""
    assert other_res


def test_udp_flow_reaches_the_new_container_after_del_and_readd(lab):
    """Upstream's open bug: a UDP flow's conntrack entry keeps DNATing to the
    deleted container.  DEL flushes it; ADD flushes entries made while no
    mapping existed.  The client keeps one source port throughout."""
    port, sport = hport(), random.randint(41000, 50000)
    mapping = [{"hostPort": port, "containerPort": 5353, "protocol": "udp"}]
    one, two, bystander = lab.make_netns(), lab.make_netns(), lab.make_netns()
    # keeps the host's nat hooks (bridge masquerade), so conntrack stays on, as on a real node
    lab.attach(bystander, "bystander", [])
    r1, _ = lab.attach(one, "one", mapping)
    lab.serve(one, "udp", 5353, "one")
    assert request(lab.client, "udp", lab.ext_ip, port, sport) == f"one {lab.client_ip}"
    entries = lab.conntrack("udp", port)
    assert addr(r1) in entries

    lab.detach(one, "one")
    assert addr(r1) not in lab.conntrack("udp", port)
    # the flow goes on while nothing is published: this makes a plain entry to the host
    assert request(lab.client, "udp", lab.ext_ip, port, sport) == ""
    assert f":{lab.ext_ip}" in lab.conntrack("udp", port)  # replied by the host itself

    r2, _ = lab.attach(two, "two", mapping)
    assert addr(r2) != addr(r1)
    assert f":{lab.ext_ip}" not in lab.conntrack("udp", port)  # ADD flushed it
    lab.serve(two, "udp", 5353, "two")
    assert request(lab.client, "udp", lab.ext_ip, port, sport) == f"two {lab.client_ip}"


def test_ipv6_published_port(lab):
    third = random.randint(0, 0xFFFF)
    lab.net["ipam"]["ranges"].append([{"subnet": f"fd00:24{random.randint(0, 9)}:{third:x}::/64"}])
    pod = lab.make_netns()
    port = hport()
    res, _ = lab.attach(pod, "v6", [{"hostPort": port, "containerPort": 8080, "protocol": "tcp"}])
    lab.serve(pod, "tcp", 8080, "six")
    # the first packet waits for neighbour discovery towards the pod
    assert request(lab.client, "tcp", lab.ext6_ip, port, timeout=8) == f"six {lab.client6_ip}"
    assert request(lab.client, "tcp", lab.ext_ip, port) == f"six {lab.client_ip}"
    # hairpin over IPv6 is masqueraded to the gateway as well
    assert request(pod, "tcp", gateway(res, 6), port) == f"six {gateway(res, 6)}"
    lab.detach(pod, "v6")
    assert "pycni_portmap" not in lab.nft()


def test_host_ip_restricts_the_match_and_family(lab):
    second = f"{lab.ext_net}.3"
    run("ip", "-n", lab.host, "addr", "add", f"{second}/24", "dev", lab.ext)
    pod = lab.make_netns()
    port = hport()
    lab.attach(pod, "hip", [{"hostPort": port, "containerPort": 8080, "protocol": "tcp", "hostIP": lab.ext_ip}])
    lab.serve(pod, "tcp", 8080, "hip")
    assert request(lab.client, "tcp", lab.ext_ip, port) == f"hip {lab.client_ip}"
    assert request(lab.client, "tcp", second, port) == ""
    assert request(lab.client, "tcp", lab.ext6_ip, port) == ""
    lab.detach(pod, "hip")
    assert "pycni_portmap" not in lab.nft()


def test_snat_false_publishes_without_masquerade(lab):
    pod = lab.make_netns()
    port = hport()
    res, _ = lab.attach(pod, "nosnat", [{"hostPort": port, "containerPort": 8080}], snat=False)
    lab.serve(pod, "tcp", 8080, "plain")
    assert request(lab.client, "tcp", lab.ext_ip, port) == f"plain {lab.client_ip}"
    assert "snat4" in lab.nft() and addr(res) + " . tcp" not in lab.nft()
    lab.detach(pod, "nosnat")


def test_many_mappings_share_two_lookups(lab):
    """Adding mappings adds elements, never rules."""
    pod = lab.make_netns()
    base = hport()
    mappings = [{"hostPort": base + i, "containerPort": 8000 + i, "protocol": "udp" if i % 2 else "tcp"}
                for i in range(40)]
    lab.attach(pod, "many", mappings[:1])
    rules_one = lab.nft().count("jump hostports") + lab.nft().count("dnat ")
    lab.detach(pod, "many")
    lab.attach(pod, "many", mappings)
    rules_many = lab.nft().count("jump hostports") + lab.nft().count("dnat ")
    assert rules_one == rules_many
    lab.serve(pod, "tcp", 8010, "tenth")
    assert request(lab.client, "tcp", lab.ext_ip, base + 10) == f"tenth {lab.client_ip}"
    lab.detach(pod, "many")


# --- chaining, CHECK, DEL, GC -----------------------------------------------------------
@pytest.mark.parametrize("version", ["0.3.1", "1.0.0", "1.1.0"])
def test_chaining_passes_prev_result_through(lab, version):
    lab.net["cniVersion"] = version
    pod = lab.make_netns()
    res, out = lab.attach(pod, "chain", [{"hostPort": hport(), "containerPort": 80}])
    assert out == res and out["cniVersion"] == version
    if version == "0.3.1":
        assert out["ips"][0]["version"] == "4"
    lab.detach(pod, "chain")


def test_check_detects_a_removed_element(lab):
    pod = lab.make_netns()
    port = hport()
    mapping = [{"hostPort": port, "containerPort": 80}]
    res, _ = lab.attach(pod, "chk", mapping)
    run(*lab.prefix, "nft", "delete", "element", "inet", "pycni_portmap", "addr4", f"{{ tcp . {port} }}")
    rc, out = lab.plugin("portmap", "CHECK", lab.pm_conf(res, mapping), pod, "chk")
    assert rc != 0 and out["code"] == 104 and "addr4" in out["msg"]
    lab.detach(pod, "chk")


def test_del_without_prev_result_or_netns_removes_everything(lab):
    pod = lab.make_netns()
    port = hport()
    mapping = [{"hostPort": port, "containerPort": 80, "protocol": "udp"}]
    res, _ = lab.attach(pod, "bare", mapping)
    assert str(port) in lab.nft()
    bare = {"cniVersion": "1.0.0", "name": lab.net["name"], "type": "portmap"}
    rc, out = lab.plugin("portmap", "DEL", bare, "", "bare")
    assert rc == 0, out
    assert "pycni_portmap" not in lab.nft()
    assert lab.plugin("portmap", "DEL", bare, "", "bare")[0] == 0  # idempotent
    assert lab.plugin("portmap", "DEL", bare, "", "never-added")[0] == 0


def test_gc_drops_attachments_not_listed_as_valid(lab):
    lab.net["cniVersion"] = "1.1.0"
    keep, stale = lab.make_netns(), lab.make_netns()
    pk, ps = hport(), hport()
    rk, _ = lab.attach(keep, "keep", [{"hostPort": pk, "containerPort": 80}])
    rs, _ = lab.attach(stale, "stale", [{"hostPort": ps, "containerPort": 80}])
    gc = {"cniVersion": "1.1.0", "name": lab.net["name"], "type": "portmap",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, out = lab.plugin("portmap", "GC", gc, "", "")
    assert rc == 0, out
    rules = lab.nft()
    assert f"tcp . {pk} : {addr(rk)}" in rules and f"tcp . {ps}" not in rules


# --- errors ----------------------------------------------------------------------------------
def test_missing_prev_result_is_invalid_config(lab):
    pod = lab.make_netns()
    conf = lab.pm_conf(None, [{"hostPort": hport(), "containerPort": 80}])
    rc, out = lab.plugin("portmap", "ADD", conf, pod, "noprev")
    assert rc != 0 and out["code"] == 7 and "prevResult" in out["msg"]


@pytest.mark.parametrize("mapping", [
    {"hostPort": 0, "containerPort": 80},
    {"hostPort": 70000, "containerPort": 80},
    {"hostPort": "80", "containerPort": 80},
    {"hostPort": 8080, "containerPort": 80, "protocol": "icmp"},
    {"hostPort": 8080, "containerPort": 80, "hostIP": "not-an-ip"},
    {"containerPort": 80},
])
def test_bad_mapping_is_invalid_config_and_adds_nothing(lab, mapping):
    pod = lab.make_netns()
    rc, res = lab.plugin("bridge", "ADD", lab.net, pod, "bad")
    assert rc == 0, res
    lab.attached.append((pod, "bad", lab.net, [], res, {}))
    rc, out = lab.plugin("portmap", "ADD", lab.pm_conf(res, [mapping]), pod, "bad")
    assert rc != 0 and out["code"] == 7, out
    assert "pycni_portmap" not in lab.nft()


def test_bad_config_keys_are_invalid_config(lab):
    pod = lab.make_netns()
    rc, res = lab.plugin("bridge", "ADD", lab.net, pod, "keys")
    assert rc == 0, res
    lab.attached.append((pod, "keys", lab.net, [], res, {}))
    m = [{"hostPort": hport(), "containerPort": 80}]
    for extra in ({"markMasqBit": 40}, {"markMasqBit": 13, "externalSetMarkChain": "KUBE-MARK-MASQ"},
                  {"snat": "yes"}, {"conditionsV4": ["-d", "1.2.3.4"]}):
        rc, out = lab.plugin("portmap", "ADD", lab.pm_conf(res, m, **extra), pod, "keys")
        assert rc != 0 and out["code"] == 7, (extra, out)
    for extra in ({"markMasqBit": 13}, {"externalSetMarkChain": "KUBE-MARK-MASQ"}, {"backend": "iptables"}):
        conf = lab.pm_conf(res, m, **extra)
        assert lab.plugin("portmap", "ADD", conf, pod, "keys")[0] == 0
        assert lab.plugin("portmap", "DEL", conf, pod, "keys")[0] == 0


def test_a_host_port_taken_by_another_container_is_refused(lab):
    a, b = lab.make_netns(), lab.make_netns()
    port = hport()
    mapping = [{"hostPort": port, "containerPort": 80}]
    ra, _ = lab.attach(a, "first", mapping)
    rc, rb = lab.plugin("bridge", "ADD", lab.net, b, "second")
    assert rc == 0, rb
    lab.attached.append((b, "second", lab.net, [], rb, {}))
    rc, out = lab.plugin("portmap", "ADD", lab.pm_conf(rb, mapping), b, "second")
    assert rc != 0 and out["code"] == 7 and "already" in out["msg"], out
    # the refused container's DEL (runtimes call it after a failed ADD) leaves the first alone
    assert lab.plugin("portmap", "DEL", lab.pm_conf(rb, mapping), b, "second")[0] == 0
    assert f"tcp . {port} : {addr(ra)}" in lab.nft()
