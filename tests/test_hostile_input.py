"""Regressions of the adversarial run (issue 11): hostile ids, names and
configs get the spec's error JSON with the right code and leave nothing
behind; ids and names that are legal work however they look."""
import json
import os
import subprocess

import pytest

from conftest import add, data_files, delete, exec_plugin, host_veths, in_ruleset, ping, plugin_env, run


def leftovers(conf, state_dirs):
    records = [p for p in state_dirs["state"].rglob("*") if p.is_file()] if state_dirs["state"].exists() else []
    return {"addresses": data_files(conf), "veths": host_veths(conf["bridge"]), "records": records,
            "nft": in_ruleset(conf)}


NOTHING = {"addresses": [], "veths": [], "records": [], "nft": False}


def chained(conf, plugin_type, prev, **extra):
    return {"cniVersion": conf["cniVersion"], "name": conf["name"], "type": plugin_type, "prevResult": prev, **extra}


# --- records: unambiguous names, any legal id --------------------------------------
def test_attachments_whose_id_and_ifname_run_together_stay_apart(bin_dir, net, make_netns, state_dirs):
    """container vrx-a + eth1 and container vrx + a-eth1 once shared a record file."""
    a, b = make_netns(), make_netns()
    rc, ra = add(bin_dir, net, a, cid="vrx-a", ifname="eth1")
    assert rc == 0, ra
    rc, rb = add(bin_dir, net, b, cid="vrx", ifname="a-eth1")
    assert rc == 0, rb
    assert delete(bin_dir, net, a, cid="vrx-a", ifname="eth1") == (0, None)
    # the other attachment is untouched: its veth, its address, its masquerade element
    assert len(host_veths(net["bridge"])) == 1 and len(data_files(net)) == 1
    assert rb["ips"][0]["address"].split("/")[0] in run("nft", "list", "table", "inet", "pycni_bridge").stdout
    assert ping(b, rb["ips"][0]["gateway"])
    assert delete(bin_dir, net, b, cid="vrx", ifname="a-eth1") == (0, None)
    assert leftovers(net, state_dirs) == NOTHING


@pytest.mark.parametrize("length", [236, 246, 600])
def test_any_length_of_container_id_adds_deletes_and_adds_again(bin_dir, net, netns, state_dirs, length):
    cid = ("c" * length)[:length]
    for _ in range(2):
        rc, res = add(bin_dir, net, netns, cid=cid)
        assert rc == 0, res
        assert delete(bin_dir, net, netns, cid=cid) == (0, None)
    assert leftovers(net, state_dirs) == NOTHING


