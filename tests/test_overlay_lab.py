"""The overlay end to end, as a user runs it: `pycni lab up` of three hosts
with two pods each, one `pycni agent` per host in its namespace, pods
attached by the overlay plugin run in their host; `pycni lab apply` to
change the running lab; `pycni lab down`.  One lab per store, shared by
the tests of this module (each test leaves it as it found it).

What the dataplane tests (test_overlay_dataplane.py) prove of the
controller alone is not repeated; these prove what the agent, the plugin
and the lab add: addresses and MTU from the agent's lease, masquerading
that spares the cluster, hosts and pods coming and going through the lab,
agents and etcd members dying and being started again by `apply`."""
import ipaddress
import itertools
import json
import os
import random
import signal
import subprocess
import time

import pytest

from pycni.lab.spec import ETCD, underlay_bridge, underlay_veth

from conftest import PYCNI, lab_cli, run, unique
from overlay_env import (ECHO_SERVER, PYTHON, SEND_VXLAN, UDP_SINK, PodStream, bridge_fdb, ip_show, netns_exec, ping,
                         start_python, tcp_echo_once, wait_for)

DEVICE = "pycni.1"
HOSTS = ("h1", "h2", "h3")


class OverlayLab:
    """A lab file of three hosts, driven through the `pycni lab` command."""

    def __init__(self, root, store):
        self.root, self.store = root, store
        self.name = unique("ov")
        self.prefix = f"10.{random.randint(200, 219)}.{random.randint(0, 255)}"  # underlay /24
        self.cluster = random.randint(220, 229)                                   # 10.<cluster>.0.0/16
        self.path = root / f"{self.name}.yaml"

    def body(self, hosts=None, pods=None) -> str:
        hosts = hosts or {h: f"{self.prefix}.{i}" for i, h in enumerate(HOSTS, start=1)}
        pods = pods if pods is not None else [(f"{h[1]}{x}", h) for h in hosts for x in "ab"]
        store = "store: file" if self.store == "file" else "store: etcd\n    etcdMembers: 3\n    leaseTTL: 6"
        return "\n".join([
            f"name: {self.name}", "hosts:",
            *[f"  - {{name: {h}, underlay: {a}/24}}" for h, a in hosts.items()],
            "networks:",
            f"  - name: cluster\n    type: overlay\n    clusterCIDR: 10.{self.cluster}.0.0/16\n"
            f"    clusterCIDR6: fd00:{self.cluster}::/48\n    {store}",
            "pods:", *[f"  - {{name: p{p}, host: {h}, network: cluster}}" for p, h in pods]]) + "\n"

    def pycni(self, *args, check=True):
        return lab_cli(self.root, *args, check=check)

    def up(self):
        self.path.write_text(self.body())
        self.pycni("lab", "up", str(self.path))

    def apply(self, body, check=True):
        self.path.write_text(body)
        return self.pycni("lab", "apply", str(self.path), check=check)

    def status(self) -> dict:
        return json.loads(self.pycni("lab", "status", self.name, "--json").stdout)

    def hosts(self) -> dict:
        return {h["name"]: h for h in self.status()["hosts"]}

    def pods(self) -> dict:
        return {p["name"]: p for p in self.status()["pods"]}

    def agent_pids(self) -> dict:
        return {name: h["agent"]["pid"] for name, h in self.hosts().items()}

    def down(self):
        self.pycni("lab", "down", self.name)


def leftovers(lab: OverlayLab, pids) -> list[str]:
    """Whatever of the lab is still on the machine."""
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(f"pycni-{lab.name}-")]
    links = [underlay_bridge(lab.name)] + [underlay_veth(lab.name, h) for h in (*HOSTS, ETCD)]
    left += [link for link in links if os.path.exists(f"/sys/class/net/{link}")]
    left += [f"pid {pid}" for pid in pids if running(pid)]
    if (lab.root / lab.name).exists():
        left.append("lab dir")
    return left


