"""The netpolicy CNI plugin end to end: bridge + netpolicy chained, run as
a runtime runs them (our libcni, the installed executables, inside a
"node" network namespace) with the policy controller service running in
that node (tests/netpolicy_controller.py, as the node agent runs it).

Pods are network namespaces on the node's bridge; reachability is what
TCP and UDP probes between them observe (netpolicy_probe.py)."""
import json
import os
import random
import subprocess
import sys
import threading
import time

import pytest

from conftest import run, unique
from pycni import libcni

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

HERE = os.path.dirname(os.path.abspath(__file__))
PROBE = os.path.join(HERE, "netpolicy_probe.py")
CONTROLLER = os.path.join(HERE, "netpolicy_controller.py")
NODE = "node-1"


def netpol(name, namespace, **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


class Controller:
    """The policy controller service in the node's netns."""

    def __init__(self, node, state_dir, policy_dir, socket_name, log_path):
        self.cmd = ["ip", "netns", "exec", node, sys.executable, CONTROLLER, "--node", NODE,
                    "--state-dir", str(state_dir), "--policy-dir", str(policy_dir), "--socket", socket_name]
        self.log_path = log_path
        self.proc = None
        self.start()

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     stderr=open(self.log_path, "a"))
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.stop()
            raise AssertionError(f"the controller did not start: {open(self.log_path).read()}")

    def stop(self):
        if self.proc is None:
            return
        self.proc.stdin.close()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


class Node:
    """A node (netns) with a bridge network whose chain ends in netpolicy,
    the controller serving it, and pods (netns) attached through libcni."""

    def __init__(self, make_netns, tmp_path, bin_dir, policies):
        self.make_netns = make_netns
        self.netns = make_netns("npn")
        run("ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1")
        self.policy_dir = tmp_path / "policies"
        self.policy_dir.mkdir()
        self.write_policies(policies)
        self.labels_dir = tmp_path / "labels"
        self.agent_state = tmp_path / "agent-state"
        self.socket = unique("pycni-policy-test-")
        subnet = f"10.{random.randint(200, 249)}.{random.randint(0, 255)}.0/24"
        self.conflist = {"cniVersion": "1.1.0", "name": unique("npnet"), "plugins": [
            {"type": "bridge", "bridge": unique("pbr"), "isGateway": True,
             "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"), "ranges": [[{"subnet": subnet}]]}},
            {"type": "netpolicy", "socket": self.socket, "labelsDir": str(self.labels_dir),
             "capabilities": {"labels": True, "podPorts": True}}]}
        self.netconf = libcni.conflist_from_bytes(json.dumps(self.conflist).encode())
        self.cni = libcni.CNIConfig([bin_dir], str(tmp_path / "cache"), exec_netns=f"/run/netns/{self.netns}")
        self.controller = Controller(self.netns, self.agent_state, self.policy_dir, self.socket,
                                     tmp_path / "controller.log")
        self.pods = {}
        self.listeners = []

    def write_policies(self, policies):
        (self.policy_dir / "policies.yaml").write_text("\n---\n".join(json.dumps(p) for p in policies) + "\n")

    def runtime_conf(self, key, labels=None, ports=None):
        namespace, name = key.split("/")
        caps = {k: v for k, v in (("labels", labels), ("podPorts", ports)) if v is not None}
        return libcni.RuntimeConf(f"ctr-{name}-{self.pods[key]}", f"/run/netns/{self.pods[key]}", "eth0",
                                  [("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", namespace), ("K8S_POD_NAME", name)],
                                  caps)

    def new_pod(self, key):
        self.pods[key] = self.make_netns("npp")
        return self.pods[key]

    def attach(self, key, labels=None, ports=None):
        """ADD through the chain; returns the pod's address."""
        if key not in self.pods:
            self.new_pod(key)
        result = self.cni.add_network_list(self.netconf, self.runtime_conf(key, labels, ports))
        return result["ips"][0]["address"].split("/")[0]

    def detach(self, key):
        self.cni.del_network_list(self.netconf, self.runtime_conf(key))

    def serve(self, key, *ports):
        proc = subprocess.Popen(["ip", "netns", "exec", self.pods[key], sys.executable, PROBE, "serve",
                                 *map(str, ports)], stdout=subprocess.PIPE, text=True)
        self.listeners.append(proc)
        assert proc.stdout.readline().strip() == "ready"

    def probe(self, source, targets, timeout=0.8):
        """[(address, port, "tcp"|"udp")] from pod ``source`` -> [reached?]."""
        items = [[address, port, protocol, 30000 + random.randint(0, 20000)] for address, port, protocol in targets]
        out = run("ip", "netns", "exec", self.pods[source], sys.executable, PROBE, "probe", str(timeout),
                  input=json.dumps(items))
        return json.loads(out.stdout)

    def nft(self, *args):
        return run("ip", "netns", "exec", self.netns, "nft", *args, check=False).stdout

    def policy_cli(self, *args, check=True):
        out = run("ip", "netns", "exec", self.netns, sys.executable, "-m", "pycni.cli", "policy", *args,
                  "-f", str(self.policy_dir), "--state-dir", str(self.agent_state), check=False)
        assert not check or out.returncode in (0, 3), out.stderr
        return out

    def close(self):
        for proc in self.listeners:
            proc.kill()
            proc.wait()
        self.controller.stop()


