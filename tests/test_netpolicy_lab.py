"""Network policy through the lab, as a user runs it: `pycni lab up` of
three namespaces x three pods (labels, named ports), `pycni lab apply` of
policies and label changes, `pycni lab probe 80/tcp 80/udp 53/tcp 53/udp
--json`, every pod pair in both address families held to the independent
evaluator (policy_eval.py), over the cases of the Kubernetes
network-policy e2e suite.

Two labs, each made once for the module, the cases changing only its
file's policies and labels:

- one host, x and y on one bridge network (bridged traffic), z on another
  (routed by the host); the agent reads the lab's objects directory;
- three overlay hosts (file store), each namespace's pods spread over the
  hosts, so most flows cross VXLAN: the source's egress is judged on its
  host, the destination's ingress on its own, policies and pods reaching
  every host through the overlay's store.

A third lab, three overlay hosts on the lab's etcd, runs a few of the
cases: the store's other kind.  `pycni policy explain`, given the lab's
objects and pods, agrees with the probes.
"""
import copy
import ipaddress
import itertools
import json
import os
import random
import subprocess

import pytest
import yaml

from conftest import PYCNI, lab_cli, unique
from policy_eval import Cluster
from test_netpolicy_enforce import netpol
from test_netpolicy_enforce import pods_labelled as labelled
from test_netpolicy_enforce import restore_labels

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

NAMESPACES = ("x", "y", "z")
PODS = ("a", "b", "c")
TARGETS = ("80/tcp", "80/udp", "53/tcp", "53/udp")
TIMEOUT = "0.6"


