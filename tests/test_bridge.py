"""bridge + host-local + loopback through the real executables, in real
namespaces: what a runtime and a pod can observe."""
import concurrent.futures
import json
import os
import random

import pytest

from conftest import (REFERENCE_BIN, add, data_files, delete, exec_plugin, host_veths, in_ruleset, ping,
                      ruleset, run, unique)

VERSIONS = ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("version", VERSIONS)
def test_add_check_del_cycle_in_every_version(bin_dir, net, make_netns, version):
    net["cniVersion"] = version
    a, b = make_netns(), make_netns()
    rc, ra = add(bin_dir, net, a, "ca")
    assert rc == 0, ra
    rc, rb = add(bin_dir, net, b, "cb")
    assert rc == 0, rb
    assert ra["cniVersion"] == version
    names = [i["name"] for i in ra["interfaces"]]
    assert names[0] == net["bridge"] and names[2] == "eth0"
    assert ra["interfaces"][2]["sandbox"] == f"/run/netns/{a}"
    ip_a = ra["ips"][0]
    if version.startswith("0."):
        assert ip_a["version"] == "4"
    else:
        assert "version" not in ip_a
    assert ip_a["interface"] == 2
    gw = ip_a["gateway"]
    assert ping(a, gw) and ping(a, rb["ips"][0]["address"].split("/")[0])

    if version >= "0.4.0":
        for ns, cid, res in ((a, "ca", ra), (b, "cb", rb)):
            rc, out = exec_plugin(bin_dir, "bridge", "CHECK", {**net, "prevResult": res},
                                  netns=f"/run/netns/{ns}", container_id=cid)
            assert rc == 0, out
    else:
        rc, out = exec_plugin(bin_dir, "bridge", "CHECK", {**net, "prevResult": ra},
                              netns=f"/run/netns/{a}", container_id="ca")
        assert rc != 0 and out["code"] == 1

    assert ip_a["address"].split("/")[0] in ruleset()
    for ns, cid, res in ((a, "ca", ra), (b, "cb", rb)):
        rc, out = delete(bin_dir, {**net, "prevResult": res}, ns, cid)
        assert rc == 0, out
    assert host_veths(net["bridge"]) == []
    assert data_files(net) == []
    assert ip_a["address"].split("/")[0] not in ruleset()
    assert run("ip", "netns", "exec", a, "ip", "link", "show", "eth0", check=False).returncode != 0


def test_check_detects_a_removed_address(bin_dir, net, netns):
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    run("ip", "-n", netns, "addr", "del", res["ips"][0]["address"], "dev", "eth0")
    rc, out = exec_plugin(bin_dir, "bridge", "CHECK", {**net, "prevResult": res}, netns=f"/run/netns/{netns}")
    assert rc != 0 and out["code"] == 104 and res["ips"][0]["address"] in out["msg"]
    assert delete(bin_dir, net, netns)[0] == 0


def test_dual_stack_pods_reach_each_other_on_both_families(bin_dir, net, make_netns):
    third = random.randint(0, 0xFFFF)
    net["ipam"]["ranges"].append([{"subnet": f"fd00:24{random.randint(0, 9)}:{third:x}::/64"}])
    a, b = make_netns(), make_netns()
    ra, rb = add(bin_dir, net, a, "ca")[1], add(bin_dir, net, b, "cb")[1]
    assert [len(r["ips"]) for r in (ra, rb)] == [2, 2]
    v6_b = rb["ips"][1]["address"].split("/")[0]
    assert ":" in v6_b
    assert ping(a, v6_b) and ping(a, rb["ips"][0]["address"].split("/")[0])
    assert ping(b, rb["ips"][1]["gateway"])
    routes6 = run("ip", "-n", a, "-6", "route", "show", "default").stdout
    assert ra["ips"][1]["gateway"] in routes6
    for ns, cid in ((a, "ca"), (b, "cb")):
        assert delete(bin_dir, net, ns, cid)[0] == 0
    assert data_files(net) == [] and not in_ruleset(net)


def test_fifty_concurrent_adds_get_distinct_addresses(bin_dir, net, make_netns):
    namespaces = [make_netns() for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: add(bin_dir, net, namespaces[i], f"c{i}"), range(50)))
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    addresses = [r["ips"][0]["address"] for _, r in results]
    assert len(set(addresses)) == 50
    assert len(data_files(net)) == 50 and len(host_veths(net["bridge"])) == 50
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        dels = list(pool.map(lambda i: delete(bin_dir, net, namespaces[i], f"c{i}"), range(50)))
    assert all(rc == 0 for rc, _ in dels)
    assert data_files(net) == [] and host_veths(net["bridge"]) == [] and not in_ruleset(net)