@pytest.fixture
def node_with(make_netns, tmp_path, bin_dir, state_dirs):
    made = []

    def make(policies):
        made.append(Node(make_netns, tmp_path, bin_dir, policies))
        return made[-1]

    yield make
    for node in made:
        node.close()   # the netns (bridge, veths, our tables) go with make_netns


# --- ADD: the rules are there before it returns -------------------------------------------------
SENDER = r"""
import socket, sys, time
address, port = sys.argv[1], int(sys.argv[2])
print("waiting", flush=True)
sys.stdin.readline()                       # the go: ADD has returned
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setblocking(False)
try:
    tcp.connect((address, port))
except OSError:
    pass
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sent, end = 0, time.monotonic() + 0.6
while time.monotonic() < end:
    try:
        udp.sendto(b"first", (address, port))
        sent += 1
    except OSError:
        time.sleep(0.001)
print(sent, flush=True)
"""

LISTENER = r"""
import json, select, socket, sys
port = int(sys.argv[1])
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", port))
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
tcp.bind(("0.0.0.0", port))
tcp.listen(16)
print("ready", flush=True)
seen = {}
while True:
    ready, _, _ = select.select([udp, tcp, sys.stdin], [], [])
    if sys.stdin in ready:
        break
    if udp in ready:
        _, (peer, _) = udp.recvfrom(64)
        seen[peer] = seen.get(peer, 0) + 1
    if tcp in ready:
        conn, (peer, _) = tcp.accept()
        conn.close()
        seen[peer] = seen.get(peer, 0) + 1
print(json.dumps(seen), flush=True)
"""


