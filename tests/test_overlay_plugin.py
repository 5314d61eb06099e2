"""The overlay CNI plugin on its own: the bridge config it derives from the
node state (pure), the node state format, its errors when the node state
is missing or unusable, and an attachment made from a node state file in a
host namespace (no agent: the lab tests run it with one)."""
import json
import os
import shutil

import pytest

from cni_plugins import overlay
from cni_plugins.core.errors import CNIError
from cni_plugins.core.request import Request
from conftest import data_files, exec_plugin, ping, run, unique

STATE = {"version": 1, "cluster": "default", "node": "n1",
         "clusterCIDR": "10.243.0.0/16", "clusterCIDR6": "fd00:243::/48",
         "subnet": "10.243.7.0/24", "subnet6": "fd00:243:0:7::/64", "mtu": 1450,
         "vtep": {"device": "pycni.1", "mac": "02:00:00:00:00:01", "address": "10.243.7.0",
                  "address6": "fd00:243:0:7::"},
         "underlay": {"interface": "eth0", "address": "10.241.0.1"}}


def request(config, command="ADD", run_dir="/run/x"):
    return Request(command, {"cniVersion": "1.0.0", "name": "podnet", "type": "overlay", **config}, "1.0.0",
                   run_dir=run_dir)


def derived(config, state=STATE):
    req = request(config)
    return overlay.bridge_config(req.config, overlay.parse_config(req),
                                 state and overlay.NodeState.from_json(state))


# --- pure -------------------------------------------------------------------------------
def test_bridge_config_takes_subnets_and_mtu_from_the_node_and_passes_bridge_options_on():
    conf = derived({"bridge": "ov0", "hairpinMode": True, "ipam": {"dataDir": "/d"}})
    assert conf["type"] == "bridge" and conf["bridge"] == "ov0" and conf["hairpinMode"] is True
    assert conf["isGateway"] is True and conf["isDefaultGateway"] is True and conf["ipMasq"] is True
    assert conf["mtu"] == 1450
    assert conf["ipam"] == {"type": "host-local", "dataDir": "/d",
                            "ranges": [[{"subnet": "10.243.7.0/24"}], [{"subnet": "fd00:243:0:7::/64"}]]}
    assert "cluster" not in conf and "stateFile" not in conf


def test_without_a_default_gateway_pods_get_routes_to_the_cluster_cidrs_of_their_families():
    ipv4_only = {**STATE, "subnet6": None}
    conf = derived({"isDefaultGateway": False, "mtu": 1400, "ipam": {"routes": [{"dst": "192.0.2.0/24"}]}},
                   ipv4_only)
    assert conf["mtu"] == 1400  # the config's own MTU wins
    assert conf["ipam"]["ranges"] == [[{"subnet": "10.243.7.0/24"}]]
    assert conf["ipam"]["routes"] == [{"dst": "10.243.0.0/16"}, {"dst": "192.0.2.0/24"}]


def test_without_node_state_ipam_gets_only_what_releasing_needs():
    assert derived({"ipam": {"dataDir": "/d"}}, state=None)["ipam"] == {"type": "host-local", "dataDir": "/d"}


@pytest.mark.parametrize("config, message", [
    ({"ipam": {"type": "dhcp"}}, "allocates with host-local"),
    ({"ipam": {"subnet": "10.1.0.0/16"}}, "come from the node's subnets"),
    ({"isGateway": False}, "isGateway cannot be false"),
    ({"cluster": "../x"}, "invalid cluster name"),
])
def test_config_errors_are_code_7(config, message):
    with pytest.raises(CNIError) as e:
        overlay.parse_config(request(config))
    assert e.value.code == 7 and message in e.value.msg


def test_state_path_follows_the_run_dir_and_cluster():
    assert overlay.parse_config(request({"cluster": "blue"}, run_dir="/r")).state_file == "/r/overlay/blue.json"
    assert overlay.parse_config(request({"stateFile": "/s.json"})).state_file == "/s.json"


def test_node_state_round_trips_and_refuses_what_it_cannot_use():
    state = overlay.NodeState.from_json(STATE)
    assert overlay.NodeState.from_json(json.loads(json.dumps(state.to_json()))) == state
    assert state.cluster_cidrs == ["10.243.0.0/16", "fd00:243::/48"]
    for broken, unknown in [({**STATE, "version": 2}, True), ({**STATE, "mtu": "1450"}, False),
                            ({**STATE, "subnet": "10.9.0.0/24"}, False), ({**STATE, "subnet": None, "subnet6": None},
                                                                        False),
                            ({**STATE, "clusterCIDR6": "10.0.0.0/8"}, False), ([], False)]:
        with pytest.raises(overlay.NodeStateError) as e:
            overlay.NodeState.from_json(broken)
        assert e.value.unknown_version is unknown