def running(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in "ZX"
    except OSError:
        return False


@pytest.fixture(scope="module", params=["file", "etcd"])
def lab(request, tmp_path_factory):
    lab = OverlayLab(tmp_path_factory.mktemp("labs"), request.param)
    pids = []
    try:
        lab.up()
        yield lab
        status = lab.status()
        pids = [h["agent"]["pid"] for h in status["hosts"]]
        pids += [m["pid"] for m in status.get("etcd", {}).get("members", [])]
    finally:
        lab.down()
    assert leftovers(lab, [p for p in pids if p]) == []


def reachable(lab, version=4, pods=None) -> bool:
    """Every pod reaches every other pod."""
    pods = pods or lab.pods()
    return all(ping(a["netns"], b["ips"][0 if version == 4 else 1])
               for a, b in itertools.permutations(pods.values(), 2))


def peer_entries(ns, lease) -> list[str]:
    """What host netns ``ns`` holds for the host whose lease this is:
    routes to its subnets, neighbour entries of its VTEP, FDB entries."""
    routes = ip_show(ns, "route", "show", "proto", "112") + ip_show(ns, "-6", "route", "show", "proto", "112")
    found = [line for line in routes.splitlines() if line.split()[0] in (lease["subnet"], lease["subnet6"])]
    found += [line for line in ip_show(ns, "neigh", "show", "dev", DEVICE).splitlines() if lease["vtep"]["mac"] in line]
    found += [line for line in bridge_fdb(ns, DEVICE).splitlines() if lease["vtep"]["mac"] in line]
    return found


# --- every pod reaches every other ----------------------------------------------------------
MESH_SERVER = """
import socket, threading
def bound(family, kind):
    s = socket.socket(family, kind)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    s.bind(('::' if family == socket.AF_INET6 else '0.0.0.0', 7100))
    return s
def tcp(s):
    s.listen(32)
    while True:
        c, peer = s.accept(); c.recv(64); c.sendall(peer[0].encode()); c.close()
def udp(s):
    while True:
        data, peer = s.recvfrom(64); s.sendto(peer[0].encode(), peer)
for family in (socket.AF_INET, socket.AF_INET6):
    threading.Thread(target=tcp, args=(bound(family, socket.SOCK_STREAM),), daemon=True).start()
    threading.Thread(target=udp, args=(bound(family, socket.SOCK_DGRAM),), daemon=True).start()
print('listening', flush=True)
threading.Event().wait()
"""

MESH_CLIENT = """
import json, socket, sys
seen = {}
for address in sys.argv[1:]:
    family = socket.AF_INET6 if ':' in address else socket.AF_INET
    with socket.create_connection((address, 7100), timeout=5) as c:
        c.sendall(b'x'); tcp = c.recv(64).decode()
    u = socket.socket(family, socket.SOCK_DGRAM); u.settimeout(1)
    for _ in range(5):
        u.sendto(b'x', (address, 7100))
        try:
            udp = u.recv(64).decode(); break
        except socket.timeout:
            udp = None
    seen[address] = {'tcp': tcp, 'udp': udp}
print(json.dumps(seen))
"""


def test_every_pod_reaches_every_other_over_icmp_tcp_and_udp(lab, tmp_path):
    pods = lab.pods()
    assert len(pods) == 6
    wait_for(lambda: reachable(lab, 4, pods), what="IPv4 pings between all pods")
    wait_for(lambda: reachable(lab, 6, pods), what="IPv6 pings between all pods")
    servers = [start_python(p["netns"], MESH_SERVER, log=tmp_path / f"{p['name']}.log") for p in pods.values()]
    try:
        for p in pods.values():
            wait_for(lambda: "listening" in (tmp_path / f"{p['name']}.log").read_text(), what="mesh servers")
        clients = {name: subprocess.Popen(netns_exec(p["netns"], PYTHON, "-c", MESH_CLIENT,
                                                     *[ip for q in pods.values() if q is not p for ip in q["ips"]]),
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                   for name, p in pods.items()}
        for name, client in clients.items():
            out, err = client.communicate(timeout=60)
            assert client.returncode == 0, err
            # each server saw the client's own pod address: no NAT between pods of the cluster
            own = set(pods[name]["ips"])
            assert {kind: set(seen[kind] for seen in json.loads(out).values()) for kind in ("tcp", "udp")} == \
                {"tcp": own, "udp": own}, out
    finally:
        for server in servers:
            server.kill()
            server.wait()
    # the pods' MTU is the agent's; 1,400-byte packets with DF set cross between hosts
    hosts = lab.hosts()
    for p in pods.values():
        assert f"mtu {hosts[p['host']]['lease']['mtu']} " in ip_show(p["netns"], "link", "show", "eth0")
    first = pods["p1a"]
    for other in (pods["p2a"], pods["p3b"]):
        assert ping(first["netns"], other["ips"][0], size=1372, df=True)


def test_status_shows_each_hosts_lease_and_agent(lab):
    status = lab.status()
    for host in status["hosts"]:
        agent, lease = host["agent"], host["lease"]
        assert agent["state"] == "running" and agent["ready"] and agent["lastError"] is None, agent
        assert sorted(agent["peers"]) == sorted(h for h in HOSTS if h != host["name"])
        assert ipaddress.ip_network(lease["subnet"]).subnet_of(ipaddress.ip_network(f"10.{lab.cluster}.0.0/16"))
        assert lease["vtep"]["address"] == lease["subnet"].split("/")[0]
        assert lease["underlay"] == host["underlay"].split("/")[0] and lease["mtu"] == 1450
        assert agent["leaseExpires"] > time.time()
        for pod in status["pods"]:
            if pod["host"] == host["name"]:
                assert ipaddress.ip_interface(pod["addresses"][0]).network == ipaddress.ip_network(lease["subnet"])
                assert ipaddress.ip_interface(pod["addresses"][1]).network == ipaddress.ip_network(lease["subnet6"])
    text = lab.pycni("lab", "status", lab.name).stdout
    assert "AGENT" in text and "ready" in text
    if lab.store == "etcd":
        assert [m["pid"] is not None for m in status["etcd"]["members"]] == [True] * 3


# --- apply: hosts and pods come, go and move, the rest keeps running -------------------------
def test_apply_removes_a_host_and_brings_it_back_at_a_new_address(lab):
    wait_for(lambda: reachable(lab), what="the lab to converge")
    before = lab.status()
    hosts = {h["name"]: h for h in before["hosts"]}
    h3 = hosts["h3"]
    pids = lab.agent_pids()
    ips = {p["name"]: p["ips"] for p in before["pods"]}
    for name in ("h1", "h2"):  # 2 routes, 2 neighbour entries, 1 FDB entry to h3
        assert len(peer_entries(hosts[name]["netns"], h3["lease"])) == 5

    # h3 and its pods leave; a pod comes to h1, p2b goes
    out = lab.apply(lab.body(hosts={"h1": f"{lab.prefix}.1", "h2": f"{lab.prefix}.2"},
                             pods=[("1a", "h1"), ("1b", "h1"), ("1c", "h1"), ("2a", "h2")]))
    assert "h3" not in lab.hosts() and not os.path.exists(f"/run/netns/{h3['netns']}")
    for name in ("h1", "h2"):
        ns = hosts[name]["netns"]
        wait_for(lambda: not peer_entries(ns, h3["lease"]), what=f"h3's entries to leave {name}")
        assert f"dst {lab.prefix}.3 " not in bridge_fdb(ns, DEVICE) + " "
    assert sorted(lab.pods()) == ["p1a", "p1b", "p1c", "p2a"]
    assert {n: p["ips"] for n, p in lab.pods().items() if n != "p1c"} == {n: ips[n] for n in ("p1a", "p1b", "p2a")}
    wait_for(lambda: reachable(lab), what="the new pod to reach the others")
    assert "p2b" in out.stderr and "removing" in out.stderr

    # h3 returns at a new underlay address with its pods
    lab.apply(lab.body(hosts={"h1": f"{lab.prefix}.1", "h2": f"{lab.prefix}.2", "h3": f"{lab.prefix}.33"}))
    wait_for(lambda: reachable(lab), what="every pod to reach the returned host's pods")
    assert f"dst {lab.prefix}.33 " in bridge_fdb(hosts["h1"]["netns"], DEVICE)
    assert lab.hosts()["h3"]["lease"]["underlay"] == f"{lab.prefix}.33"
    assert {n: p for n, p in lab.agent_pids().items() if n != "h3"} == {n: pids[n] for n in ("h1", "h2")}

    # back to the file's address: a move, h3 and its agent keep running
    moved = lab.agent_pids()
    lab.apply(lab.body())
    wait_for(lambda: f"dst {lab.prefix}.3 " in bridge_fdb(hosts["h1"]["netns"], DEVICE)
             and f"dst {lab.prefix}.33 " not in bridge_fdb(hosts["h2"]["netns"], DEVICE), what="h3's move")
    wait_for(lambda: reachable(lab), what="convergence after the move")
    assert lab.agent_pids() == moved
    assert lab.hosts()["h3"]["underlay"] == f"{lab.prefix}.3/24"


def test_apply_refuses_to_change_a_running_labs_network(lab):
    changed = lab.body().replace(f"10.{lab.cluster}.0.0/16", f"10.{lab.cluster}.0.0/17")
    out = lab.apply(changed, check=False)
    lab.path.write_text(lab.body())
    assert out.returncode == 1 and "networks" in out.stderr and "cannot change" in out.stderr
    assert lab.status()["phase"] == "up"


# --- masquerading, the VXLAN guard, a chained conflist ------------------------------------------
@pytest.mark.parametrize("lab", ["file"], indirect=True)
def test_only_traffic_leaving_the_cluster_is_masqueraded(lab, tmp_path):
    hosts, pods = lab.hosts(), lab.pods()
    h1, h2 = hosts["h1"], hosts["h2"]
    server = start_python(h2["netns"], MESH_SERVER, log=tmp_path / "server.log")
    try:
        wait_for(lambda: "listening" in (tmp_path / "server.log").read_text(), what="the server on h2")
        out = run(*netns_exec(pods["p1a"]["netns"], PYTHON, "-c", MESH_CLIENT, h2["underlay"].split("/")[0]))
        seen = json.loads(out.stdout)[h2["underlay"].split("/")[0]]
        # h2's own address is outside the cluster CIDR: the pod's traffic comes from h1's underlay address
        assert seen == {"tcp": h1["underlay"].split("/")[0], "udp": h1["underlay"].split("/")[0]}
    finally:
        server.kill()
        server.wait()
    table = run(*netns_exec(h1["netns"], "nft", "list", "table", "inet", "pycni_bridge")).stdout
    assert f"{pods['p1a']['ips'][0]} . 10.{lab.cluster}.0.0/16" in table


@pytest.mark.parametrize("lab", ["file"], indirect=True)
def test_vxlan_from_an_unknown_underlay_address_is_dropped(lab, tmp_path):
    hosts, pods = lab.hosts(), lab.pods()
    h1, h2 = hosts["h1"], hosts["h2"]
    target, sender = pods["p1a"], pods["p2a"]
    intruder, port = unique("ovevil"), unique("ove")
    sink_log = tmp_path / "sink.log"
    sink = start_python(target["netns"], UDP_SINK, target["ips"][0], log=sink_log)
    try:
        run("ip", "netns", "add", intruder)
        run("ip", "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", intruder)
        run("ip", "link", "set", port, "master", underlay_bridge(lab.name), "up")
        run("ip", "-n", intruder, "addr", "add", f"{lab.prefix}.66/24", "dev", "eth0")
        run("ip", "-n", intruder, "link", "set", "eth0", "up")
        wait_for(lambda: "listening" in sink_log.read_text(), what="the UDP sink")

        def craft(ns, source, payload):
            run(*netns_exec(ns, PYTHON, "-c", SEND_VXLAN, source, h1["underlay"].split("/")[0], sender["ips"][0],
                            target["ips"][0], h1["lease"]["vtep"]["mac"], payload, "1"))

        before = dropped(h1["netns"])
        craft(intruder, f"{lab.prefix}.66", "from-the-intruder")
        wait_for(lambda: dropped(h1["netns"]) > before, what="the guard's drop counter")
        craft(h2["netns"], h2["underlay"].split("/")[0], "from-a-known-host")  # the same packet from a host
        wait_for(lambda: "from-a-known-host" in sink_log.read_text(), what="the control packet")
        assert "from-the-intruder" not in sink_log.read_text()
    finally:
        sink.kill()
        sink.wait()
        run("ip", "netns", "delete", intruder, check=False)


def dropped(ns) -> int:
    import re

    out = run(*netns_exec(ns, "nft", "list", "counter", "inet", "pycni_overlay", "dropped")).stdout
    return int(re.search(r"packets (\d+)", out).group(1))


@pytest.mark.parametrize("lab", ["file"], indirect=True)
def test_overlay_chains_with_portmap_firewall_tuning_bandwidth_and_dnsname(lab, tmp_path):
    status = lab.status()
    hosts, pods = {h["name"]: h for h in status["hosts"]}, {p["name"]: p for p in status["pods"]}
    h1, h2 = hosts["h1"], hosts["h2"]
    h1_dir = lab.root / lab.name / "hosts" / "h1"
    netconf = tmp_path / "net.d"
    netconf.mkdir()
    # the lab's network again (same name, bridge and dataDir: one allocator for the node's subnet), chained
    (netconf / "10-cluster.conflist").write_text(json.dumps({"cniVersion": "1.0.0", "name": "cluster", "plugins": [
        {"type": "overlay", "cluster": "cluster", "bridge": "pb-cluster", "ipam": {"dataDir": str(h1_dir / "ipam")}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "firewall"},
        {"type": "tuning", "mtu": 1400},
        {"type": "bandwidth", "ingressRate": 80_000_000, "ingressBurst": 1_000_000,
         "egressRate": 80_000_000, "egressBurst": 1_000_000},
        {"type": "dnsname", "domainName": "ov.test", "capabilities": {"aliases": True}},
    ]}))
    pod = unique("ovchain")
    run("ip", "netns", "add", pod)
    env = {**os.environ, "NETCONFPATH": str(netconf), "CNI_PATH": status["cniPath"],
           "PYCNI_STATE_DIR": str(h1_dir / "state"), "PYCNI_RUN_DIR": str(h1_dir / "run"),
           "CNI_CACHE_DIR": str(tmp_path / "cache"), "CNI_ARGS": "K8S_POD_NAME=chained",
           "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]})}

    def pycni(command):
        return subprocess.run(netns_exec(h1["netns"], *PYCNI, command, "cluster", f"/run/netns/{pod}"),
                              env=env, capture_output=True, text=True)

    server = None
    try:
        out = pycni("add")
        assert out.returncode == 0, out.stdout + out.stderr
        result = json.loads(out.stdout)
        address = result["ips"][0]["address"].split("/")[0]
        gateway = result["ips"][0]["gateway"]
        assert ipaddress.ip_address(address) in ipaddress.ip_network(h1["lease"]["subnet"])
        assert ipaddress.ip_address(gateway) == ipaddress.ip_network(h1["lease"]["subnet"]).network_address + 1
        assert result["dns"]["nameservers"][0] == gateway
        veth = next(i["name"] for i in result["interfaces"] if i["name"].startswith("veth"))
        assert "mtu 1400 " in ip_show(pod, "link", "show", "eth0")                                    # tuning
        assert "tbf" in run("tc", "-n", h1["netns"], "qdisc", "show", "dev", veth).stdout            # bandwidth
        wait_for(lambda: ping(pods["p2a"]["netns"], address), what="a pod on h2 to reach it")       # firewall, overlay
        server = start_python(pod, ECHO_SERVER, address, 80, log=tmp_path / "echo.log")
        wait_for(lambda: "listening" in (tmp_path / "echo.log").read_text(), what="the pod's server")
        assert tcp_echo_once(h2["netns"], h1["underlay"].split("/")[0], 8080)                              # portmap
        names = run(*netns_exec(pod, "dig", "+short", f"@{gateway}", "chained.ov.test")).stdout.split()
        assert names == [address]                                                                     # dnsname
        out = pycni("del")
        assert out.returncode == 0, out.stderr
        assert "eth0" not in ip_show(pod, "link")
        tables = run(*netns_exec(h1["netns"], "nft", "list", "tables")).stdout
        assert "pycni_portmap" not in tables and "pycni_firewall" not in tables
        assert address not in os.listdir(h1_dir / "ipam" / "cluster")
    finally:
        if server:
            server.kill()
            server.wait()
        pycni("del")
        run("ip", "netns", "delete", pod, check=False)


# --- etcd: a pod's TCP stream outlives agents and etcd members ----------------------------------
@pytest.mark.parametrize("lab", ["etcd"], indirect=True)
def test_a_pod_stream_survives_agent_restart_etcd_member_loss_etcd_restart_and_an_outage(lab, tmp_path):
    wait_for(lambda: reachable(lab), what="the lab to converge")
    pods = lab.pods()
    stream = PodStream(tmp_path, pods["p1a"]["netns"], pods["p3a"]["netns"], pods["p3a"]["ips"][0], 7300)
    flowing = stream.flowing

    def members():
        return lab.status()["etcd"]["members"]

    def renewed_by_all(since):
        hosts = lab.hosts().values()
        return all(h["agent"]["lastError"] is None and h["agent"]["leaseExpires"] > since for h in hosts)

    try:
        flowing()
        subnets = {name: h["lease"]["subnet"] for name, h in lab.hosts().items()}
        # an agent killed and started again by apply: it adopts the dataplane
        pids = lab.agent_pids()
        os.kill(pids["h1"], signal.SIGKILL)
        flowing()
        out = lab.apply(lab.body())
        assert "h1: starting its agent" in out.stderr
        assert lab.agent_pids()["h1"] != pids["h1"] and lab.hosts()["h1"]["agent"]["ready"]
        flowing()
        # one member of three lost: the agents go on renewing through the others
        os.kill(members()[0]["pid"], signal.SIGKILL)
        since = time.time() + 1
        wait_for(lambda: renewed_by_all(since), timeout=30, what="renewals with a member lost")
        flowing()
        # the whole etcd restarted
        for member in members():
            if member["pid"]:
                os.kill(member["pid"], signal.SIGKILL)
        lab.apply(lab.body())
        assert all(m["pid"] for m in members())
        since = time.time() + 1
        wait_for(lambda: renewed_by_all(since), timeout=30, what="renewals after the etcd restart")
        flowing()
        # an outage longer than the lease TTL: dataplane kept, leases renewed once etcd is back
        for member in members():
            os.kill(member["pid"], signal.SIGKILL)
        wait_for(lambda: all(h["agent"]["lastError"] for h in lab.hosts().values()), timeout=30,
                 what="the agents to notice the outage")
        time.sleep(7)  # leaseTTL 6
        flowing()
        assert reachable(lab)
        lab.apply(lab.body())
        since = time.time() + 1
        wait_for(lambda: renewed_by_all(since), timeout=30, what="renewals after the outage")
        assert {name: h["lease"]["subnet"] for name, h in lab.hosts().items()} == subnets
        flowing()
        assert reachable(lab)
    finally:
        stream.stop()
