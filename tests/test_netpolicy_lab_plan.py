"""Network policy in labs and in the node agent, without root: what a lab
file's namespaces, labels, ports and policies become (pure), what `apply`
would change, the conflists and the agents' command lines, the probe's
targets and matrix, the agent's flags and request paths."""
import json
import subprocess
import sys

import pytest

from pycni.agent import request_paths
from pycni.lab import LabError, load_file, parse
from pycni.lab import agents, cni, policy, probe
from pycni.lab.reconcile import changes

HOSTS = [{"name": "h1", "underlay": "10.250.0.1/24"}, {"name": "h2", "underlay": "10.250.0.2/24"}]
BRIDGE = {"name": "podnet", "subnet": "10.244.1.0/24"}
OVERLAY = {"name": "cluster", "type": "overlay", "clusterCIDR": "10.244.0.0/16"}
DENY = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny", "namespace": "web"}, "spec": {"podSelector": {}}}


def lab(network=BRIDGE, pods=(), **more):
    return parse({"name": "t", "hosts": HOSTS, "networks": [network], "pods": list(pods), **more})


def pod(name, **more):
    return {"name": name, "namespace": "web", "host": "h1", "network": "podnet", **more}


def test_namespaces_labels_ports_and_policies_become_the_plan():
    plan = lab(pods=[pod("a", labels={"app": "api"}, ports=[{"name": "http", "port": 8080},
                                                             {"name": "dns", "port": 53, "protocol": "udp"}])],
               namespaces=[{"name": "web", "labels": {"team": "blue"}}], policies=[DENY])
    assert plan["policy"] is True
    assert plan["objects"] == [{"apiVersion": "v1", "kind": "Namespace",
                                "metadata": {"name": "web", "labels": {"team": "blue"}}}, DENY]
    a = plan["pods"][0]
    assert a["labels"] == {"app": "api"}
    assert a["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"},
                          {"name": "dns", "port": 53, "protocol": "UDP"}]
    assert policy.capability_args(a) == {"labels": {"app": "api"}, "podPorts": [
        {"name": "http", "containerPort": 8080, "protocol": "TCP"},
        {"name": "dns", "containerPort": 53, "protocol": "UDP"}]}
    assert lab()["policy"] is False and lab(policies=[])["policy"] is True and lab(namespaces=[])["policy"] is True


def test_a_list_of_policies_is_expanded():
    listing = {"apiVersion": "v1", "kind": "List", "items": [DENY, {**DENY, "metadata": {"name": "d2",
                                                                                          "namespace": "web"}}]}
    assert [o["metadata"]["name"] for o in lab(policies=[listing])["objects"]] == ["deny", "d2"]


