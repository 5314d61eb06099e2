"""firewall chained after bridge, in real namespaces, inside a private host
netns so the machine's own ruleset is never touched."""
import random

import pytest

from conftest import exec_plugin, ping, run, unique


class Host:
    """A private host netns with two bridge networks; pods are chained
    bridge -> firewall (optionally -> portmap first)."""

    def __init__(self, bin_dir, net, make_netns):
        self.bin_dir, self.make_netns = bin_dir, make_netns
        self.host = make_netns("fh")
        self.prefix = ("ip", "netns", "exec", self.host)
        self.net_a = net
        a_subnet = net["ipam"]["ranges"][0][0]["subnet"]
        while True:
            b_subnet = f"10.{random.randint(240, 249)}.{random.randint(0, 255)}.0/24"
            if b_subnet != a_subnet:
                break
        self.net_b = {**net, "name": unique("netb"), "bridge": unique("pbr"),
                      "ipam": {**net["ipam"], "ranges": [[{"subnet": b_subnet}]]}}
        self.attached = []

    def plugin(self, plugin, command, conf, pod, cid):
        return exec_plugin(self.bin_dir, plugin, command, conf, netns=f"/run/netns/{pod}" if pod else "",
                           container_id=cid, prefix=self.prefix)

    def fw_conf(self, net, prev, **extra):
        conf = {"cniVersion": net["cniVersion"], "name": net["name"], "type": "firewall", **extra}
        if prev is not None:
            conf["prevResult"] = prev
        return conf

    def attach(self, net, pod, cid, **fw):
        rc, res = self.plugin("bridge", "ADD", net, pod, cid)
        assert rc == 0, res
        self.attached.append((net, pod, cid, res, fw))
        rc, out = self.plugin("firewall", "ADD", self.fw_conf(net, res, **fw), pod, cid)
        assert rc == 0, out
        assert out == res  # chained: passed through unchanged
        return res

    def detach(self, pod, cid):
        for item in list(self.attached):
            net, p, c, res, fw = item
            if (p, c) == (pod, cid):
                rc, out = self.plugin("firewall", "DEL", self.fw_conf(net, res, **fw), pod, cid)
                assert rc == 0, out
                assert self.plugin("bridge", "DEL", net, pod, cid)[0] == 0
                self.attached.remove(item)

    def nft(self):
        return run(*self.prefix, "nft", "list", "ruleset").stdout

    def ours(self):
        return run(*self.prefix, "nft", "list", "table", "inet", "pycni_firewall", check=False).stdout

    def cleanup(self):
        for _, pod, cid, _, _ in list(self.attached):
            try:
                self.detach(pod, cid)
            except AssertionError:
                pass


@pytest.fixture
def host(bin_dir, net, make_netns):
    h = Host(bin_dir, net, make_netns)
    yield h
    h.cleanup()


def ip(res):
    return res["ips"][0]["address"].split("/")[0]


def test_same_bridge_isolates_bridges_and_open_does_not(host):
    a1, a2, b1 = host.make_netns(), host.make_netns(), host.make_netns()
    ra1 = host.attach(host.net_a, a1, "a1", ingressPolicy="same-bridge")
    ra2 = host.attach(host.net_a, a2, "a2", ingressPolicy="same-bridge")
    rb1 = host.attach(host.net_b, b1, "b1", ingressPolicy="same-bridge")
    # same bridge: fine; the host itself: fine (not forwarded)
    assert ping(a1, ip(ra2)) and ping(a2, ip(ra1))
    assert ping(a1, ra1["ips"][0]["gateway"])
    assert run(*host.prefix, "ping", "-c1", "-W2", ip(rb1), check=False).returncode == 0
    # across bridges through the host's routing: dropped both ways
    assert not ping(a1, ip(rb1)) and not ping(b1, ip(ra1))
    rules = host.nft()
    assert f'"{host.net_a["bridge"]}" . {ip(ra1)}' in rules

    # b1 re-attached with the open policy: a1 may reach it, b1 still may not reach a1
    host.detach(b1, "b1")
    rb1 = host.attach(host.net_b, b1, "b1")
    assert ping(a1, ip(rb1))
    assert not ping(b1, ip(ra1))
    # every container open: everything passes
    host.detach(a1, "a1")
    ra1 = host.attach(host.net_a, a1, "a1", ingressPolicy="open")
    assert ping(b1, ip(ra1)) and ping(a1, ip(rb1))

    for pod, cid in ((a1, "a1"), (a2, "a2"), (b1, "b1")):
        host.detach(pod, cid)
    assert "pycni_firewall" not in host.nft()


