"""`pycni policy apply|explain|status` as a user runs them, in a network
namespace of ours standing for the node."""
import json
import os
import subprocess
import sys

import pytest

from conftest import run
from netpolicy.store import FileStore

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

NODE = "node-1"


def netpol(name, namespace, **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


def pod(namespace, name, address, labels, ports=()):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": address}]}}


PODS = [pod("x", "web", "10.240.0.2", {"app": "web"}, [{"name": "http", "containerPort": 8080}]),
        pod("x", "client", "10.240.0.3", {"role": "client"}),
        pod("y", "other", "10.240.0.4", {})]
ALLOW = netpol("allow-clients", "x", podSelector={"matchLabels": {"app": "web"}},
               ingress=[{"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}])


@pytest.fixture
def node(make_netns, tmp_path):
    netns = make_netns("npc")
    objects = tmp_path / "objects"
    objects.mkdir()

    def write(*items):
        (objects / "all.yaml").write_text("\n---\n".join(json.dumps(o) for o in items) + "\n")

    def policy(*args, netns=netns):
        prefix = ["ip", "netns", "exec", netns] if netns else []
        return subprocess.run([*prefix, sys.executable, "-m", "pycni.cli", "policy", *args, "-f", str(objects),
                               "--state-dir", str(tmp_path / "state")], capture_output=True, text=True)

    def ruleset():
        return run("ip", "netns", "exec", netns, "nft", "list", "ruleset").stdout

    return netns, write, policy, ruleset


def test_apply_is_one_transaction_and_then_nothing(node):
    _, write, policy, ruleset = node
    write(*PODS, ALLOW)
    first = policy("apply", "--node", NODE, "--json")
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout) and "pycni_netpolicy" in ruleset()
    again = policy("apply", "--node", NODE)
    assert (again.returncode, again.stdout.strip()) == (0, "0 change(s)")


def test_an_invalid_object_is_refused_with_its_field_and_nothing_changes(node):
    _, write, policy, ruleset = node
    write(*PODS, ALLOW)
    assert policy("apply", "--node", NODE).returncode == 0
    before = ruleset()
    broken = json.loads(json.dumps(ALLOW))
    broken["spec"]["ingress"][0]["ports"] = [{"port": 80, "endPort": 70, "protocol": "ICMP"}]
    write(*PODS, broken, netpol("fine", "y", podSelector={}))
    out = policy("apply", "--node", NODE)
    assert out.returncode == 2
    assert "NetworkPolicy x/allow-clients" in out.stderr
    assert "spec.ingress[0].ports[0].protocol: Unsupported value: 'ICMP'" in out.stderr
    assert "spec.ingress[0].ports[0].endPort: 70: must be greater than or equal to `port`" in out.stderr
    assert ruleset() == before   # not even the valid policy beside it


def test_dry_run_changes_nothing(node):
    _, write, policy, ruleset = node
    write(*PODS, ALLOW)
    out = policy("apply", "--node", NODE, "--dry-run", "--json")
    assert out.returncode == 0 and json.loads(out.stdout)
    assert "pycni_netpolicy" not in ruleset()


def test_apply_leaves_a_node_whose_agent_enforces_policy_alone(node):
    netns, write, policy, ruleset = node
    write(*PODS, ALLOW)
    listener = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-c",
                                 "import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind('\\0pycni-policy'); "
                                 "s.listen(); print('ready', flush=True); sys.stdin.read()"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert listener.stdout.readline().strip() == "ready"
        out = policy("apply", "--node", NODE)
        assert out.returncode == 1 and "the node agent's controller enforces policy here" in out.stderr
        assert "pycni_netpolicy" not in ruleset()
        assert policy("apply", "--node", NODE, "--force").returncode == 0
    finally:
        listener.stdin.close()
        listener.wait(10)


def test_explain_by_name_and_address(node):
    _, write, policy, _ = node
    write(*PODS, ALLOW)
    allowed = policy("explain", "x/client", "x/web", "8080")
    assert allowed.returncode == 0
    assert "x/client -> x/web 8080/TCP: ALLOWED" in allowed.stdout
    assert "ingress (x/web): allowed: allowed by x/allow-clients ingress[0]" in allowed.stdout
    denied = policy("explain", "10.240.0.4", "10.240.0.2", "8080/TCP", "--json")
    assert denied.returncode == 3
    found = json.loads(denied.stdout)
    assert found["allowed"] is False and found["ingress"]["isolating"] == ["x/allow-clients"]
    assert found["egress"]["reason"] == "no policy selects y/other for egress"
    wrong_port = json.loads(policy("explain", "x/client", "x/web", "80", "--json").stdout)
    assert wrong_port["allowed"] is False   # "http" is 8080 on x/web
    assert policy("explain", "x/nobody", "x/web", "80").returncode == 1


def test_status_shows_selected_pods_and_counters(node):
    _, write, policy, _ = node
    write(*PODS, ALLOW, netpol("deny-y", "y", podSelector={}, policyTypes=["Egress"]))
    assert policy("apply", "--node", NODE).returncode == 0
    text = policy("status").stdout
    assert "x/allow-clients  Ingress  0 packets 0 bytes  selects: x/web" in text
    assert "    x/allow-clients ingress[0]: 0 packets 0 bytes" in text
    found = {s["policy"]: s for s in json.loads(policy("status", "--json").stdout)}
    assert found["y/deny-y"] == {"policy": "y/deny-y", "policy_types": ["Egress"], "selects": ["y/other"],
                                 "rules": [], "packets": 0, "bytes": 0}


def test_apply_to_the_cluster_store(node, tmp_path):
    _, write, policy, ruleset = node
    store = FileStore(str(tmp_path / "store"))
    write(ALLOW, netpol("deny-y", "y", podSelector={}))
    out = policy("apply", "--store", f"file:{tmp_path / 'store'}", netns=None)
    assert out.returncode == 0, out.stderr
    assert sorted(p.key for p in store.list().policies) == ["x/allow-clients", "y/deny-y"]
    assert "pycni_netpolicy" not in ruleset()   # the agents enforce it, not this command
    write(ALLOW)
    assert policy("apply", "--store", f"file:{tmp_path / 'store'}", netns=None).returncode == 0
    assert [p.key for p in store.list().policies] == ["x/allow-clients"]
    broken = json.loads(json.dumps(ALLOW))
    broken["spec"]["podSelector"] = {"matchLabels": {"app": "not valid!"}}
    write(broken)
    assert policy("apply", "--store", f"file:{tmp_path / 'store'}", netns=None).returncode == 2
    assert [p.key for p in store.list().policies] == ["x/allow-clients"]   # unchanged