@pytest.mark.parametrize("more, message", [
    ({"pods": [pod("a", labels={"app": "api"})]}, "labels or ports, which are for network policy"),
    ({"policies": [], "pods": [pod("a", labels={"app": "no spaces"})]}, r"pods\[0\]: endpoint web/a: labels"),
    ({"policies": [], "pods": [pod("a", ports=[{"name": "HTTP", "port": 80}])]}, r"pods\[0\].*ports\[0\].name"),
    ({"policies": [], "pods": [pod("a", ports=[{"name": "http", "port": 70000}])]}, r"ports\[0\].port"),
    ({"policies": [], "pods": [pod("a", ports=[{"port": 80}])]}, "missing required key 'name'"),
    ({"policies": [{**DENY, "spec": {"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}}]},
     r"policies\[0\]: NetworkPolicy web/deny: spec.podSelector.matchExpressions\[0\]"),
    ({"policies": [DENY, DENY]}, "NetworkPolicy web/deny is also defined"),
    ({"policies": ["deny.yaml"]}, "in a lab file, the path"),
    ({"namespaces": [{"name": "web", "labels": {"a": "b c"}}]}, r"namespaces\[0\]: Namespace web: metadata.labels"),
    ({"namespaces": [{"name": "web", "colour": "blue"}]}, "unknown key 'colour'"),
])
def test_lab_file_policy_errors_name_the_field(more, message):
    with pytest.raises(LabError, match=message):
        lab(**more)


def test_policy_files_are_read_relative_to_the_lab_file(tmp_path):
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "deny.yaml").write_text(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: web}\n"
        "spec: {podSelector: {}}\n---\n"
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: web, labels: {team: blue}}\n")
    (tmp_path / "lab.yaml").write_text(json.dumps({"name": "t", "hosts": HOSTS[:1], "networks": [BRIDGE],
                                                  "policies": ["policies/deny.yaml"]}))
    assert [o["kind"] for o in load_file(str(tmp_path / "lab.yaml"))["objects"]] == ["NetworkPolicy", "Namespace"]
    (tmp_path / "policies" / "deny.yaml").write_text("kind: NetworkPolicy\nmetadata: {name: x}\n")
    with pytest.raises(LabError, match=r"policies\[0\]: .*deny.yaml.*unsupported object"):
        load_file(str(tmp_path / "lab.yaml"))
    (tmp_path / "policies" / "deny.yaml").unlink()
    with pytest.raises(LabError, match=r"policies\[0\]: .*No such file"):
        load_file(str(tmp_path / "lab.yaml"))


def test_conflists_end_in_netpolicy_with_the_hosts_own_label_dir():
    plan = lab(policies=[])
    host = plan["hosts"][0]
    plugins = cni.conflist_for(plan, host, plan["networks"][0])["plugins"]
    assert [p["type"] for p in plugins] == ["bridge", "netpolicy"]
    assert plugins[-1] == {"type": "netpolicy", "capabilities": {"labels": True, "podPorts": True},
                           "labelsDir": f"{host['dir']}/netpolicy/pods"}
    overlay = lab(network={**OVERLAY, "dns": True}, policies=[])
    assert [p["type"] for p in cni.conflist_for(overlay, host, overlay["networks"][0])["plugins"]] == [
        "overlay", "dnsname", "netpolicy"]
    plain = lab()
    assert [p["type"] for p in cni.conflist_for(plain, host, plain["networks"][0])["plugins"]] == ["bridge"]
    own = {"name": "own", "plugins": [{"type": "bridge"}, {"type": "netpolicy"}]}
    assert policy.policed(lab(), own) and not policy.policed(lab(policies=[]), {"name": "o", "plugins": [
        {"type": "bridge"}]})


def test_agents_run_the_policy_duty_on_the_objects_dir_or_the_overlays_store():
    plan = lab(policies=[])
    host = plan["hosts"][1]
    cmd = agents.command(plan, host)
    assert cmd[cmd.index("--policy-dir") + 1] == f"{plan['dir']}/netpolicy"
    assert cmd[cmd.index("--state-dir") + 1] == f"{host['dir']}/state"
    assert "--network-policy" in cmd and "--overlay-config" not in cmd and agents.needed(plan)
    overlay = lab(network=OVERLAY, policies=[])
    cmd = agents.command(overlay, overlay["hosts"][0])
    assert "--overlay-config" in cmd and "--network-policy" in cmd and "--policy-dir" not in cmd
    assert not agents.needed(lab()) and "--network-policy" not in agents.command(lab(network=OVERLAY),
                                                                              overlay["hosts"][0])


def test_changes_relabels_kept_pods_and_makes_nothing_again():
    current = lab(pods=[pod("a", labels={"app": "x"}), pod("b")], policies=[])
    desired = lab(pods=[pod("a", labels={"app": "y"}), pod("b", ports=[{"name": "http", "port": 80}]), pod("c")],
                  policies=[DENY])
    diff = changes(current, desired)
    assert [(p["name"], w["labels"], w["ports"]) for p, w in diff.relabel_pods] == [
        ("a", {"app": "y"}, []), ("b", {}, [{"name": "http", "port": 80, "protocol": "TCP"}])]
    assert not diff.remove_pods and [p["name"] for p in diff.add_pods] == ["c"]
    assert changes(desired, desired).relabel_pods == []


def test_probe_targets_plan_and_matrix():
    assert probe.parse_targets(["80/tcp", "53/UDP", "8080", "80/tcp"]) == [(80, "tcp"), (53, "udp"), (8080, "tcp")]
    for bad in ("80/icmp", "http", "0", "70000/tcp"):
        with pytest.raises(LabError, match="PORT/PROTO"):
            probe.parse_targets([bad])
    pods = [{"namespace": "x", "name": "a", "ips": ["10.1.0.2/24", "fd00::2/64"]},
            {"namespace": "x", "name": "b", "ips": ["10.1.0.3/24"]}]
    probes = probe.plan(pods, [(80, "tcp")])
    assert [(p.source, p.destination, p.address) for p in probes] == [
        ("x/a", "x/a", "10.1.0.2"), ("x/a", "x/a", "fd00::2"), ("x/a", "x/b", "10.1.0.3"),
        ("x/b", "x/a", "10.1.0.2"), ("x/b", "x/b", "10.1.0.3")]   # IPv6 only where both have it
    report = {"lab": "t", "targets": ["80/tcp"], "pods": ["x/a", "x/b"], "probes": [
        {"from": p.source, "to": p.destination, "address": p.address, "family": p.family, "port": 80,
         "protocol": "tcp", "reachable": p.destination == "x/a"} for p in probes]}
    assert probe.format_report(report).splitlines()[2:] == [
        "80/tcp over IPv4 (2 reachable, 2 blocked)", "     x/a x/b", "x/a  .   X", "x/b  .   X", "",
        "80/tcp over IPv6 (1 reachable, 0 blocked)", "     x/a x/b", "x/a  .   -", "x/b  -   -"]


def test_the_agent_serves_only_callers_that_see_the_netpolicy_label_dir():
    config = {"type": "netpolicy", "labelsDir": "/srv/labels"}
    assert request_paths({}, json.dumps(config).encode())[-1] == "/srv/labels"
    assert request_paths({}, b'{"type": "netpolicy"}')[-1] == "/etc/pycni/netpolicy/pods"
    assert "/etc/pycni/netpolicy/pods" not in request_paths({}, b'{"type": "bridge"}')


def agent(*args):
    return subprocess.run([sys.executable, "-m", "pycni.cli", "agent", *args], capture_output=True, text=True,
                          timeout=60)


def test_agent_help_documents_the_policy_flags_and_bad_settings_stop_it():
    text = agent("--help").stdout
    for flag in ("--policy-dir", "--network-policy", "--policy-socket", "--state-dir", "network policy"):
        assert flag in text
    out = agent("--policy-socket", "p")
    assert out.returncode == 2 and "--policy-socket needs --policy-dir or --network-policy" in out.stderr
    out = agent("--policy-dir", "/nonexistent/policies")
    assert out.returncode == 2 and "/nonexistent/policies: no such file or directory" in out.stderr