# --- names used as paths ------------------------------------------------------------
@pytest.mark.parametrize("plugin_type", ["portmap", "dnsname", "firewall", "tuning", "bandwidth"])
@pytest.mark.parametrize("name", ["../../x", ".", "a/b", "\ud800"])
def test_network_names_that_are_not_identifiers_are_refused(bin_dir, net, netns, state_dirs, tmp_path,
                                                            plugin_type, name):
    prev = {"cniVersion": "1.0.0", "ips": [{"address": "10.240.0.5/24", "gateway": "10.240.0.1"}]}
    conf = {**chained(net, plugin_type, prev), "name": name}
    rc, out = exec_plugin(bin_dir, plugin_type, "ADD", json.dumps(conf), netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7 and "network name" in out["msg"], out
    rc, out = exec_plugin(bin_dir, plugin_type, "DEL", json.dumps(conf), netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7, out
    assert sorted(os.listdir(tmp_path)) == sorted(p for p in os.listdir(tmp_path) if p != "x")


# --- output that must be JSON -------------------------------------------------------
def test_infinity_in_the_config_is_a_decode_failure(bin_dir, net, netns, state_dirs):
    raw = json.dumps({**net, "dns": {"nameservers": ["10.0.0.1"]}}).replace('["10.0.0.1"]', '["10.0.0.1"], "x": Infinity')
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 6, out
    assert leftovers(net, state_dirs) == NOTHING


@pytest.mark.parametrize("dns", [{"nameservers": 5}, {"search": [1]}, {"domain": ["x"]}, "x"])
def test_a_dns_field_of_the_wrong_type_is_refused(bin_dir, net, netns, state_dirs, dns):
    rc, out = add(bin_dir, {**net, "dns": dns}, netns)
    assert rc == 1 and out["code"] == 7, out
    assert leftovers(net, state_dirs) == NOTHING


# --- input errors are 4, 6 or 7, never 999 ------------------------------------------
def ipam_with(net, **extra):
    return {**net, "ipam": {**net["ipam"], **extra}}


@pytest.mark.parametrize("case", [
    {"runtimeConfig": "x"}, {"runtimeConfig": ["mac"]}, {"args": {"cni": "x"}}, {"args": 5},
    "route_mtu_big", "route_mtu_type", "route_priority_negative", "route_advmss_type",
])
def test_config_errors_are_code_7(bin_dir, net, netns, state_dirs, case):
    conf = {
        "route_mtu_big": ipam_with(net, routes=[{"dst": "0.0.0.0/0", "mtu": 70000}]),
        "route_mtu_type": ipam_with(net, routes=[{"dst": "0.0.0.0/0", "mtu": "1500"}]),
        "route_priority_negative": ipam_with(net, routes=[{"dst": "0.0.0.0/0", "priority": -1}]),
        "route_advmss_type": ipam_with(net, routes=[{"dst": "0.0.0.0/0", "advmss": 1.5}]),
    }.get(case) if isinstance(case, str) else {**net, **case}
    rc, out = add(bin_dir, conf, netns)
    assert rc == 1 and out["code"] == 7, out
    assert leftovers(net, state_dirs) == NOTHING


def test_json_nested_too_deep_is_a_decode_failure(bin_dir, net, netns):
    raw = json.dumps(net)[:-1] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}"
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 6, out


@pytest.mark.parametrize("ifname", [b"\xff\xfeeth", "é" * 8])
def test_interface_names_that_are_not_utf8_or_too_many_bytes_are_code_4(bin_dir, net, netns, state_dirs, ifname):
    env = {k.encode(): v.encode() for k, v in plugin_env(bin_dir, "ADD", netns=f"/run/netns/{netns}").items()}
    env[b"CNI_IFNAME"] = ifname if isinstance(ifname, bytes) else ifname.encode()
    proc = subprocess.run([os.path.join(bin_dir, "bridge")], input=json.dumps(net).encode(), env=env,
                          capture_output=True, timeout=30)
    out = json.loads(proc.stdout)
    assert proc.returncode == 1 and out["code"] == 4 and "CNI_IFNAME" in out["msg"], out
    assert leftovers(net, state_dirs) == NOTHING


@pytest.mark.parametrize("kind", ["file", "directory"])
def test_a_netns_path_that_is_no_namespace_is_code_4(bin_dir, net, tmp_path, state_dirs, kind):
    path = tmp_path / "not-a-netns"
    path.write_text("") if kind == "file" else path.mkdir()
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", net, netns=str(path))
    assert rc == 1 and out["code"] == 4 and "not a network namespace" in out["msg"], out
    assert leftovers(net, state_dirs) == NOTHING


@pytest.mark.parametrize("plugin_type", ["portmap", "dnsname", "firewall", "bandwidth"])
@pytest.mark.parametrize("prev", [
    {"cniVersion": "1.0.0", "ips": "10.0.0.5/24"},
    {"cniVersion": "1.0.0", "ips": ["10.0.0.5/24"]},
    {"cniVersion": "1.0.0", "ips": [{"address": 5}]},
    {"cniVersion": "1.0.0", "interfaces": [["eth0"]]},
    {"cniVersion": "1.0.0", "routes": [{"dst": "nowhere"}]},
    {"cniVersion": "1.0.0", "dns": {"nameservers": "10.0.0.1"}},
])
def test_prev_results_of_the_wrong_shape_are_code_7(bin_dir, net, netns, plugin_type, prev):
    conf = chained(net, plugin_type, prev, runtimeConfig={
        "portMappings": [{"hostPort": 8080, "containerPort": 80}],
        "bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000}})
    rc, out = exec_plugin(bin_dir, plugin_type, "ADD", conf, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"], out


@pytest.mark.parametrize("limits", [{"ingressRate": 10 ** 30, "ingressBurst": 80_000},
                                    {"egressRate": 2 ** 70, "egressBurst": 80_000},
                                    {"ingressRate": 8_000_000, "ingressBurst": 2 ** 64}])
def test_bandwidth_beyond_what_tbf_holds_is_code_7(bin_dir, net, netns, limits):
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    rc, out = exec_plugin(bin_dir, "bandwidth", "ADD", chained(net, "bandwidth", res, **limits),
                          netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7, out
    assert delete(bin_dir, net, netns) == (0, None)


@pytest.mark.parametrize("sysctl", [["net.ipv4.ip_forward"], [["net.ipv4.ip_forward", "1"]], "x"])
def test_tuning_sysctl_given_as_anything_but_an_object_is_code_7(bin_dir, net, netns, sysctl):
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    rc, out = exec_plugin(bin_dir, "tuning", "ADD", chained(net, "tuning", res, sysctl=sysctl),
                          netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7, out
    assert delete(bin_dir, net, netns) == (0, None)


def test_a_route_to_the_interfaces_own_subnet_is_accepted(bin_dir, net, netns, state_dirs):
    subnet = net["ipam"]["ranges"][0][0]["subnet"]
    rc, res = add(bin_dir, ipam_with(net, routes=[{"dst": subnet}, {"dst": "0.0.0.0/0"}]), netns)
    assert rc == 0, res
    assert subnet in run("ip", "-n", netns, "route").stdout
    assert delete(bin_dir, net, netns) == (0, None)
    assert leftovers(net, state_dirs) == NOTHING