class PolicyLab:
    """A lab file of nine pods and the `pycni lab` commands on it."""

    def __init__(self, root, kind):
        self.root, self.kind = root, kind
        self.name = unique("np")
        self.path = root / f"{self.name}.yaml"
        self.hosts = ["h1"] if kind == "one-host" else ["h1", "h2", "h3"]
        b, c = random.randint(200, 219), random.randrange(0, 250, 2)
        self.underlay = f"10.{b}.{c}"
        if kind == "one-host":   # x and y on n1, z on n2
            self.blocks = {1: (f"10.{b}.{c}.0/24", f"fd00:{b}:{c}::/64"), 2: (f"10.{b}.{c + 1}.0/24",
                                                                          f"fd00:{b}:{c + 1}::/64")}
        else:                    # every pod in the cluster CIDRs
            k = random.randint(220, 239)
            self.blocks = {i: (f"10.{k}.0.0/16", f"fd00:{k}::/48") for i in (1, 2)}
        self.namespace_labels = {ns: {"ns": ns} for ns in NAMESPACES}
        self.pods = {}
        for i, (ns, name) in enumerate(itertools.product(NAMESPACES, PODS)):
            self.pods[f"{ns}/{name}"] = {
                "name": name, "namespace": ns, "host": self.hosts[i % len(self.hosts)],
                "network": ("n2" if ns == "z" else "n1") if kind == "one-host" else "cluster",
                "labels": {"pod": name},
                "ports": [{"name": f"serve-{port}-{proto}", "port": port, "protocol": proto.upper()}
                          for port in (80, 53) for proto in ("tcp", "udp")]
                + [{"name": "web", "port": 53 if ns == "z" else 80}]}
        self.policies = []
        self.files = {}    # policy files the lab file names by path
        self.status = None

    def body(self) -> dict:
        if self.kind == "one-host":
            networks = [{"name": f"n{i}", "subnet": v4, "subnet6": v6} for i, (v4, v6) in self.blocks.items()]
            hosts = [{"name": "h1"}]
        else:
            v4, v6 = self.blocks[1]
            store = {"store": "file"} if self.kind == "overlay-file" else {"store": "etcd", "etcdMembers": 1}
            networks = [{"name": "cluster", "type": "overlay", "clusterCIDR": v4, "clusterCIDR6": v6, **store}]
            hosts = [{"name": h, "underlay": f"{self.underlay}.{i}/24"} for i, h in enumerate(self.hosts, start=1)]
        for name, objects in self.files.items():
            (self.root / name).write_text(yaml.safe_dump_all(objects))
        return {"name": self.name, "hosts": hosts, "networks": networks,
                "namespaces": [{"name": ns, "labels": labels} for ns, labels in self.namespace_labels.items()],
                "pods": list(self.pods.values()), "policies": [*self.policies, *self.files]}

    def pycni(self, *args, check=True):
        return lab_cli(self.root, *args, check=check)

    def up(self):
        self.path.write_text(yaml.safe_dump(self.body()))
        self.pycni("lab", "up", str(self.path))
        self.status = json.loads(self.pycni("lab", "status", self.name, "--json").stdout)

    def apply(self, policies=None, files=None):
        """The lab file with these policies (and policy files), applied."""
        self.policies = copy.deepcopy(policies if policies is not None else self.policies)
        self.files = copy.deepcopy(files or {})
        self.path.write_text(yaml.safe_dump(self.body()))
        self.pycni("lab", "apply", str(self.path))
        self.status = json.loads(self.pycni("lab", "status", self.name, "--json").stdout)

    def down(self):
        self.pycni("lab", "down", self.name)

    # --- what the pods are, for the evaluator -----------------------------------------
    def addresses(self, key) -> list[str]:
        return next(p["ips"] for p in self.status["pods"] if f"{p['namespace']}/{p['name']}" == key)

    def address(self, key, version) -> str:
        return next(a for a in self.addresses(key) if ipaddress.ip_address(a).version == version)

    def reference(self) -> Cluster:
        pods = [{"metadata": {"name": p["name"], "namespace": p["namespace"], "labels": p["labels"]},
                 "spec": {"nodeName": p["host"], "containers": [{"name": "c", "ports": [
                     {"name": port["name"], "containerPort": port["port"], "protocol": port.get("protocol", "TCP")}
                     for port in p["ports"]]}]},
                 "status": {"podIPs": [{"ip": a} for a in self.addresses(key)]}} for key, p in self.pods.items()]
        namespaces = [{"metadata": {"name": ns, "labels": labels}} for ns, labels in self.namespace_labels.items()]
        policies = self.policies + [o for objects in self.files.values() for o in objects]
        return Cluster(policies, namespaces, pods)

    # --- probing ------------------------------------------------------------------------------
    def probe(self) -> dict:
        report = json.loads(self.pycni("lab", "probe", "--lab", self.name, "--json", "--timeout", TIMEOUT,
                                       *TARGETS).stdout)
        return {(r["from"], r["to"], r["address"], r["port"], r["protocol"]): r["reachable"] for r in report["probes"]}

    def check(self) -> dict:
        """Probe every pod pair and compare with the evaluator."""
        reference = self.reference()
        observed = self.probe()
        assert len(observed) == len(self.pods) ** 2 * len(TARGETS) * 2   # every pair, both families
        expected = {flow: reference.allowed(self.address(flow[0], ipaddress.ip_address(flow[2]).version), flow[2],
                                            flow[3], flow[4].upper())
                    for flow in observed}
        wrong = [f"{f[0]} -> {f[1]} {f[2]} {f[3]}/{f[4]}: seen {'open' if observed[f] else 'closed'}, "
                 f"expected {'open' if expected[f] else 'closed'}" for f in observed if observed[f] != expected[f]]
        assert not wrong, f"{len(wrong)} flow(s) differ:\n" + "\n".join(wrong)
        return observed

    # --- pycni policy explain, given the lab's objects and pods ----------------------------
    def explain(self, src, dst, port, protocol) -> bool:
        where = self.status["networkPolicy"]
        args = ["policy", "explain", src, dst, f"{port}/{protocol.upper()}", "-f", where["objects"]]
        if where["store"]:
            args += ["--store", where["store"]]
            args += ["--store-prefix", where["storePrefix"]] if where["storePrefix"] else []
        else:
            args += ["--state-dir", where["stateDirs"]["h1"]]
        if self.kind == "overlay-etcd":   # the lab's etcd is on the lab switch: ask from a host
            out = subprocess.run(["ip", "netns", "exec", self.status["hosts"][0]["netns"], *PYCNI, *args],
                                 capture_output=True, text=True)
        else:
            out = self.pycni(*args, check=False)
        assert out.returncode in (0, 3), out.stderr
        return out.returncode == 0


def _lab(root, kind):
    lab = PolicyLab(root, kind)
    try:
        lab.up()
        yield lab
    finally:
        lab.down()
    left = [ns for ns in os.listdir("/run/netns") if ns.startswith(f"pycni-{lab.name}-")]
    assert not left and not (root / lab.name).exists()


@pytest.fixture(scope="module", params=["one-host", "overlay-file"])
def lab(request, tmp_path_factory):
    yield from _lab(tmp_path_factory.mktemp("labs"), request.param)


@pytest.fixture
def fresh(lab):
    """The lab with its first labels and no policy, whatever a test did."""
    yield lab
    restore_labels(lab)
    lab.apply([])