def test_same_bridge_still_serves_published_ports(host, make_netns):
    """DNATed flows (portmap) reach an isolated pod from another bridge."""
    a, b = host.make_netns(), host.make_netns()
    host.net_a["cniVersion"] = host.net_b["cniVersion"] = "1.0.0"
    rc, ra = host.plugin("bridge", "ADD", host.net_a, a, "pa")
    assert rc == 0, ra
    host.attached.append((host.net_a, a, "pa", ra, {"ingressPolicy": "same-bridge"}))
    port = random.randint(20000, 40000)
    pm = {"cniVersion": "1.0.0", "name": host.net_a["name"], "type": "portmap", "prevResult": ra,
          "runtimeConfig": {"portMappings": [{"hostPort": port, "containerPort": 7000, "protocol": "udp"}]}}
    try:
        rc, out = host.plugin("portmap", "ADD", pm, a, "pa")
        assert rc == 0, out
        rc, out = host.plugin("firewall", "ADD", host.fw_conf(host.net_a, out, ingressPolicy="same-bridge"), a, "pa")
        assert rc == 0, out
        rb = host.attach(host.net_b, b, "pb")
        gw_b = rb["ips"][0]["gateway"]
        server = ("ip", "netns", "exec", a, "/usr/bin/python3", "-c",
                  "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('',7000));"
                  "d,p=s.recvfrom(99);s.sendto(b'pong',p)")
        import subprocess
        srv = subprocess.Popen(server)
        try:
            client = ("ip", "netns", "exec", b, "/usr/bin/python3", "-c",
                      "import socket,sys,time;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.settimeout(1)\n"
                      "for _ in range(5):\n"
                      f" s.sendto(b'ping',('{gw_b}',{port}))\n"
                      " try: print(s.recv(9).decode()); break\n"
                      " except OSError: pass")
            assert run(*client).stdout.strip() == "pong"
        finally:
            srv.kill()
            srv.wait()
        assert not ping(b, ip(ra))  # but not directly
    finally:
        host.plugin("portmap", "DEL", pm, a, "pa")


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0"])
def test_check_del_and_passthrough(host, version):
    host.net_a["cniVersion"] = version
    pod = host.make_netns()
    res = host.attach(host.net_a, pod, "c", ingressPolicy="same-bridge")
    conf = host.fw_conf(host.net_a, res, ingressPolicy="same-bridge")
    rc, out = host.plugin("firewall", "CHECK", conf, pod, "c")
    if version == "0.3.1":
        assert rc != 0 and out["code"] == 1  # CHECK needs 0.4.0
    else:
        assert rc == 0, out
        run(*host.prefix, "nft", "delete", "element", "inet", "pycni_firewall", "ctr4", f"{{ {ip(res)} }}")
        rc, out = host.plugin("firewall", "CHECK", conf, pod, "c")
        assert rc != 0 and out["code"] == 104
    host.detach(pod, "c")
    assert "pycni_firewall" not in host.nft()


def test_del_without_prev_result_uses_the_record_and_gc(host):
    host.net_a["cniVersion"] = "1.1.0"
    a, b = host.make_netns(), host.make_netns()
    ra = host.attach(host.net_a, a, "keep")
    rb = host.attach(host.net_a, b, "stale", ingressPolicy="same-bridge")
    gc = {"cniVersion": "1.1.0", "name": host.net_a["name"], "type": "firewall",
          "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, out = host.plugin("firewall", "GC", gc, "", "")
    assert rc == 0, out
    rules = host.ours()
    assert ip(ra) in rules and ip(rb) not in rules
    bare = {"cniVersion": "1.1.0", "name": host.net_a["name"], "type": "firewall"}
    rc, out = host.plugin("firewall", "DEL", bare, "", "keep")
    assert rc == 0, out
    assert "pycni_firewall" not in host.nft()
    assert host.plugin("firewall", "DEL", bare, "", "keep")[0] == 0


@pytest.mark.parametrize("extra,code", [
    ({"ingressPolicy": "closed"}, 7),
    ({"backend": "pf"}, 7),
    ({"iptablesAdminChainName": 5}, 7),
])
def test_bad_config_is_invalid_config(host, extra, code):
    pod = host.make_netns()
    rc, res = host.plugin("bridge", "ADD", host.net_a, pod, "bad")
    assert rc == 0, res
    host.attached.append((host.net_a, pod, "bad", res, {}))
    rc, out = host.plugin("firewall", "ADD", host.fw_conf(host.net_a, res, **extra), pod, "bad")
    assert rc != 0 and out["code"] == code, out
    assert "pycni_firewall" not in host.nft()


def test_reference_config_keys_are_accepted(host):
    pod = host.make_netns()
    res = host.attach(host.net_a, pod, "ref", backend="firewalld", firewalldZone="trusted",
                      iptablesAdminChainName="CNI-ADMIN")
    assert ip(res) in host.ours()
    host.detach(pod, "ref")


def test_missing_prev_result_is_invalid_config(host):
    pod = host.make_netns()
    rc, out = host.plugin("firewall", "ADD", host.fw_conf(host.net_a, None), pod, "noprev")
    assert rc != 0 and out["code"] == 7 and "prevResult" in out["msg"]