def sends_right_after_add(node, key, listener_address, port=7000):
    """ADD the pod, and the moment it returns let a process already waiting
    in the pod send to the listener (TCP SYN, then UDP for 0.6 s)."""
    netns = node.new_pod(key)
    sender = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c", SENDER, listener_address,
                               str(port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert sender.stdout.readline().strip() == "waiting"
        address = node.attach(key)
        sender.stdin.write("go\n")
        sender.stdin.flush()
        sent = int(sender.stdout.readline())
    finally:
        sender.kill()
        sender.wait()
    return address, sent


def test_a_pod_a_deny_all_policy_selects_is_isolated_from_its_first_packet(node_with):
    node = node_with([netpol("deny-all", "x", podSelector={}, policyTypes=["Ingress", "Egress"])])
    listener_address = node.attach("y/listener")
    listener = subprocess.Popen(["ip", "netns", "exec", node.pods["y/listener"], sys.executable, "-c", LISTENER,
                                 "7000"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        isolated, sent_isolated = sends_right_after_add(node, "x/new", listener_address)
        open_, sent_open = sends_right_after_add(node, "y/new", listener_address)   # the control: no policy
        listener.stdin.close()
        seen = json.loads(listener.stdout.readline())
    finally:
        listener.kill()
        listener.wait()
    assert sent_isolated > 100 and sent_open > 100   # both sent at once, as fast as they could
    assert seen.get(open_, 0) > 0, seen               # the path works from the first moments...
    assert isolated not in seen, seen                 # ...and not one packet of the isolated pod got out
    # nor can anything reach it
    node.serve("x/new", 80)
    assert node.probe("y/listener", [(isolated, 80, "tcp"), (isolated, 80, "udp")]) == [False, False]


# --- what an endpoint holds: labels and named ports ---------------------------------------------
def test_labels_and_named_ports_from_runtime_config_and_label_files(node_with):
    node = node_with([netpol("clients-to-http", "x", podSelector={"matchLabels": {"app": "server"}}, ingress=[
        {"from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
         "ports": [{"port": "http"}]}])])
    (node.labels_dir / "y").mkdir(parents=True)
    (node.labels_dir / "y" / "filed.json").write_text(json.dumps({"labels": {"role": "client"}}))
    (node.labels_dir / "y" / "overridden.json").write_text(json.dumps({"labels": {"role": "client"}}))
    server = node.attach("x/server", labels={"app": "server"},
                         ports=[{"name": "http", "containerPort": 8080, "protocol": "TCP"}])
    node.attach("y/runtime", labels={"role": "client"})    # labels from runtimeConfig
    node.attach("y/filed")                                  # labels from its file
    node.attach("y/overridden", labels={"role": "other"})  # runtimeConfig wins over the file
    node.attach("y/nolabels")
    node.serve("x/server", 8080, 8081)
    to_server = [(server, 8080, "tcp"), (server, 8081, "tcp")]
    assert node.probe("y/runtime", to_server) == [True, False]    # only the named port
    assert node.probe("y/filed", to_server) == [True, False]
    assert node.probe("y/overridden", to_server) == [False, False]
    assert node.probe("y/nolabels", to_server) == [False, False]
    status = {s["policy"]: s for s in json.loads(node.policy_cli("status", "--json").stdout)}
    assert status["x/clients-to-http"]["selects"] == ["x/server"]
    assert status["x/clients-to-http"]["packets"] >= 2   # the two clients' connections were counted


def test_an_invalid_label_is_refused_with_the_field_named(node_with):
    node = node_with([])
    with pytest.raises(libcni.PluginError) as e:
        node.attach("y/bad", labels={"role": "no spaces allowed"})
    assert e.value.plugin == "netpolicy" and e.value.code == 7
    assert "labels: 'no spaces allowed' must be at most 63 characters" in e.value.msg


# --- DEL, GC, CHECK, STATUS; no controller -----------------------------------------------------
def pods_map(node):
    return node.nft("list", "map", "inet", "pycni_netpolicy", "ingress_pods4")


def registrations(node):
    directory = node.agent_state / "netpolicy" / "endpoints"
    return sorted(json.loads(p.read_text())["endpoint"]["name"] for p in directory.iterdir())


def test_del_and_gc_remove_the_endpoint(node_with):
    node = node_with([netpol("deny", "x", podSelector={})])
    first, second = node.attach("x/first"), node.attach("x/second")
    node.cni.check_network_list(node.netconf, node.runtime_conf("x/first"))
    assert first in pods_map(node) and second in pods_map(node)
    assert registrations(node) == ["first", "second"]
    node.detach("x/first")
    assert first not in pods_map(node) and registrations(node) == ["second"]
    # GC: the runtime no longer knows x/second (its DEL was lost)
    assert node.cni.gc_network_list(node.netconf, []) == []
    assert second not in pods_map(node) and registrations(node) == []


def test_without_a_controller_add_fails_and_asks_to_try_again(node_with):
    node = node_with([])
    node.controller.stop()
    with pytest.raises(libcni.PluginError) as e:
        node.attach("x/orphan")
    assert e.value.plugin == "netpolicy" and e.value.code == 11
    assert "no network-policy controller answers" in e.value.msg
    with pytest.raises(libcni.PluginError) as e:
        node.cni.get_status_network_list(node.netconf)
    assert e.value.code == 50
    node.controller.start()
    node.cni.get_status_network_list(node.netconf)
    node.detach("x/orphan")   # bridge undoes its part from its own record


# --- a controller restart: no window, nothing to change -----------------------------------------
def test_a_controller_restart_changes_nothing_and_leaves_no_window(node_with):
    node = node_with([netpol("from-y", "x", podSelector={}, ingress=[
        {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}}}]}])])
    server = node.attach("x/server")
    node.attach("y/friend")
    node.attach("z/stranger")
    node.serve("x/server", 80)
    before = node.nft("list", "ruleset")
    wrong, rounds, done = [], [0], threading.Event()

    def keep_probing():
        while not done.is_set():
            if node.probe("y/friend", [(server, 80, "tcp")], timeout=0.5) != [True]:
                wrong.append("y/friend could not reach x/server")
            if node.probe("z/stranger", [(server, 80, "tcp")], timeout=0.3) != [False]:
                wrong.append("z/stranger reached x/server")
            rounds[0] += 1

    prober = threading.Thread(target=keep_probing)
    prober.start()
    try:
        time.sleep(0.5)
        node.controller.stop()
        time.sleep(0.5)
        node.controller.start()
        time.sleep(0.5)
    finally:
        done.set()
        prober.join()
    assert rounds[0] >= 3 and not wrong, wrong
    strip = lambda text: [line for line in text.splitlines() if "packets" not in line]  # noqa: E731
    assert strip(node.nft("list", "ruleset")) == strip(before)
    assert "netpolicy: first sync: 0 change(s)" in open(node.controller.log_path).read()


