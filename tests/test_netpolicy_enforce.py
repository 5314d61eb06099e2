"""Network policy in the kernel: truth tables between real network
namespaces, held to the independent evaluator (policy_eval.py).

Three namespaces x three pods, each pod a netns with a veth on a bridge of
a "host" netns that stands for the node; x and y share bridge 1 (their
traffic is bridged), z is on bridge 2 (traffic with it is routed by the
host).  Every pod listens on TCP and UDP 80 and 53, over IPv4 and IPv6;
every pod pair (and node <-> pod) is probed in parallel for each case, the
policies being applied with `pycni policy apply` inside the host netns,
as the node agent would.  The pods are made once for the module;
cases change only policies and labels.
"""
import copy
import json
import os
import random
import subprocess
import sys
import threading
import time
import uuid

import pytest

from policy_eval import Cluster

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

PROBE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "netpolicy_probe.py")
NODE = "node-1"
NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
PORTS = (80, 53)
PROTOCOLS = ("tcp", "udp")
TIMEOUT = 0.8


def sh(*cmd, check=True, stdin=None):
    proc = subprocess.run(cmd, capture_output=True, text=True, input=stdin)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)}: {proc.stderr or proc.stdout}")
    return proc


def netpol(name, namespace, **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pods_labelled(**labels):
    return {"matchLabels": labels}


class Lab:
    """The pods, the node, and what netpolicy is told about them."""

    def __init__(self, workdir):
        self.uid = uuid.uuid4().hex[:6]
        self.host = f"nph{self.uid}"
        self.workdir = workdir
        b, c = random.randint(200, 249), random.randint(0, 250)
        self.subnets = {1: (f"10.{b}.{c}", f"fd00:{b}:{c}::"), 2: (f"10.{b}.{c + 1}", f"fd00:{b}:{c + 1}::")}
        self.gateways = {n: (f"{v4}.1", f"{v6}1") for n, (v4, v6) in self.subnets.items()}
        self.namespace_labels = {ns: {"ns": ns} for ns in NAMESPACES}
        self.pods = {}
        for i, ns in enumerate(NAMESPACES):
            bridge = 1 if ns in ("x", "y") else 2
            for j, name in enumerate(PODS):
                v4, v6 = self.subnets[bridge]
                index = 2 + 3 * i + j
                self.pods[f"{ns}/{name}"] = {
                    "namespace": ns, "name": name, "netns": f"np{self.uid}{ns}{name}", "bridge": bridge,
                    "veth": f"v{ns}{name}", "addresses": (f"{v4}.{index}", f"{v6}{index:x}"),
                    "labels": {"pod": name}, "web": 53 if ns == "z" else 80}
        self.listeners = []
        self.made_netns = []
        self.udp_port = 20000

    # --- the world ---------------------------------------------------------------------
    def up(self):
        sh("ip", "netns", "add", self.host)
        self.made_netns.append(self.host)
        hostcmd = ("ip", "-n", self.host)
        sh(*hostcmd, "link", "set", "lo", "up")
        sh("ip", "netns", "exec", self.host, "sysctl", "-qw", "net.ipv4.ip_forward=1",
           "net.ipv6.conf.all.forwarding=1")
        for n, (v4, v6) in self.gateways.items():
            sh(*hostcmd, "link", "add", f"br{n}", "type", "bridge")
            sh(*hostcmd, "addr", "add", f"{v4}/24", "dev", f"br{n}")
            sh(*hostcmd, "addr", "add", f"{v6}/64", "dev", f"br{n}", "nodad")
            sh(*hostcmd, "link", "set", f"br{n}", "up")
        for pod in self.pods.values():
            ns = pod["netns"]
            sh("ip", "netns", "add", ns)
            self.made_netns.append(ns)
            sh(*hostcmd, "link", "add", pod["veth"], "type", "veth", "peer", "name", "eth0", "netns", ns)
            sh(*hostcmd, "link", "set", pod["veth"], "master", f"br{pod['bridge']}", "up")
            v4, v6 = pod["addresses"]
            gw4, gw6 = self.gateways[pod["bridge"]]
            for args in (("link", "set", "lo", "up"), ("addr", "add", f"{v4}/24", "dev", "eth0"),
                         ("addr", "add", f"{v6}/64", "dev", "eth0", "nodad"), ("link", "set", "eth0", "up"),
                         ("route", "add", "default", "via", gw4), ("-6", "route", "add", "default", "via", gw6)):
                sh("ip", "-n", ns, *args)
        for ns in [self.host] + [p["netns"] for p in self.pods.values()]:
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, PROBE, "serve", *map(str, PORTS)],
                                    stdout=subprocess.PIPE, text=True)
            self.listeners.append(proc)
            assert proc.stdout.readline().strip() == "ready"

    def down(self):
        for proc in self.listeners:
            proc.kill()
            proc.wait()
        for ns in reversed(self.made_netns):
            sh("ip", "netns", "delete", ns, check=False)

    def namespace_objects(self):
        return [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": labels}}
                for ns, labels in self.namespace_labels.items()]

    def pod_objects(self):
        objects = []
        for pod in self.pods.values():
            ports = [{"name": f"serve-{port}-{proto}", "containerPort": port, "protocol": proto.upper()}
                     for port in PORTS for proto in PROTOCOLS]
            ports.append({"name": "web", "containerPort": pod["web"], "protocol": "TCP"})
            objects.append({"apiVersion": "v1", "kind": "Pod",
                            "metadata": {"name": pod["name"], "namespace": pod["namespace"],
                                         "labels": pod["labels"]},
                            "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": ports}]},
                            "status": {"podIPs": [{"ip": a} for a in pod["addresses"]]}})
        return objects

    @property
    def node_addresses(self):
        return [a for pair in self.gateways.values() for a in pair]

    # --- netpolicy ------------------------------------------------------------------------
    def netpolicy(self, command, *args, check=True):
        return sh("ip", "netns", "exec", self.host, sys.executable, "-m", "pycni.cli", "policy", command,
                  "-f", str(self.workdir / "objects"), "--state-dir", str(self.workdir / "state"), *args,
                  check=check)

    def write(self, policies, registered=()):
        """The sources' files; pods in ``registered`` are left out (the CNI
        plugin registers them through the controller instead)."""
        pods = [p for p in self.pod_objects()
                if f"{p['metadata']['namespace']}/{p['metadata']['name']}" not in registered]
        files = {"namespaces.yaml": self.namespace_objects(), "pods.yaml": pods, "policies.yaml": policies}
        (self.workdir / "objects").mkdir(exist_ok=True)
        for name, objects in files.items():
            (self.workdir / "objects" / name).write_text("\n---\n".join(json.dumps(o) for o in objects) + "\n")

    def apply(self, policies):
        """Apply through the CLI; returns the transaction's commands."""
        self.write(policies)
        self.policies = copy.deepcopy(policies)
        return json.loads(self.netpolicy("apply", "--node", NODE, "--json").stdout)

    def nft(self, *args):
        return sh("ip", "netns", "exec", self.host, "nft", *args, check=False)

    # --- probing ------------------------------------------------------------------------------
    def flows(self):
        """(source, destination, source address, destination address, port, protocol)."""
        endpoints = {label: pod for label, pod in self.pods.items()}
        for src, pod in endpoints.items():
            for dst, other in endpoints.items():
                if src != dst:
                    for i in (0, 1):
                        yield from self._ports(src, dst, pod["addresses"][i], other["addresses"][i])
            for address in self.gateways[pod["bridge"]]:   # the pod's own node
                yield from self._ports(src, "node", pod["addresses"]["." not in address], address)
            for i in (0, 1):                                 # and the node to the pod
                yield from self._ports("node", src, self.gateways[pod["bridge"]][i], pod["addresses"][i])

    @staticmethod
    def _ports(src, dst, src_address, dst_address):
        for port in PORTS:
            for protocol in PROTOCOLS:
                yield src, dst, src_address, dst_address, port, protocol

    def probe(self, flows, timeout=TIMEOUT):
        """Observed reachability of ``flows``, probed in parallel from every source."""
        by_source = {}
        for flow in flows:
            by_source.setdefault(flow[0], []).append(flow)
        procs = {}
        for src, items in by_source.items():
            netns = self.host if src == "node" else self.pods[src]["netns"]
            targets = []
            for flow in items:
                self.udp_port += 1
                targets.append([flow[3], flow[4], flow[5], self.udp_port])
            proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, PROBE, "probe", str(timeout)],
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            proc.stdin.write(json.dumps(targets))
            proc.stdin.close()
            procs[src] = proc
        observed = {}
        for src, proc in procs.items():
            results = json.loads(proc.stdout.read())
            proc.wait()
            observed.update(zip(by_source[src], results))
        return observed

    def check(self):
        """Probe every flow and compare with the evaluator; allowed flows
        seen blocked are probed once more, slowly (a lost packet is not a
        policy), before they count as wrong."""
        reference = Cluster(self.policies, self.namespace_objects(), self.pod_objects(),
                            {NODE: self.node_addresses})
        expected = {f: reference.allowed(f[2], f[3], f[4], f[5].upper()) for f in self.flows()}
        observed = self.probe(expected)
        again = [f for f, ok in observed.items() if expected[f] and not ok]
        if again:
            observed.update(self.probe(again, timeout=3))
        wrong = [f"{f[0]} -> {f[1]} {f[3]} {f[4]}/{f[5]}: seen {'open' if observed[f] else 'closed'}, "
                 f"expected {'open' if expected[f] else 'closed'}" for f in expected if observed[f] != expected[f]]
        assert not wrong, "\n".join(wrong)
        return expected


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    lab = Lab(tmp_path_factory.mktemp("netpolicy"))
    try:
        lab.up()
        yield lab
    finally:
        lab.down()


