"""dnsname + our resolver, chained after bridge, in real namespaces.

Every test runs its plugins inside a private "node" netns (so bridges and
the resolver live there, and port 53 of the machine is never touched);
pods are netns on the node's bridge and ask with dig.  The upstream for
forwarded names is a dnsmasq the test starts on the node's loopback.
Finalizers kill every resolver and dnsmasq we started and delete the
namespaces, whatever the outcome."""
import glob
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from conftest import PYCNI, exec_plugin, run, unique

DOMAIN = "dns.podman"


# --- fixtures and helpers -----------------------------------------------------------
def _kill_pidfile(path):
    try:
        with open(path) as f:
            pid = int(f.read().strip())
        os.kill(pid, signal.SIGKILL)
    except (OSError, ValueError):
        pass


@pytest.fixture
def node(make_netns, state_dirs):
    """A node netns; at teardown every resolver of our run dir is killed."""
    name = make_netns("dnode")
    yield name
    for path in glob.glob(os.path.join(str(state_dirs["run"]), "dnsname", "resolver-*.pid")):
        _kill_pidfile(path)


class Net:
    """One bridge network with dnsname chained, its plugins run in ``node``."""

    def __init__(self, bin_dir, node, tmp_path, v4, v6=None, domain=DOMAIN, upstreams=None, prefix=None):
        self.bin_dir, self.node = bin_dir, node
        self.prefix = prefix or ("ip", "netns", "exec", node)
        self.name = unique("dnet")
        ranges = [[{"subnet": v4}]] + ([[{"subnet": v6}]] if v6 else [])
        self.bridge = {"cniVersion": "1.0.0", "name": self.name, "type": "bridge", "bridge": unique("dbr"),
                       "isGateway": True, "isDefaultGateway": True,
                       "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": ranges}}
        self.dns = {"cniVersion": "1.0.0", "name": self.name, "type": "dnsname", "domainName": domain,
                    "capabilities": {"aliases": True}}
        if upstreams:
            self.dns["upstreams"] = upstreams
        self.gw4 = v4.rsplit(".", 1)[0] + ".1"
        self.gw6 = v6.split("/")[0] + "1" if v6 else None
        self.results = {}

    def _exec(self, plugin, command, conf, pod, cid, **kw):
        return exec_plugin(self.bin_dir, plugin, command, conf, netns=f"/run/netns/{pod}" if pod else "",
                           container_id=cid, prefix=self.prefix, **kw)

    def attach(self, pod, cid, name=None, aliases=None):
        rc, res = self._exec("bridge", "ADD", self.bridge, pod, cid)
        assert rc == 0, res
        conf = {**self.dns, "prevResult": res}
        if aliases is not None:
            conf["runtimeConfig"] = {"aliases": {self.name: aliases}}
        rc, out = self._exec("dnsname", "ADD", conf, pod, cid,
                             cni_args=f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME={name or cid}")
        assert rc == 0, out
        self.results[cid] = (pod, out)
        return out

    def detach(self, cid):
        pod, res = self.results.pop(cid)
        rc, out = self._exec("dnsname", "DEL", {**self.dns, "prevResult": res}, pod, cid)
        assert rc == 0, out
        rc, out = self._exec("bridge", "DEL", {**self.bridge, "prevResult": res}, pod, cid)
        assert rc == 0, out


def ip_of(result, version=4):
    return next(ip["address"].split("/")[0] for ip in result["ips"] if (":" in ip["address"]) == (version == 6))


def dig(pod, server, *args):
    proc = run("ip", "netns", "exec", pod, "dig", "+time=2", "+tries=1", f"@{server}", *args, check=False)
    return proc.stdout


def short(pod, server, *args):
    return sorted(dig(pod, server, "+short", *args).split())


def header(out):
    status = re.search(r"status: (\w+)", out).group(1)
    flags = re.search(r";; flags: ([a-z ]+);", out).group(1).split()
    answers = int(re.search(r"ANSWER: (\d+)", out).group(1))
    return status, flags, answers


def resolver_pids(state_dirs):
    pids = []
    for path in glob.glob(os.path.join(str(state_dirs["run"]), "dnsname", "resolver-*.pid")):
        with open(path) as f:
            pids.append(int(f.read()))
    return pids


def exited(pid, seconds=5.0):
    """Wait up to `seconds` for a process to be gone; True if it is."""
    deadline = time.time() + seconds
    while alive(pid) and time.time() < deadline:
        time.sleep(0.1)
    return not alive(pid)


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:
        return f.read().split(")")[-1].split()[0] != "Z"


@pytest.fixture
def upstream(node, tmp_path):
    """dnsmasq on the node's 127.0.0.1:5353 owning example.test: what our
    resolver forwards to in these tests."""
    proc = subprocess.Popen(
        ["ip", "netns", "exec", node, "dnsmasq", "-k", "--no-resolv", "--no-hosts", "--port=5353",
         "--listen-address=127.0.0.1", "--bind-interfaces", "--user=root", "--pid-file=",
         "--address=/www.example.test/192.0.2.7", "--address=/www/192.0.2.8", "--local=/example.test/",
         f"--txt-record=big.example.test,{'x' * 250}", *[f"--txt-record=big.example.test,{i}{'y' * 200}"
                                                          for i in range(4)]],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            if run("ip", "netns", "exec", node, "dig", "+time=1", "+tries=1", "-p", "5353", "@127.0.0.1",
                   "www.example.test", check=False).returncode == 0:
                break
            time.sleep(0.1)
        yield "127.0.0.1:5353"
    finally:
        proc.kill()
        proc.wait()


# --- tests --------------------------------------------------------------------------
def test_two_pods_resolve_each_other(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.7.0/24", "fd00:201:7::/64")
    a, b = make_netns("dpod"), make_netns("dpod")
    ra = net.attach(a, "ca", "alpha", ["web", "www-alias"])
    rb = net.attach(b, "cb", "beta", ["db"])
    assert ra["dns"]["nameservers"] == [net.gw4, net.gw6]
    assert ra["dns"]["search"] == [DOMAIN]
    assert ra["ips"] and ra["interfaces"]  # prevResult passed through
    b4, b6, a4 = ip_of(rb), ip_of(rb, 6), ip_of(ra)

    for name in ("beta", f"beta.{DOMAIN}", "db", f"db.{DOMAIN}", f"BeTa.{DOMAIN.upper()}"):
        assert short(a, net.gw4, name, "A") == [b4], name
        assert short(a, net.gw6, name, "AAAA") == [b6], name
    assert short(b, net.gw4, "web", "A") == [a4]
    assert short(b, net.gw4, f"www-alias.{DOMAIN}", "A") == [a4]
    assert short(a, net.gw4, f"beta.{DOMAIN}", "ANY") == sorted([b4, b6])
    # the answer echoes the question's case and is authoritative
    out = dig(a, net.gw4, f"BeTa.{DOMAIN}", "A")
    assert header(out) == ("NOERROR", ["qr", "aa", "rd", "ra"], 1)
    assert f"BeTa.{DOMAIN}." in out

    # PTR, both families, to the name under the domain
    assert short(a, net.gw4, "-x", b4) == [f"beta.{DOMAIN}."]
    assert short(a, net.gw4, "-x", b6) == [f"beta.{DOMAIN}."]
    out = dig(a, net.gw4, "-x", ip_of(rb)[:-1] + "99")  # in the subnet, nobody's
    assert header(out)[0] == "NXDOMAIN"

    # NXDOMAIN with the domain's SOA; NODATA for a missing type
    out = dig(a, net.gw4, f"nobody.{DOMAIN}", "A")
    status, flags, answers = header(out)
    assert (status, answers) == ("NXDOMAIN", 0) and "aa" in flags
    assert re.search(rf"^{re.escape(DOMAIN)}\.\s+\d+\s+IN\s+SOA", out, re.M)
    for qtype in ("MX", "TXT"):
        out = dig(a, net.gw4, f"beta.{DOMAIN}", qtype)
        assert header(out)[::2] == ("NOERROR", 0), out
        assert "aa" in header(out)[1]
    out = dig(a, net.gw4, DOMAIN, "SOA")
    assert header(out)[::2] == ("NOERROR", 1)

    # EDNS: an OPT in gets an OPT back; none without; version 1 is BADVERS
    out = dig(a, net.gw4, "beta", "A")
    assert "EDNS: version: 0" in out and "udp: 1232" in out
    out = dig(a, net.gw4, "+noedns", "beta", "A")
    assert "OPT PSEUDOSECTION" not in out and header(out)[::2] == ("NOERROR", 1)
    out = dig(a, net.gw4, "+edns=1", "+noednsneg", "beta", "A")
    assert "status: BADVERS" in out
    out = dig(a, net.gw4, "+dnssec", "beta", "A")
    assert re.search(r"EDNS: version: 0, flags: do;", out)

    # TCP, both families
    out = dig(a, net.gw4, "+tcp", f"beta.{DOMAIN}", "A")
    assert header(out)[::2] == ("NOERROR", 1) and "(TCP)" in out
    assert short(a, net.gw6, "+tcp", "db", "AAAA") == [b6]
    out = dig(a, net.gw4, "+tcp", f"nobody.{DOMAIN}", "A")
    assert header(out)[0] == "NXDOMAIN"
    assert len(resolver_pids(state_dirs)) == 1


def test_truncation_and_malformed_queries(bin_dir, node, make_netns, tmp_path):
    net = Net(bin_dir, node, tmp_path, "10.201.8.0/24")
    a = make_netns("dpod")
    net.attach(a, "ca", "alpha")
    # many addresses for one name (aliases shared by containers) overflow 512 bytes
    pods = [make_netns("dpod") for _ in range(3)]
    for i, pod in enumerate(pods):
        net.attach(pod, f"m{i}", f"member{i}", ["group"])
    assert len(short(a, net.gw4, "group", "A")) == 3
    script = textwrap.dedent(f"""
        import socket, struct, sys
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(2)
        def ask(payload):
            s.sendto(payload, ("{net.gw4}", 53)); return s.recv(4096)
        q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\\x05alpha\\x00\\x00\\x01\\x00\\x01"
        r = ask(q); print("ok", r[:2].hex(), r[3] & 15, struct.unpack("!H", r[6:8])[0])
        r = ask(struct.pack("!HHHHHH", 7, 0x0100, 2, 0, 0, 0) + q[12:] * 2); print("two", r[3] & 15)
        r = ask(q[:20]); print("short", r[3] & 15)
        r = ask(struct.pack("!HHHHHH", 8, 0x2800, 1, 0, 0, 0) + q[12:]); print("update", r[3] & 15)
        s.sendto(b"\\x00", ("{net.gw4}", 53))
        r = ask(q); print("alive", r[3] & 15)
    """)
    out = run("ip", "netns", "exec", a, sys.executable, "-c", script).stdout.split("\n")
    assert out[0] == "ok 1234 0 1"          # ID patched, NOERROR, one answer
    assert out[1] == "two 1"                # FORMERR
    assert out[2] == "short 1"
    assert out[3] == "update 4"             # NOTIMP
    assert out[4] == "alive 0"


def test_forwarding_to_upstream(bin_dir, node, make_netns, tmp_path, upstream):
    net = Net(bin_dir, node, tmp_path, "10.201.9.0/24", upstreams=[upstream])
    a = make_netns("dpod")
    net.attach(a, "ca", "alpha")
    out = dig(a, net.gw4, "www.example.test", "A")
    assert header(out)[::2] == ("NOERROR", 1)
    assert short(a, net.gw4, "www.example.test") == ["192.0.2.7"]
    assert header(dig(a, net.gw4, "nothing.example.test"))[0] == "NXDOMAIN"
    assert short(a, net.gw4, "+tcp", "www.example.test") == ["192.0.2.7"]
    # an answer too big for UDP comes back truncated; over TCP it comes whole
    out = dig(a, net.gw4, "+noedns", "+ignore", "big.example.test", "TXT")
    assert "tc" in header(out)[1]
    out = dig(a, net.gw4, "+tcp", "big.example.test", "TXT")
    assert header(out)[::2] == ("NOERROR", 5)
    # a single label we do not know goes upstream too (as dnsmasq does)
    assert short(a, net.gw4, "www") == ["192.0.2.8"]


def test_upstream_down_is_servfail(bin_dir, node, make_netns, tmp_path):
    net = Net(bin_dir, node, tmp_path, "10.201.10.0/24", upstreams=["127.0.0.1:5399"])
    a = make_netns("dpod")
    net.attach(a, "ca", "alpha")
    out = run("ip", "netns", "exec", a, "dig", "+time=4", "+tries=1", f"@{net.gw4}", "www.example.test",
              check=False).stdout
    assert header(out)[0] == "SERVFAIL"
    assert short(a, net.gw4, "alpha") == [ip_of(net.results["ca"][1])]


def test_del_removes_names_and_last_del_stops_the_resolver(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.11.0/24")
    a, b = make_netns("dpod"), make_netns("dpod")
    net.attach(a, "ca", "alpha")
    net.attach(b, "cb", "beta", ["bee"])
    [pid] = resolver_pids(state_dirs)
    assert short(a, net.gw4, "bee")
    net.detach("cb")  # the answer changes as DEL returns
    assert header(dig(a, net.gw4, f"beta.{DOMAIN}"))[0] == "NXDOMAIN"
    assert header(dig(a, net.gw4, f"bee.{DOMAIN}"))[0] == "NXDOMAIN"
    assert short(a, net.gw4, "beta") == []
    assert alive(pid)
    net.detach("ca")
    assert exited(pid)
    left = sorted(os.listdir(os.path.join(str(state_dirs["run"]), "dnsname")))
    assert [f for f in left if not f.endswith(".log")] == ["lock"]
    # and the next ADD starts a new one
    net.attach(b, "cb2", "beta")
    [pid2] = resolver_pids(state_dirs)
    assert pid2 != pid and alive(pid2)
    assert short(b, net.gw4, "beta") == [ip_of(net.results["cb2"][1])]


def test_one_resolver_serves_two_networks(bin_dir, node, make_netns, tmp_path, state_dirs):
    n1 = Net(bin_dir, node, tmp_path / "1", "10.201.12.0/24", domain="one.test")
    n2 = Net(bin_dir, node, tmp_path / "2", "10.201.13.0/24", "fd00:201:13::/64", domain="two.test")
    a, b, c = make_netns("dpod"), make_netns("dpod"), make_netns("dpod")
    ra = n1.attach(a, "ca", "alpha")
    rb = n2.attach(b, "cb", "beta")
    n2.attach(c, "cc", "gamma")
    [pid] = resolver_pids(state_dirs)
    assert short(a, n1.gw4, "alpha.one.test") == [ip_of(ra)]
    assert short(b, n2.gw4, "beta.two.test") == [ip_of(rb)]
    assert short(c, n2.gw6, "beta", "AAAA") == [ip_of(rb, 6)]
    # networks stay apart: each gateway answers its own network's names
    assert header(dig(b, n2.gw4, "alpha.two.test"))[0] == "NXDOMAIN"
    assert header(dig(a, n1.gw4, "beta.one.test"))[0] == "NXDOMAIN"
    n1.detach("ca")  # one network empty: the other is still served by the same process
    assert alive(pid) and resolver_pids(state_dirs) == [pid]
    assert short(c, n2.gw4, "beta") == [ip_of(rb)]
    assert run("ip", "netns", "exec", node, "ss", "-Hlun", "sport", "53").stdout.count(":53") == 2  # v4 + v6
    n2.detach("cb")
    n2.detach("cc")
    assert exited(pid)


QUERY_LOOP = """
import socket, struct, sys, time
server, name, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
qname = b"".join(bytes([len(p)]) + p for p in name.encode().split(b".")) + b"\\0"
sent = ok = timeouts = bad = 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    qid = sent & 0xFFFF
    s.sendto(struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + b"\\0\\1\\0\\1", (server, 53))
    sent += 1
    try:
        while True:
            r = s.recv(512)
            if r[:2] == struct.pack("!H", qid):
                break
    except socket.timeout:
        timeouts += 1
        continue
    if r[3] & 15 == 0 and struct.unpack("!H", r[6:8])[0] == 1:
        ok += 1
    else:
        bad += 1
print(sent, ok, timeouts, bad)
"""


def test_changes_are_picked_up_without_dropping_queries(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.14.0/24", "fd00:201:14::/64")
    a = make_netns("dpod")
    net.attach(a, "ca", "alpha")
    loop = subprocess.Popen(["ip", "netns", "exec", a, sys.executable, "-c", QUERY_LOOP, net.gw4, "alpha", "6"],
                            stdout=subprocess.PIPE, text=True)
    try:
        others = [make_netns("dpod") for _ in range(3)]
        deadline = time.monotonic() + 4.5
        rounds = 0
        while time.monotonic() < deadline:
            for i, pod in enumerate(others):
                net.attach(pod, f"o{i}", f"other{i}", [f"alias{i}"])
            assert short(a, net.gw4, "other2") == [ip_of(net.results["o2"][1])]
            for i in range(len(others)):
                net.detach(f"o{i}")
            rounds += 1
        sent, ok, timeouts, bad = map(int, loop.communicate(timeout=30)[0].split())
    finally:
        if loop.poll() is None:
            loop.kill()
            loop.wait()
    assert rounds >= 2
    assert sent > 500 and timeouts == 0 and bad == 0 and ok == sent


def test_concurrent_adds_start_one_resolver(bin_dir, node, make_netns, tmp_path, state_dirs):
    import concurrent.futures

    net = Net(bin_dir, node, tmp_path, "10.201.18.0/24")
    pods = [make_netns("dpod") for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        list(pool.map(lambda i: net.attach(pods[i], f"p{i}", f"pod{i}"), range(6)))
    assert len(resolver_pids(state_dirs)) == 1
    for i in range(6):
        assert short(pods[0], net.gw4, f"pod{i}.{DOMAIN}") == [ip_of(net.results[f"p{i}"][1])]


def test_records_changed_on_disk_are_picked_up_by_polling(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.15.0/24")
    a = make_netns("dpod")
    net.attach(a, "ca", "alpha")
    netdir = os.path.join(str(state_dirs["run"]), "dnsname", net.name)
    with open(os.path.join(netdir, "extra-eth0.json"), "w") as f:
        json.dump({"containerID": "extra", "ifname": "eth0", "name": "extra", "aliases": [],
                   "ips": ["10.201.15.200/24"]}, f)
    time.sleep(0.3)
    assert short(a, net.gw4, "extra") == ["10.201.15.200"]


def test_check_gc_and_errors(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.16.0/24")
    a = make_netns("dpod")
    res = net.attach(a, "ca", "alpha")
    rc, out = net._exec("dnsname", "CHECK", {**net.dns, "prevResult": res}, a, "ca")
    assert rc == 0, out
    rc, out = net._exec("dnsname", "CHECK", {**net.dns, "prevResult": res}, a, "nope")
    assert rc == 1 and out["code"] == 104
    rc, out = net._exec("dnsname", "ADD", net.dns, a, "cx")
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"]
    rc, out = net._exec("dnsname", "ADD", {**net.dns, "prevResult": res, "runtimeConfig": {"aliases": {net.name: ["bad name"]}}},
                        a, "cy", cni_args="K8S_POD_NAME=x")
    assert rc == 1 and out["code"] == 7
    [pid] = resolver_pids(state_dirs)
    rc, out = net._exec("dnsname", "GC", {**net.dns, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []}, None, "")
    assert rc == 0, out
    assert exited(pid)
    rc, out = net._exec("dnsname", "DEL", {**net.dns, "prevResult": res}, a, "ca")  # nothing left: still fine
    assert rc == 0, out
    net._exec("bridge", "DEL", {**net.bridge, "prevResult": res}, a, "ca")


def test_through_the_agent(bin_dir, node, make_netns, tmp_path, state_dirs, monkeypatch):
    """Served by a node agent (in the node's netns), the plugin starts the
    resolver all the same, detached: not the agent's child."""
    name = unique("pycni-dns-agent-")
    enter = ("nsenter", f"--net=/run/netns/{node}")
    pycni = os.path.join(os.path.dirname(sys.executable), "pycni")
    with open(tmp_path / "agent.log", "w") as log:
        agent = subprocess.Popen([*enter, pycni, "agent", "--socket", name, "--verbose"],
                                 stderr=log, stdout=subprocess.DEVNULL)
    monkeypatch.setenv("PYCNI_AGENT_SOCKET", name)
    try:
        probe = f"import socket; socket.socket(socket.AF_UNIX).connect('\\0{name}')"
        for _ in range(100):
            if run(*enter, sys.executable, "-c", probe, check=False).returncode == 0:
                break
            time.sleep(0.1)
        net = Net(bin_dir, node, tmp_path, "10.201.17.0/24", prefix=enter)
        a, b = make_netns("dpod"), make_netns("dpod")
        net.attach(a, "ca", "alpha")
        rb = net.attach(b, "cb", "beta")
        assert (tmp_path / "agent.log").read_text().count("dnsname") >= 2
        [pid] = resolver_pids(state_dirs)
        with open(f"/proc/{pid}/stat") as f:
            assert int(f.read().split(")")[-1].split()[2]) != agent.pid
        assert short(a, net.gw4, "beta") == [ip_of(rb)]
        net.detach("cb")
        net.detach("ca")
        assert exited(pid)
    finally:
        agent.terminate()
        agent.wait(10)


def test_lab_dns_network(tmp_path, monkeypatch):
    from pycni import lab as labmod

    root = tmp_path / "labs"
    monkeypatch.setenv(labmod.LAB_ROOT_ENV, str(root))
    name = unique("dl")
    path = tmp_path / "lab.yaml"
    path.write_text(textwrap.dedent(f"""\
        name: {name}
        hosts:
          - name: node1
        networks:
          - name: podnet
            subnet: 10.202.1.0/24
            dns: true
            domain: lab.test
        pods:
          - {{name: a, host: node1, network: podnet}}
          - {{name: b, namespace: web, host: node1, network: podnet}}
        """))
    try:
        up = run(*PYCNI, "lab", "up", str(path), check=False)
        assert up.returncode == 0, up.stderr
        status = json.loads(run(*PYCNI, "lab", "status", name, "--json").stdout)
        ips = {p["name"]: p["ips"][0] for p in status["pods"]}
        out = run(*PYCNI, "lab", "exec", "--lab", name, "a", "--", "getent", "hosts", "b", check=False)
        assert out.returncode == 0 and out.stdout.split()[0] == ips["b"], out
        out = run(*PYCNI, "lab", "exec", "--lab", name, "web/b", "--", "dig", "+short", "+search", "-q", "a", check=False)
        assert out.stdout.split() == [ips["a"]]
        out = run(*PYCNI, "lab", "exec", "--lab", name, "a", "--", "cat", "/etc/resolv.conf").stdout
        assert "nameserver 10.202.1.1" in out and "search lab.test" in out
        pids = []
        for path in glob.glob(str(root / name / "hosts" / "*" / "run" / "dnsname" / "resolver-*.pid")):
            with open(path) as f:
                pids.append(int(f.read()))
        assert len(pids) == 1
    finally:
        down = run(*PYCNI, "lab", "down", name, check=False)
        for path in glob.glob(str(root / name / "hosts" / "*" / "run" / "dnsname" / "resolver-*.pid")):
            _kill_pidfile(path)
    assert down.returncode == 0, down.stderr
    time.sleep(0.2)
    assert not alive(pids[0])
    assert not any(n.startswith(f"pycni-{name}-") for n in os.listdir("/run/netns"))
    assert not os.path.exists(f"/etc/netns/pycni-{name}-default.a")