# --- as a runtime runs it ---------------------------------------------------------------
@pytest.fixture
def host(make_netns, state_dirs):
    """A host namespace and the path where its agent would write the node state."""
    return make_netns("ovph"), state_dirs["run"] / "overlay" / "default.json"


def conf(tmp_path, **extra):
    return {"cniVersion": "1.0.0", "name": unique("ovp"), "type": "overlay",
            "ipam": {"dataDir": str(tmp_path / "ipam")}, **extra}


def plugin(bin_dir, host_ns, command, config, pod_ns=""):
    return exec_plugin(bin_dir, "overlay", command, config, netns=f"/run/netns/{pod_ns}" if pod_ns else "",
                       prefix=("ip", "netns", "exec", host_ns), extra_env={"PYCNI_NO_AGENT": "1"})


@pytest.mark.parametrize("content, code, message", [
    (None, 11, "has not written this node's subnet yet"),
    ("left", 11, "has left the overlay"),
    ('{"version": 1, "subnet": "10.2', 11, "damaged"),
    (json.dumps({**STATE, "version": 7}), 6, "different releases"),
])
def test_unusable_node_state_is_a_clear_error_and_del_needs_none(bin_dir, host, make_netns, tmp_path,
                                                                 content, code, message):
    host_ns, state_file = host
    if content == "left":
        state_file.parent.mkdir(parents=True)
        state_file.with_name("default.json.left").write_text(json.dumps(STATE))
    elif content is not None:
        state_file.parent.mkdir(parents=True)
        state_file.write_text(content)
    pod = make_netns("ovpp")
    config = conf(tmp_path)
    rc, out = plugin(bin_dir, host_ns, "ADD", config, pod)
    assert rc == 1 and out["code"] == code and message in out["msg"], out
    assert str(state_file) in out["msg"]
    rc, out = plugin(bin_dir, host_ns, "STATUS", {**config, "cniVersion": "1.1.0"})
    assert rc == 1 and out["code"] == 50, out
    assert plugin(bin_dir, host_ns, "DEL", config, pod) == (0, None)


def attached(bin_dir, host, make_netns, tmp_path):
    """A pod attached by the overlay plugin on a node whose agent wrote STATE."""
    host_ns, state_file = host
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps(STATE))
    pod = make_netns("ovpp")
    config = conf(tmp_path, bridge=unique("ovb"))
    rc, result = plugin(bin_dir, host_ns, "ADD", config, pod)
    assert rc == 0, result
    return host_ns, state_file, pod, config, result


def test_attachment_from_node_state_masquerades_only_outside_the_cluster(bin_dir, host, make_netns, tmp_path):
    host_ns, state_file, pod, config, result = attached(bin_dir, host, make_netns, tmp_path)
    assert [ip["address"] for ip in result["ips"]] == ["10.243.7.2/24", "fd00:243:0:7::2/64"]
    assert [ip["gateway"] for ip in result["ips"]] == ["10.243.7.1", "fd00:243:0:7::1"]
    assert "mtu 1450" in run("ip", "-n", pod, "link", "show", "eth0").stdout
    assert ping(pod, "10.243.7.1")
    masquerade = run("ip", "netns", "exec", host_ns, "nft", "list", "table", "inet", "pycni_bridge").stdout
    assert "10.243.7.2 . 10.243.0.0/16" in masquerade and "fd00:243:0:7::2 . fd00:243::/48" in masquerade
    rc, _ = plugin(bin_dir, host_ns, "CHECK", {**config, "prevResult": result}, pod)
    assert rc == 0
    os.unlink(state_file)  # DEL works from bridge's record alone
    assert plugin(bin_dir, host_ns, "DEL", config, pod) == (0, None)
    assert run("ip", "-n", pod, "link", "show", "eth0", check=False).returncode != 0
    assert "pycni_bridge" not in run("ip", "netns", "exec", host_ns, "nft", "list", "tables").stdout
    assert data_files(config) == []


def test_del_from_prev_result_alone_removes_the_cluster_wide_masquerade_exemption(bin_dir, host, make_netns,
                                                                                  tmp_path, state_dirs):
    """A lost state dir: DEL has only the runtime's prevResult, and the
    exemption the ADD made is the cluster CIDR's, not the pod subnet's."""
    host_ns, _, pod, config, result = attached(bin_dir, host, make_netns, tmp_path)
    shutil.rmtree(state_dirs["state"])
    assert plugin(bin_dir, host_ns, "DEL", {**config, "prevResult": result}, pod) == (0, None)
    tables = run("ip", "netns", "exec", host_ns, "nft", "list", "ruleset").stdout
    assert "10.243.7.2" not in tables and "fd00:243:0:7::2" not in tables, tables
    assert data_files(config) == []