def test_del_after_netns_is_gone_cleans_masquerade_and_address(bin_dir, net, make_netns):
    ns = make_netns()
    rc, res = add(bin_dir, net, ns)
    ip = res["ips"][0]["address"].split("/")[0]
    assert ip in ruleset()
    run("ip", "netns", "delete", ns)
    rc, out = delete(bin_dir, net, ns)
    assert rc == 0, out
    assert ip not in ruleset() and data_files(net) == []
    # and again: DEL is idempotent, also with no netns given at all
    assert delete(bin_dir, net, ns)[0] == 0
    assert delete(bin_dir, net, "")[0] == 0


def test_del_of_a_never_added_container_succeeds(bin_dir, net, netns):
    rc, out = delete(bin_dir, net, netns, "never-added")
    assert rc == 0 and out is None


def test_gc_removes_attachments_not_listed_as_valid(bin_dir, net, make_netns):
    net["cniVersion"] = "1.1.0"
    a, b = make_netns(), make_netns()
    ra, rb = add(bin_dir, net, a, "keep")[1], add(bin_dir, net, b, "stale")[1]
    gc_conf = {**net, "cni.dev/valid-attachments": [{"containerID": "keep", "ifname": "eth0"}]}
    rc, out = exec_plugin(bin_dir, "bridge", "GC", gc_conf)
    assert rc == 0, out
    assert data_files(net) == [ra["ips"][0]["address"].split("/")[0]]
    assert host_veths(net["bridge"]) == [ra["interfaces"][1]["name"]]
    rules = ruleset()
    assert ra["ips"][0]["address"].split("/")[0] in rules
    assert rb["ips"][0]["address"].split("/")[0] not in rules
    assert ping(a, ra["ips"][0]["gateway"])
    assert delete(bin_dir, net, a, "keep")[0] == 0


def test_status_succeeds_on_1_1_0(bin_dir, net):
    net["cniVersion"] = "1.1.0"
    assert exec_plugin(bin_dir, "bridge", "STATUS", net) == (0, None)


def test_ip_masquerade_lets_pods_reach_a_network_without_a_route_back(bin_dir, net, make_netns):
    """An 'outside' netns reachable from the host, with no route to the pod
    subnet: the pod's ping only comes back if it was masqueraded."""
    pod, outside = make_netns(), make_netns()
    link = unique("pout")
    run("ip", "link", "add", link, "type", "veth", "peer", "name", "eth9", "netns", outside)
    try:
        third = random.randint(0, 255)
        run("ip", "addr", "add", f"10.239.{third}.1/24", "dev", link)
        run("ip", "link", "set", link, "up")
        run("ip", "-n", outside, "addr", "add", f"10.239.{third}.2/24", "dev", "eth9")
        run("ip", "-n", outside, "link", "set", "eth9", "up")
        rc, res = add(bin_dir, net, pod)
        assert rc == 0, res
        assert ping(pod, f"10.239.{third}.2")
        net_nomasq = {**net, "ipMasq": False}
        assert delete(bin_dir, net, pod)[0] == 0
        rc, res = add(bin_dir, net_nomasq, pod)
        assert rc == 0, res
        assert not ping(pod, f"10.239.{third}.2")
        assert delete(bin_dir, net_nomasq, pod)[0] == 0
    finally:
        run("ip", "link", "delete", link, check=False)


def test_macspoofchk_drops_frames_from_a_changed_mac(bin_dir, net, netns):
    net["macspoofchk"] = True
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    gw = res["ips"][0]["gateway"]
    assert ping(netns, gw)
    run("ip", "-n", netns, "link", "set", "eth0", "address", "02:11:22:33:44:55")
    run("ip", "-n", netns, "neigh", "flush", "all")
    assert not ping(netns, gw)
    assert delete(bin_dir, net, netns)[0] == 0
    assert not in_ruleset(net)


def test_mtu_hairpin_and_requested_mac(bin_dir, net, netns):
    net.update({"mtu": 1400, "hairpinMode": True})
    rc, res = add(bin_dir, net, netns, cni_args="MAC=02:aa:bb:cc:dd:01")
    assert rc == 0, res
    assert res["interfaces"][2]["mac"] == "02:aa:bb:cc:dd:01"
    assert "02:aa:bb:cc:dd:01" in run("ip", "-n", netns, "link", "show", "eth0").stdout
    assert "mtu 1400" in run("ip", "-n", netns, "link", "show", "eth0").stdout
    veth = res["interfaces"][1]["name"]
    assert "hairpin on" in run("ip", "-d", "link", "show", veth).stdout
    assert delete(bin_dir, net, netns)[0] == 0