# --- explain agrees with the probes --------------------------------------------------------------
def test_explain_agrees_with_what_probes_see(node_with):
    node = node_with([
        netpol("web", "x", podSelector={"matchLabels": {"app": "web"}}, ingress=[
            {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": 80}]}]),
        netpol("out", "x", podSelector={"matchLabels": {"role": "client"}}, policyTypes=["Egress"],
               egress=[{"to": [{"podSelector": {"matchLabels": {"app": "web"}}}]}])])
    web = node.attach("x/web", labels={"app": "web"})
    client = node.attach("x/client", labels={"role": "client"})
    other = node.attach("x/other")
    for key in ("x/web", "x/client", "x/other"):
        node.serve(key, 80, 81)
    flows = [("x/client", "x/web", web, 80), ("x/client", "x/web", web, 81), ("x/other", "x/web", web, 80),
             ("x/client", "x/other", other, 80), ("x/other", "x/client", client, 80)]
    seen = [node.probe(src, [(address, port, "tcp")])[0] for src, _, address, port in flows]
    explained = []
    for src, dst, _, port in flows:
        out = node.policy_cli("explain", src, dst, str(port), "--json")
        explained.append(json.loads(out.stdout))
    assert [e["allowed"] for e in explained] == seen == [True, False, False, False, True]
    assert explained[0]["ingress"]["allowing"] == ["x/web ingress[0]"]
    assert explained[0]["egress"]["allowing"] == ["x/out egress[0]"]
    assert explained[3]["egress"]["isolating"] == ["x/out"] and not explained[3]["egress"]["allowing"]