def restore_labels(lab):
    """Every pod and namespace of the lab back to its first labels."""
    for pod in lab.pods.values():
        pod["labels"] = {"pod": pod["name"]}
    lab.namespace_labels = {ns: {"ns": ns} for ns in NAMESPACES}


@pytest.fixture
def fresh(lab):
    """The lab with its original labels and no policy, whatever a test did."""
    yield lab
    restore_labels(lab)


# --- the cases of the Kubernetes network-policy e2e suite --------------------------------------
def cases(lab):
    z = lab.subnets[2]
    x_a = lab.pods["x/a"]["addresses"]
    z_b = lab.pods["z/b"]["addresses"]
    x_pods = {"matchLabels": {}}
    return {
        "no-policy": [],
        "default-deny-ingress": [netpol("deny", "x", podSelector=x_pods)],
        "default-deny-egress": [netpol("deny", "x", podSelector=x_pods, policyTypes=["Egress"])],
        "default-deny-both": [netpol("deny", "y", podSelector=x_pods, policyTypes=["Ingress", "Egress"])],
        "allow-all-ingress-despite-deny": [
            netpol("deny", "x", podSelector=x_pods),
            netpol("allow", "x", podSelector=pods_labelled(pod="a"), ingress=[{}])],
        "allow-from-namespace": [netpol("from-y", "x", podSelector=pods_labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])],
        "allow-from-pod-in-namespace": [netpol("from-zb", "x", podSelector=pods_labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}, "podSelector": pods_labelled(pod="b")}]}])],
        "allow-from-pod-or-namespace": [netpol("y-or-c", "x", podSelector=pods_labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}, {"podSelector": pods_labelled(pod="c")}]}])],
        "match-expressions": [netpol("exprs", "x", podSelector={"matchExpressions": [
            {"key": "pod", "operator": "In", "values": ["a", "b"]}]}, ingress=[{"from": [
                {"namespaceSelector": {"matchExpressions": [{"key": "ns", "operator": "NotIn", "values": ["y"]}]},
                 "podSelector": {"matchExpressions": [{"key": "pod", "operator": "Exists"},
                                                      {"key": "role", "operator": "DoesNotExist"}]}}]}])],
        "ipblock-with-except": [netpol("cidr", "x", podSelector=pods_labelled(pod="a"), ingress=[{"from": [
            {"ipBlock": {"cidr": f"{z[0]}.0/24", "except": [f"{z_b[0]}/32"]}},
            {"ipBlock": {"cidr": f"{z[1]}/64", "except": [f"{z_b[1]}/128"]}}]}])],
        "egress-ipblock-with-except": [netpol("cidr-out", "y", podSelector=x_pods, policyTypes=["Egress"],
                                              egress=[{"to": [
            {"ipBlock": {"cidr": f"{lab.subnets[1][0]}.0/24", "except": [f"{x_a[0]}/32"]}},
            {"ipBlock": {"cidr": f"{lab.subnets[1][1]}/64", "except": [f"{x_a[1]}/128"]}}]}])],
        "named-ports": [netpol("named", "z", podSelector=pods_labelled(pod="a"), ingress=[
            {"ports": [{"port": "serve-80-tcp"}, {"port": "serve-53-udp", "protocol": "UDP"}]}])],
        "named-port-of-another-protocol": [netpol("mismatch", "z", podSelector=pods_labelled(pod="b"), ingress=[
            {"ports": [{"port": "serve-53-udp"}]}])],  # protocol defaults to TCP: matches nothing
        "port-ranges": [netpol("ranges", "x", podSelector=x_pods, ingress=[
            {"ports": [{"protocol": "UDP", "port": 50, "endPort": 60}, {"port": 70, "endPort": 90}]}])],
        "egress-to-dns-only": [netpol("dns", "y", podSelector=x_pods, policyTypes=["Egress"], egress=[
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}])],
        "egress-named-port-per-destination": [netpol("web", "x", podSelector=x_pods, policyTypes=["Egress"],
                                                     egress=[{"to": [{"namespaceSelector": {}}],
                                                              "ports": [{"port": "web"}]}])],
        "union-of-policies": [
            netpol("tcp-from-y", "x", podSelector=pods_labelled(pod="a"), ingress=[
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}], "ports": [{"port": 80}]}]),
            netpol("udp-from-z", "x", podSelector=pods_labelled(pod="a"), ingress=[
                {"from": [{"namespaceSelector": {"matchLabels": {"ns": "z"}}}],
                 "ports": [{"port": 53, "protocol": "UDP"}]}])],
        "ingress-and-egress": [netpol("both", "z", podSelector=pods_labelled(pod="c"),
                                      ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"ns": "x"}}}]}],
                                      egress=[{"to": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}],
                                               "ports": [{"port": 80}]}])],
    }