def kernel_has_bridge_vlan_filtering():
    name = unique("pvf")
    ok = run("ip", "link", "add", name, "type", "bridge", "vlan_filtering", "1", check=False).returncode == 0
    run("ip", "link", "delete", name, check=False)
    return ok


def test_vlan_without_kernel_support_is_a_clear_error(bin_dir, net, netns):
    if kernel_has_bridge_vlan_filtering():
        pytest.skip("this kernel has bridge VLAN filtering")
    rc, out = add(bin_dir, {**net, "vlan": 10}, netns)
    assert rc != 0 and out["code"] == 103 and "VLAN filtering" in out["msg"]
    assert data_files(net) == []


@pytest.mark.skipif(not kernel_has_bridge_vlan_filtering(), reason="kernel lacks CONFIG_BRIDGE_VLAN_FILTERING")
def test_vlan_separates_pods_on_one_bridge(bin_dir, net, make_netns):
    net["vlan"] = 10
    a, b, c = make_netns(), make_netns(), make_netns()
    ra, rb = add(bin_dir, net, a, "ca")[1], add(bin_dir, net, b, "cb")[1]
    other_vlan = {**net, "vlan": 20, "isGateway": False, "isDefaultGateway": False}
    rc, rc_ = add(bin_dir, other_vlan, c, "cc")
    assert rc == 0, rc_
    assert "PVID" in run("bridge", "vlan", "show", "dev", ra["interfaces"][1]["name"]).stdout
    assert ping(a, rb["ips"][0]["address"].split("/")[0]) and ping(a, ra["ips"][0]["gateway"])
    assert not ping(a, rc_["ips"][0]["address"].split("/")[0])
    for ns, cid, conf in ((a, "ca", net), (b, "cb", net), (c, "cc", other_vlan)):
        assert delete(bin_dir, conf, ns, cid)[0] == 0


# --- errors: spec codes, non-zero exit, nothing half-made -----------------------------
def test_version_lists_supported_versions(bin_dir):
    rc, out = exec_plugin(bin_dir, "bridge", "VERSION", {"cniVersion": "1.0.0"})
    assert rc == 0 and out["supportedVersions"] == VERSIONS


@pytest.mark.parametrize("stdin,env,code", [
    (b"{not json", {}, 6),
    (json.dumps({"cniVersion": "9.9.9", "name": "n", "type": "bridge"}), {}, 1),
    (json.dumps({"cniVersion": "0.2.0", "name": "n", "type": "bridge"}), {}, 1),
    (json.dumps({"name": "n", "type": "bridge"}), {}, 7),
    (json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "mtu": "big",
                 "ipam": {"type": "host-local"}}), {}, 7),
    (json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge"}), {}, 7),  # no ipam
    (json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": {"type": "host-local"}}),
     {"CNI_CONTAINERID": ""}, 4),
    (json.dumps({"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": {"type": "host-local"}}),
     {"CNI_COMMAND": "FROB"}, 4),
])
def test_bad_input_gets_error_json_with_the_spec_code(bin_dir, netns, stdin, env, code):
    rc, out = exec_plugin(bin_dir, "bridge", env.pop("CNI_COMMAND", "ADD"), stdin,
                          netns=f"/run/netns/{netns}", extra_env=env)
    assert rc != 0
    assert out["code"] == code and out["msg"] and "cniVersion" in out


def test_missing_netns_is_an_error_and_leaves_nothing(bin_dir, net):
    rc, out = add(bin_dir, net, "no-such-netns-" + unique(""))
    assert rc != 0 and out["code"] == 4 and "does not exist" in out["msg"]
    assert data_files(net) == [] and host_veths(net["bridge"]) == []


def test_exhausted_range_leaves_nothing_behind(bin_dir, net, make_netns):
    base = net["ipam"]["ranges"][0][0]["subnet"].rsplit(".", 1)[0]
    net["ipam"]["ranges"][0][0].update({"rangeStart": f"{base}.10", "rangeEnd": f"{base}.10"})
    a, b = make_netns(), make_netns()
    assert add(bin_dir, net, a, "ca")[0] == 0
    rc, out = add(bin_dir, net, b, "cb")
    assert rc != 0 and out["code"] == 100
    assert data_files(net) == [f"{base}.10"] and len(host_veths(net["bridge"])) == 1
    assert run("ip", "-n", b, "link", "show", "eth0", check=False).returncode != 0
    assert delete(bin_dir, net, a, "ca")[0] == 0