# --- the cases of the Kubernetes network-policy e2e suite ---------------------------------------
def cases(lab):
    every = {"matchLabels": {}}
    z_block, x_block = lab.blocks[2], lab.blocks[1]
    z_b = [lab.address("z/b", 4), lab.address("z/b", 6)]
    x_a = [lab.address("x/a", 4), lab.address("x/a", 6)]
    return {
        "default-deny-ingress": [netpol("deny", "x", podSelector=every)],
        "default-deny-egress": [netpol("deny", "x", podSelector=every, policyTypes=["Egress"])],
        "default-deny-both": [netpol("deny", "y", podSelector=every, policyTypes=["Ingress", "Egress"])],
        "allow-from-namespace": [netpol("from-y", "x", podSelector=labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": labelled(ns="y")}]}])],
        "allow-from-pod-in-namespace": [netpol("from-zb", "x", podSelector=labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": labelled(ns="z"), "podSelector": labelled(pod="b")}]}])],
        "allow-from-pod-or-namespace": [netpol("y-or-c", "x", podSelector=labelled(pod="a"), ingress=[
            {"from": [{"namespaceSelector": labelled(ns="y")}, {"podSelector": labelled(pod="c")}]}])],
        "ipblock-with-except": [netpol("cidr", "x", podSelector=labelled(pod="a"), ingress=[{"from": [
            {"ipBlock": {"cidr": z_block[0], "except": [f"{z_b[0]}/32"]}},
            {"ipBlock": {"cidr": z_block[1], "except": [f"{z_b[1]}/128"]}}]}])],
        "egress-ipblock-with-except": [netpol("cidr-out", "y", podSelector=every, policyTypes=["Egress"], egress=[
            {"to": [{"ipBlock": {"cidr": x_block[0], "except": [f"{x_a[0]}/32"]}},
                    {"ipBlock": {"cidr": x_block[1], "except": [f"{x_a[1]}/128"]}}]}])],
        "named-ports": [netpol("named", "z", podSelector=labelled(pod="a"), ingress=[
            {"ports": [{"port": "serve-80-tcp"}, {"port": "serve-53-udp", "protocol": "UDP"}]}])],
        "egress-named-port-per-destination": [netpol("web", "x", podSelector=every, policyTypes=["Egress"],
                                                     egress=[{"to": [{"namespaceSelector": {}}],
                                                              "ports": [{"port": "web"}]}])],
        "port-ranges": [netpol("ranges", "x", podSelector=every, ingress=[
            {"ports": [{"protocol": "UDP", "port": 50, "endPort": 60}, {"port": 70, "endPort": 90}]}])],
        "egress-to-dns-only": [netpol("dns", "y", podSelector=every, policyTypes=["Egress"], egress=[
            {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}])],
        "union-of-policies": [
            netpol("tcp-from-y", "x", podSelector=labelled(pod="a"), ingress=[
                {"from": [{"namespaceSelector": labelled(ns="y")}], "ports": [{"port": 80}]}]),
            netpol("udp-from-z", "x", podSelector=labelled(pod="a"), ingress=[
                {"from": [{"namespaceSelector": labelled(ns="z")}], "ports": [{"port": 53, "protocol": "UDP"}]}])],
        "ingress-and-egress": [netpol("both", "z", podSelector=labelled(pod="c"),
                                      ingress=[{"from": [{"namespaceSelector": labelled(ns="x")}]}],
                                      egress=[{"to": [{"namespaceSelector": labelled(ns="y")}],
                                               "ports": [{"port": 80}]}])],
    }


CASES = ["default-deny-ingress", "default-deny-egress", "default-deny-both", "allow-from-namespace",
         "allow-from-pod-in-namespace", "allow-from-pod-or-namespace", "ipblock-with-except",
         "egress-ipblock-with-except", "named-ports", "egress-named-port-per-destination", "port-ranges",
         "egress-to-dns-only", "union-of-policies", "ingress-and-egress"]


def test_no_policy_every_pod_reaches_every_pod(lab):
    assert all(lab.check().values())


@pytest.mark.parametrize("case", CASES)
def test_truth_table(fresh, case):
    fresh.apply(cases(fresh)[case])
    assert not all(fresh.check().values())   # the case denies something, or it tests nothing


def test_cases_list_is_complete(lab):
    assert sorted(CASES) == sorted(cases(lab))


def test_a_policy_from_a_file_updated_and_deleted_through_apply(fresh):
    lab = fresh
    allow_y = netpol("allow", "x", podSelector=labelled(pod="a"), ingress=[
        {"from": [{"namespaceSelector": labelled(ns="y")}]}])
    lab.apply([], files={"allow.yaml": [netpol("deny", "x", podSelector={}), allow_y]})
    lab.check()
    update = copy.deepcopy(allow_y)    # now z instead of y, on port 80 only
    update["spec"]["ingress"] = [{"from": [{"namespaceSelector": labelled(ns="z")}], "ports": [{"port": 80}]}]
    lab.apply([], files={"allow.yaml": [netpol("deny", "x", podSelector={}), update]})
    lab.check()
    lab.apply([], files={"allow.yaml": [update]})           # the deny-all deleted
    lab.check()
    lab.apply([])                                           # and the file dropped
    assert all(lab.check().values())


def test_label_changes_of_a_pod_and_of_a_namespace_through_apply(fresh):
    lab = fresh
    policies = [netpol("clients", "x", podSelector=labelled(pod="a"), ingress=[
                    {"from": [{"namespaceSelector": {}, "podSelector": labelled(role="client")}]}]),
                netpol("team", "x", podSelector=labelled(pod="b"), ingress=[
                    {"from": [{"namespaceSelector": labelled(team="blue")}]}])]
    lab.apply(policies)
    lab.check()
    lab.pods["y/b"]["labels"]["role"] = "client"          # y/b may now reach x/a
    lab.pods["x/c"]["labels"]["pod"] = "a"                # x/c is now selected like x/a
    lab.namespace_labels["z"]["team"] = "blue"            # z may now reach x/b
    lab.apply()
    observed = lab.check()
    x_a, x_c = lab.address("x/a", 4), lab.address("x/c", 4)
    assert observed[("y/b", "x/a", x_a, 80, "tcp")] and not observed[("y/c", "x/a", x_a, 80, "tcp")]
    assert observed[("y/b", "x/c", x_c, 80, "tcp")] and not observed[("z/a", "x/c", x_c, 80, "tcp")]
    assert observed[("z/c", "x/b", lab.address("x/b", 4), 53, "udp")]
    lab.pods["y/b"]["labels"].pop("role")                 # and back
    lab.namespace_labels["z"].pop("team")
    lab.apply()
    assert not lab.check()[("y/b", "x/a", x_a, 80, "tcp")]


def test_pods_added_and_removed_through_apply(fresh):
    lab = fresh
    first = dict(lab.pods)
    lab.apply([netpol("from-d", "x", podSelector=labelled(pod="a"), ingress=[
        {"from": [{"namespaceSelector": {}, "podSelector": labelled(pod="d")}]}])])
    try:
        del lab.pods["x/c"]
        lab.pods["y/d"] = {**first["y/c"], "name": "d", "labels": {"pod": "d"}}   # beside y/c
        lab.apply()
        observed = lab.check()
        assert observed[("y/d", "x/a", lab.address("x/a", 4), 80, "tcp")]
    finally:
        lab.pods = first
        lab.apply()
    lab.check()


def test_explain_agrees_with_the_probes(fresh):
    lab = fresh
    lab.apply(cases(lab)["allow-from-pod-in-namespace"] + cases(lab)["named-ports"]
              + cases(lab)["egress-to-dns-only"])
    observed = lab.check()
    sample = [(src, dst, lab.address(dst, 4), port, protocol)
              for src, dst in (("z/b", "x/a"), ("z/a", "x/a"), ("y/b", "z/a"), ("y/a", "x/b"), ("y/a", "z/c"))
              for port, protocol in ((80, "tcp"), (53, "udp"))]
    assert {observed[f] for f in sample} == {True, False}
    for flow in sample:
        assert lab.explain(*flow[:2], *flow[3:]) == observed[flow], f"explain {flow}"


# --- the etcd store --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def etcd_lab(tmp_path_factory):
    yield from _lab(tmp_path_factory.mktemp("labs"), "overlay-etcd")


def test_across_hosts_through_etcd(etcd_lab):
    lab = etcd_lab
    for case in ("default-deny-both", "allow-from-pod-in-namespace", "egress-named-port-per-destination"):
        lab.apply(cases(lab)[case])
        assert not all(lab.check().values()), case
    lab.namespace_labels["y"]["ns"] = "z"                  # a namespace relabelled: now it is z to x/a
    lab.apply(cases(lab)["allow-from-pod-in-namespace"])
    assert lab.check()[("y/b", "x/a", lab.address("x/a", 4), 80, "tcp")]
    assert lab.explain("y/b", "x/a", 80, "tcp") and not lab.explain("y/c", "x/a", 80, "tcp")
    lab.hosts.remove("h3")                                 # a host leaves with its pods
    lab.pods = {key: p for key, p in lab.pods.items() if p["host"] != "h3"}
    lab.apply()
    lab.check()