CASES = ["no-policy", "default-deny-ingress", "default-deny-egress", "default-deny-both",
         "allow-all-ingress-despite-deny", "allow-from-namespace", "allow-from-pod-in-namespace",
         "allow-from-pod-or-namespace", "match-expressions", "ipblock-with-except", "egress-ipblock-with-except",
         "named-ports", "named-port-of-another-protocol", "port-ranges", "egress-to-dns-only",
         "egress-named-port-per-destination", "union-of-policies", "ingress-and-egress"]


@pytest.mark.parametrize("case", CASES)
def test_truth_table(fresh, case):
    fresh.apply(cases(fresh)[case])
    expected = fresh.check()
    if case != "no-policy":  # the case must deny something, or it tests nothing
        assert not all(expected.values())


def test_cases_list_is_complete(lab):
    assert sorted(CASES) == sorted(cases(lab))


# --- changes: only what is touched is rewritten ------------------------------------------------
def element_changes(commands):
    return {f"{op} {kind}" for c in commands for op, body in c.items() for kind in body}


def listing(lab):
    """Our inet table's chains (with rules) and sets (with elements)."""
    items = json.loads(lab.nft("-j", "list", "table", "inet", "pycni_netpolicy").stdout)["nftables"]
    chains = {i["rule"]["handle"]: json.dumps(i["rule"]) for i in items if "rule" in i}
    sets = {s["name"]: s.get("elem", []) for i in items for kind in ("set", "map") if kind in i for s in [i[kind]]}
    return chains, sets