def test_clashing_interface_is_refused_and_the_address_released(bin_dir, net, netns):
    run("ip", "-n", netns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth1")
    rc, out = add(bin_dir, net, netns)
    assert rc != 0 and out["code"] == 102 and "eth0" in out["msg"]
    assert data_files(net) == [] and host_veths(net["bridge"]) == []
    # the rollback removed only what it made: the container's own eth0 stays
    assert run("ip", "-n", netns, "link", "show", "eth0", check=False).returncode == 0
    assert not in_ruleset(net)


def test_existing_non_bridge_link_is_refused(bin_dir, net, netns):
    run("ip", "link", "add", net["bridge"], "type", "veth", "peer", "name", net["bridge"] + "p")
    rc, out = add(bin_dir, net, netns)
    assert rc != 0 and out["code"] == 7 and "not a bridge" in out["msg"]
    assert data_files(net) == []


# --- loopback -----------------------------------------------------------------------
def test_loopback_brings_lo_up(bin_dir, state_dirs, make_netns):
    ns = unique("plo")
    run("ip", "netns", "add", ns)
    try:
        conf = {"cniVersion": "1.0.0", "name": "lo", "type": "loopback"}
        rc, out = exec_plugin(bin_dir, "loopback", "ADD", conf, netns=f"/run/netns/{ns}", ifname="lo")
        assert rc == 0 and out["interfaces"][0]["name"] == "lo"
        assert ping(ns, "127.0.0.1")
        assert exec_plugin(bin_dir, "loopback", "CHECK", {**conf, "prevResult": out},
                           netns=f"/run/netns/{ns}", ifname="lo")[0] == 0
        assert exec_plugin(bin_dir, "loopback", "DEL", conf, netns=f"/run/netns/{ns}", ifname="lo")[0] == 0
    finally:
        run("ip", "netns", "delete", ns, check=False)


# --- side by side with the reference plugins -------------------------------------------
@pytest.mark.skipif(not os.path.exists(f"{REFERENCE_BIN}/portmap"), reason="reference plugins not installed")
def test_reference_portmap_accepts_our_result_as_prev_result(bin_dir, net, make_netns):
    """Both run inside a private host netns, as on a node: the reference
    portmap's iptables chains stay out of this machine's own ruleset."""
    host, pod = make_netns(), make_netns()
    in_host = ("ip", "netns", "exec", host)
    rc, res = add(bin_dir, net, pod, prefix=in_host)
    assert rc == 0, res
    host_port = random.randint(20000, 30000)
    pm = {"cniVersion": "1.0.0", "name": net["name"], "type": "portmap", "prevResult": res,
          "runtimeConfig": {"portMappings": [{"hostPort": host_port, "containerPort": 80, "protocol": "tcp"}]}}
    path = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}  # the reference portmap execs iptables
    rc, out = exec_plugin(REFERENCE_BIN, "portmap", "ADD", pm, netns=f"/run/netns/{pod}", extra_env=path,
                          prefix=in_host)
    assert rc == 0, out
    assert out["ips"] == res["ips"]
    assert str(host_port) in run(*in_host, "nft", "list", "ruleset").stdout
    rc, out = exec_plugin(REFERENCE_BIN, "portmap", "DEL", pm, netns=f"/run/netns/{pod}", extra_env=path,
                          prefix=in_host)
    assert rc == 0, out
    assert delete(bin_dir, net, pod, prefix=in_host)[0] == 0


def test_ipam_plugin_that_is_not_ours_is_executed_and_its_errors_passed_on(bin_dir, net, make_netns):
    """With the reference host-local first in CNI_PATH, our bridge execs it
    (the spec's delegation) instead of running ours in-process."""
    base = net["ipam"]["ranges"][0][0]["subnet"].rsplit(".", 1)[0]
    net["ipam"]["ranges"][0][0].update({"rangeStart": f"{base}.20", "rangeEnd": f"{base}.20"})
    a, b = make_netns(), make_netns()
    path = f"{REFERENCE_BIN}:{bin_dir}"
    rc, res = add(bin_dir, net, a, "ca", path=path)
    assert rc == 0, res
    assert res["ips"][0]["address"] == f"{base}.20/24" and ping(a, res["ips"][0]["gateway"])
    assert data_files(net) == [f"{base}.20"]
    rc, out = add(bin_dir, net, b, "cb", path=path)
    assert rc != 0 and "no IP addresses available" in out["msg"]
    assert len(host_veths(net["bridge"])) == 1
    assert delete(bin_dir, net, a, "ca", path=path) == (0, None)
    assert data_files(net) == [] and host_veths(net["bridge"]) == []
