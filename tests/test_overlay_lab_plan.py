"""Overlay labs without root: the plan a lab file becomes, what `apply`
would change (pure), and the agent's command line."""
import subprocess
import sys

import pytest

from pycni.lab import LabError, parse
from pycni.lab.reconcile import changes

HOSTS = [{"name": "h1", "underlay": "10.250.0.1/24"}, {"name": "h2", "underlay": "10.250.0.2/24"}]
OVERLAY = {"name": "cluster", "type": "overlay", "clusterCIDR": "10.244.0.0/16"}


def lab(hosts=HOSTS, network=OVERLAY, pods=()):
    return parse({"name": "t", "hosts": list(hosts), "networks": [network], "pods": list(pods)})


def test_an_overlay_lab_plans_one_agent_setting_per_host_and_its_own_etcd():
    plan = lab(network={**OVERLAY, "store": "etcd", "etcdMembers": 3, "vni": 7, "leaseTTL": 9})
    overlay = plan["overlay"]
    assert overlay["settings"]["vni"] == 7 and overlay["settings"]["leaseTTL"] == 9
    assert overlay["settings"]["etcdPrefix"] == "/pycni/lab/t/cluster"
    assert overlay["etcd"]["address"] == "10.250.0.254/24" and overlay["etcd"]["netns"] == "pycni-t-_etcd"
    assert overlay["settings"]["etcdEndpoints"] == [
        "http://10.250.0.254:2379", "http://10.250.0.254:2381", "http://10.250.0.254:2383"]
    own = lab(network={**OVERLAY, "store": "etcd", "etcdEndpoints": ["http://192.0.2.1:2379"]})["overlay"]
    assert own["etcd"] is None and own["settings"]["etcdEndpoints"] == ["http://192.0.2.1:2379"]
    assert lab()["overlay"]["settings"]["storePath"].endswith("/t/overlay/cluster")


@pytest.mark.parametrize("hosts, network, message", [
    ([{"name": "h1"}], OVERLAY, "every host on the underlay"),
    (HOSTS, {"name": "cluster", "type": "overlay"}, "needs clusterCIDR"),
    (HOSTS, {**OVERLAY, "subnet": "10.1.0.0/24"}, "cannot be set on an overlay network"),
    (HOSTS, {"name": "n", "subnet": "10.1.0.0/24", "vni": 3}, "only apply to type: overlay"),
    (HOSTS, {**OVERLAY, "etcdMembers": 3}, "need store: etcd"),
    (HOSTS, {**OVERLAY, "store": "etcd", "etcdMembers": 2}, "1, 3 or 5"),
    (HOSTS, {**OVERLAY, "store": "etcd", "etcdAddress": "10.250.0.2/24"}, "host h2's"),
    (HOSTS, {**OVERLAY, "store": "consul"}, "file or etcd"),
])
def test_overlay_lab_file_errors(hosts, network, message):
    with pytest.raises(LabError, match=message):
        lab(hosts, network)


def test_changes_removes_before_it_adds_and_moves_hosts_in_place():
    pods = [{"name": "a", "host": "h1", "network": "cluster"}, {"name": "b", "host": "h2", "network": "cluster"}]
    current = lab(pods=pods)
    desired = lab(hosts=[{"name": "h1", "underlay": "10.250.0.11/24"}, {"name": "h3", "underlay": "10.250.0.3/24"}],
                  pods=[pods[0], {"name": "c", "host": "h3", "network": "cluster"}])
    diff = changes(current, desired)
    assert [h["name"] for h in diff.remove_hosts] == ["h2"] and [p["name"] for p in diff.remove_pods] == ["b"]
    assert [(h["name"], address) for h, address in diff.move_hosts] == [("h1", "10.250.0.11/24")]
    assert [h["name"] for h in diff.add_hosts] == ["h3"] and [p["name"] for p in diff.add_pods] == ["c"]
    assert changes(desired, desired) == changes(lab(), lab())  # nothing to do
    moved = lab(pods=[{**pods[0], "host": "h2"}, pods[1]])
    assert [p["name"] for p in changes(current, moved).remove_pods] == ["a"]  # a pod changing host is made again


def test_agent_help_lists_the_overlay_flags_and_bad_settings_fail_clearly():
    pycni = [sys.executable, "-m", "pycni.cli", "agent"]
    out = subprocess.run([*pycni, "--help"], capture_output=True, text=True)
    for flag in ("--overlay-config", "--node-name", "--underlay-interface", "--store", "--etcd-endpoints",
                 "--cluster-cidr", "--cluster-cidr6", "--vni", "--port", "--mtu", "--direct-routing",
                 "--status-file", "--keep-on-exit"):
        assert flag in out.stdout
    out = subprocess.run([*pycni, "--cluster-cidr", "10.244.0.0/33"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.startswith("pycni agent: overlay:") and "Traceback" not in out.stderr