def test_policy_update_label_changes_and_delete(fresh):
    lab = fresh
    allow_y = netpol("allow", "x", podSelector=pods_labelled(pod="a"), ingress=[
        {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])
    lab.apply([allow_y])
    lab.check()

    update = copy.deepcopy(allow_y)   # the same policy now admits z instead of y, on port 80 only
    update["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]["ns"] = "z"
    update["spec"]["ingress"][0]["ports"] = [{"port": 80}]
    rules_before, _ = listing(lab)
    lab.apply([update])
    rules_after, _ = listing(lab)
    # only x/a's profile (ports) and class (now naming z's peer group) change
    rewritten = {json.loads(r)["chain"] for r in set(rules_before.values()) ^ set(rules_after.values())}
    assert rewritten and all(name[:2] in ("c_", "p_") for name in rewritten)
    lab.check()

    clients = netpol("allow", "x", podSelector=pods_labelled(pod="a"), ingress=[
        {"from": [{"namespaceSelector": {}, "podSelector": pods_labelled(role="client")}]}])
    lab.apply([clients])
    lab.check()
    rules_before, sets_before = listing(lab)
    lab.pods["y/b"]["labels"]["role"] = "client"     # a pod label change
    commands = lab.apply([clients])
    assert element_changes(commands) <= {"add element", "delete element"}
    rules_after, sets_after = listing(lab)
    assert rules_after == rules_before                 # not one rule rewritten
    changed = {name.rsplit("_", 1)[0] for name in sets_before if sets_before[name] != sets_after[name]}
    assert len(changed) == 1 and changed.pop().startswith("g_")   # the two sets of one peer group
    lab.check()

    team = netpol("allow", "x", podSelector=pods_labelled(pod="a"), ingress=[
        {"from": [{"namespaceSelector": {"matchLabels": {"team": "blue"}}}]}])
    lab.apply([team])
    lab.check()
    lab.namespace_labels["z"]["team"] = "blue"         # a namespace label change
    assert element_changes(lab.apply([team])) <= {"add element", "delete element"}
    lab.check()

    assert lab.apply([]) == [{"delete": {"table": {"family": "inet", "name": "pycni_netpolicy"}}},
                             {"delete": {"table": {"family": "bridge", "name": "pycni_netpolicy"}}}]
    assert "pycni_netpolicy" not in lab.nft("list", "tables").stdout
    lab.check()


def test_restart_reconciles_without_a_change_and_invalid_input_changes_nothing(fresh):
    lab = fresh
    policies = cases(lab)["union-of-policies"]
    assert lab.apply(policies)
    before = lab.nft("-j", "list", "ruleset").stdout
    # a new process (an agent restart) against what the kernel holds: nothing to do
    assert lab.apply(policies) == []
    bad = copy.deepcopy(policies)
    bad[0]["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}})
    lab.write(bad)
    result = lab.netpolicy("apply", "--node", NODE, check=False)
    assert result.returncode == 2
    assert "spec.ingress[0].from[1].ipBlock.except[0]: 10.1.0.0/24 must be a strict subset of cidr " \
           "10.0.0.0/16" in result.stderr
    assert lab.nft("-j", "list", "ruleset").stdout == before
    lab.check()   # still the valid policies


def test_counters_and_status(fresh):
    lab = fresh
    lab.apply(cases(lab)["allow-from-namespace"])
    lab.check()
    found = {s["policy"]: s for s in json.loads(lab.netpolicy("status", "--json").stdout)}
    allow = found["x/from-y"]
    assert allow["selects"] == ["x/a"]
    # y's three pods reached x/a on 2 ports x 2 protocols x 2 families, at least once each
    assert allow["packets"] >= 3 * 2 * 2 * 2 and allow["bytes"] > 0
    denied = json.loads(lab.nft("-j", "list", "counter", "inet", "pycni_netpolicy", "denied_ingress").stdout)
    assert denied["nftables"][1]["counter"]["packets"] > 0


def test_bridged_traffic_fails_closed_without_br_netfilter(fresh):
    """With bridge-nf-call-iptables off, bridged frames skip the inet hooks:
    the bridge guard then drops those of isolated pods instead of letting
    them through unjudged, and the next apply switches filtering back on."""
    lab = fresh
    lab.apply([netpol("allow-all", "x", podSelector=pods_labelled(pod="a"), ingress=[{}])])
    sysctl = ("ip", "netns", "exec", lab.host, "sysctl", "-qw")
    sh(*sysctl, "net.bridge.bridge-nf-call-iptables=0", "net.bridge.bridge-nf-call-ip6tables=0")
    try:
        a, b, c = (lab.pods[f"x/{n}"]["addresses"] for n in "abc")
        observed = lab.probe([("x/b", "x/a", b[0], a[0], 80, "tcp"), ("x/b", "x/a", b[1], a[1], 80, "tcp"),
                              ("x/b", "x/c", b[0], c[0], 80, "tcp")])
        assert list(observed.values()) == [False, False, True]   # isolated: dropped; the others: bridged
        unjudged = json.loads(lab.nft("-j", "list", "counter", "bridge", "pycni_netpolicy", "unjudged").stdout)
        assert unjudged["nftables"][1]["counter"]["packets"] > 0
    finally:
        lab.apply(lab.policies)
    assert sh("ip", "netns", "exec", lab.host, "sysctl", "-n", "net.bridge.bridge-nf-call-iptables").stdout.strip() == "1"
    lab.check()


# --- the node agent's controller: CNI registrations, restarts, watching -------------------------
CONTROLLER = """
import json, logging, sys, threading
from netpolicy.enforcer import PolicyController
from netpolicy.parse import parse_endpoint
from netpolicy.sources import Attachment, DirectorySource
logging.basicConfig(level=logging.INFO)
node, directory, registry, command, *args = sys.argv[1:]
ctl = PolicyController(node, [DirectorySource(directory, interval=0.05)], registry_dir=registry)
attachment = Attachment("net", "c1", "eth0")
if command == "register":
    ctl.reconcile()
    print(json.dumps(ctl.register(attachment, parse_endpoint(json.loads(args[0])))))
elif command == "unregister":
    ctl.reconcile()
    print(json.dumps(ctl.unregister(attachment)))
elif command == "reconcile":
    print(json.dumps(ctl.reconcile()))
else:
    stop = threading.Event()
    loop = threading.Thread(target=ctl.run, args=(stop,), kwargs={"resync_every": 0.5})
    loop.start()
    sys.stdin.read()
    stop.set()
    loop.join()
"""


def controller(lab, registry, command, *args, **popen):
    cmd = ["ip", "netns", "exec", lab.host, sys.executable, "-c", CONTROLLER, NODE, str(lab.workdir / "objects"),
           str(registry), command, *args]
    if popen:
        return subprocess.Popen(cmd, text=True, **popen)
    return json.loads(sh(*cmd).stdout)


def test_a_registered_pod_is_isolated_when_register_returns(fresh, tmp_path):
    lab = fresh
    policies = [netpol("deny", "x", podSelector={}),
                netpol("from-y", "x", podSelector=pods_labelled(pod="a"), ingress=[
                    {"from": [{"namespaceSelector": {"matchLabels": {"ns": "y"}}}]}])]
    lab.apply(policies)
    lab.write(policies, registered=["x/a"])
    assert controller(lab, tmp_path, "reconcile")   # x/a unknown: its rules go
    z_a, x_a = lab.pods["z/a"]["addresses"], lab.pods["x/a"]["addresses"]
    unknown = [("z/a", "x/a", z_a[0], x_a[0], 80, "tcp")]
    assert list(lab.probe(unknown).values()) == [True]

    pod = lab.pods["x/a"]
    record = {"namespace": "x", "name": "a", "labels": pod["labels"], "addresses": list(pod["addresses"]),
              "node": NODE, "ports": [{"name": "web", "port": pod["web"], "protocol": "TCP"}]}
    assert controller(lab, tmp_path, "register", json.dumps(record))
    assert list(lab.probe(unknown).values()) == [False]
    lab.check()
    assert controller(lab, tmp_path, "reconcile") == []   # a restarted agent remembers x/a
    assert controller(lab, tmp_path, "unregister")
    assert list(lab.probe(unknown).values()) == [True]


def _wait_for(predicate, what, deadline=15.0):
    end = time.monotonic() + deadline
    while not predicate():
        assert time.monotonic() < end, f"gave up waiting for {what}"
        time.sleep(0.05)


def test_the_agent_loop_follows_files_keeps_the_last_valid_state_and_heals(fresh, tmp_path):
    lab = fresh
    lab.apply([])
    agent = controller(lab, tmp_path, "run", stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    log = []
    threading.Thread(target=lambda: log.extend(agent.stderr), daemon=True).start()
    try:
        first = cases(lab)["allow-from-namespace"]
        lab.write(first)
        lab.policies = first
        _wait_for(lambda: "x/from-y ingress[0]" in lab.nft("list", "counters").stdout, "the policy")
        lab.check()
        before = lab.nft("-j", "list", "ruleset").stdout
        broken = copy.deepcopy(first)
        broken[0]["spec"]["podSelector"] = {"matchExpressions": [{"key": "pod", "operator": "In"}]}
        lab.write(broken)
        _wait_for(lambda: any("keeping the last valid state" in line for line in log), "the agent to refuse it")
        assert lab.nft("-j", "list", "ruleset").stdout == before
        fixed = cases(lab)["union-of-policies"]
        lab.write(fixed)
        lab.policies = fixed
        _wait_for(lambda: "x/udp-from-z ingress[0]" in lab.nft("list", "counters").stdout, "the fixed policies")
        lab.check()
        # someone deletes our table: the periodic resync lists the kernel and rebuilds it
        lab.nft("delete", "table", "inet", "pycni_netpolicy")
        _wait_for(lambda: "x/udp-from-z ingress[0]" in lab.nft("list", "counters").stdout, "the rebuilt table")
        lab.check()
    finally:
        agent.stdin.close()
        try:
            agent.wait(timeout=30)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
