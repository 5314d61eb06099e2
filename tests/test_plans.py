"""Every plugin's plan as plain data, computed with no root and no kernel:
config + prevResult (+ facts read beforehand) -> what the plugin will make."""
import ipaddress
import json

import pytest

from cni_plugins import bandwidth, bridge, firewall, portmap, tuning
from cni_plugins.core.errors import CNIError
from cni_plugins.core.request import from_environment
from cni_plugins.dnsname import plugin as dnsname

ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin", "CNI_ARGS": "K8S_POD_NAME=web-1"}
PREV = {"cniVersion": "1.0.0",
        "interfaces": [{"name": "br0"}, {"name": "veth1"}, {"name": "eth0", "sandbox": "/run/netns/x"}],
        "ips": [{"address": "10.9.0.5/24", "gateway": "10.9.0.1", "interface": 2},
                {"address": "fd00:9::5/64", "gateway": "fd00:9::1", "interface": 2}]}


def request(plugin_type, **config):
    conf = {"cniVersion": "1.0.0", "name": "net1", "type": plugin_type, "prevResult": PREV, **config}
    return from_environment(ENV, json.dumps(conf).encode())


def names(elements):
    return [(s, e) for _, s, e in elements]


# --- firewall -----------------------------------------------------------------
def test_firewall_open_policy_lists_the_container_addresses():
    req = request("firewall")
    cfg = firewall.parse_config(req)
    addrs = firewall.container_addresses(req.prev_result)
    assert names(firewall.make_elements(cfg, addrs, {})) == [("ctr4", "10.9.0.5"), ("ctr6", "fd00:9::5")]


def test_firewall_same_bridge_isolates_each_address_to_its_host_interface():
    req = request("firewall", ingressPolicy="same-bridge")
    cfg = firewall.parse_config(req)
    addrs = firewall.container_addresses(req.prev_result)
    ifnames = {a: "br0" for a in addrs}
    got = names(firewall.make_elements(cfg, addrs, ifnames))
    assert ("isolated4", "10.9.0.5") in got and ("samebridge4", {"concat": ["br0", "10.9.0.5"]}) in got
    with pytest.raises(CNIError) as e:  # no route to it: refused, code 7
        firewall.make_elements(cfg, addrs, {})
    assert e.value.code == 7


# --- portmap ------------------------------------------------------------------
def test_portmap_plan_maps_each_family_and_masquerades_hairpin_and_localhost():
    req = request("portmap", runtimeConfig={"portMappings": [
        {"hostPort": 8080, "containerPort": 80, "protocol": "tcp"},
        {"hostPort": 5353, "containerPort": 53, "protocol": "udp", "hostIP": "192.0.2.1"}]})
    plan = portmap.make_plan(portmap.parse_config(req), req.prev_result)
    got = names(plan.elements)
    key = {"concat": ["tcp", 8080]}
    assert ("addr4", [key, "10.9.0.5"]) in got and ("port4", [key, 80]) in got
    assert ("addr6", [key, "fd00:9::5"]) in got
    hkey = {"concat": ["192.0.2.1", "udp", 5353]}
    assert ("haddr4", [hkey, "10.9.0.5"]) in got and not any(s == "haddr6" for s, _ in got)
    snat4 = [e for s, e in got if s == "snat4"]
    assert {"prefix": {"addr": "127.0.0.0", "len": 8}} in [e["concat"][0] for e in snat4]
    assert plan.localnet == ["10.9.0.5"]
    assert {f["dport"] for f in plan.conntrack} == {8080, 5353}


def test_portmap_without_snat_has_no_masquerade_and_no_route_localnet():
    req = request("portmap", snat=False,
                  runtimeConfig={"portMappings": [{"hostPort": 8080, "containerPort": 80}]})
    plan = portmap.make_plan(portmap.parse_config(req), req.prev_result)
    assert not [s for s, _ in names(plan.elements) if s.startswith("snat")] and plan.localnet == []


@pytest.mark.parametrize("mappings", [
    [{"hostPort": 0, "containerPort": 80}], [{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}],
    [{"hostPort": 80, "containerPort": 80}, {"hostPort": 80, "containerPort": 81}], "80:80",
])
def test_portmap_bad_mappings_are_code_7(mappings):
    with pytest.raises(CNIError) as e:
        portmap.parse_config(request("portmap", runtimeConfig={"portMappings": mappings}))
    assert e.value.code == 7


# --- tuning -------------------------------------------------------------------
def observed(link=None, **sysctls):
    return tuning.Observed(paths={k: f"/proc/sys/{k.replace('.', '/')}" for k in sysctls},
                           sysctls=sysctls, link=link)


def test_tuning_plan_records_originals_and_keeps_the_first_ones_on_a_repeated_add():
    req = request("tuning", sysctl={"net.ipv4.conf.eth0.rp_filter": "0"}, mtu=1400)
    cfg = tuning.parse_config(req)
    seen = observed({"mtu": 1500}, **{"net.ipv4.conf.eth0.rp_filter": "2"})
    plan = tuning.make_plan(cfg, req, seen, None)
    assert plan["sysctl"][0]["original"] == "2" and plan["sysctl"][0]["value"] == "0"
    assert plan["link"] == {"mtu": 1500} and plan["linkWanted"] == {"mtu": 1400}
    # ADD again without DEL: the kernel now shows our values, the record keeps the true originals
    again = tuning.make_plan(cfg, req, observed({"mtu": 1400}, **{"net.ipv4.conf.eth0.rp_filter": "0"}), plan)
    assert again["sysctl"][0]["original"] == "2" and again["link"] == {"mtu": 1500}


def test_tuning_differences_and_missing_interface():
    req = request("tuning", sysctl={"net.ipv4.ip_forward": "1"}, promisc=True)
    cfg = tuning.parse_config(req)
    assert tuning.differences(cfg, "eth0", observed({"promisc": True}, **{"net.ipv4.ip_forward": "1"})) == []
    diff = tuning.differences(cfg, "eth0", observed({"promisc": False}, **{"net.ipv4.ip_forward": "0"}))
    assert diff == ["net.ipv4.ip_forward is '0', configured '1'", "eth0 promisc is False, configured True"]
    with pytest.raises(CNIError) as e:
        tuning.make_plan(cfg, req, observed(None, **{"net.ipv4.ip_forward": "0"}), None)
    assert e.value.code == 3


# --- bandwidth ----------------------------------------------------------------
class Veth:
    name, index = "veth1", 7


def test_bandwidth_plan_names_the_ifb_only_for_egress_and_refuses_a_taken_name():
    req = request("bandwidth", ingressRate=8_000_000, ingressBurst=80_000)
    plan = bandwidth.make_plan(bandwidth.parse_config(req), req, Veth, set())
    assert plan["ifb"] == "" and plan["ingress"] == [8_000_000, 80_000] and plan["hostVeth"] == "veth1"
    req = request("bandwidth", egressRate=8_000_000, egressBurst=80_000)
    limits = bandwidth.parse_config(req)
    plan = bandwidth.make_plan(limits, req, Veth, set())
    assert plan["ifb"] == bandwidth.ifb_name("net1", "abc") and plan["ifb"].startswith("bwp")
    with pytest.raises(CNIError) as e:
        bandwidth.make_plan(limits, req, Veth, {plan["ifb"]})
    assert e.value.code == 102


def test_bandwidth_tbf_comparison_uses_the_kernels_units():
    rate, burst = 8_000_000, 80_000  # bits
    buffer, limit = bandwidth.tc.tbf_params(rate // 8, burst // 8)
    ours = [{"kind": "tbf", "parent": bandwidth.tc.TC_H_ROOT, "rate": rate // 8, "buffer": buffer, "limit": limit}]
    assert bandwidth._tbf_differences(ours, "veth1", rate, burst) == []
    assert bandwidth._tbf_differences(ours, "veth1", rate * 2, burst) != []
    assert bandwidth._tbf_differences([], "veth1", rate, burst) == ["no tbf qdisc on veth1"]


# --- dnsname ------------------------------------------------------------------
def test_dnsname_plan_registers_name_aliases_and_addresses():
    req = request("dnsname", domainName="Lab.Example",
                  runtimeConfig={"aliases": {"net1": ["api", "API"], "other": ["x"]}})
    cfg = dnsname.parse_config(req)
    plan = dnsname.make_plan(cfg, req, req.prev_result, ["10.9.0.1"], 4026531840)
    assert plan.record == {"containerID": "abc", "ifname": "eth0", "name": "web-1", "aliases": ["api"],
                           "ips": ["10.9.0.5/24", "fd00:9::5/64"]}
    assert plan.meta["domain"] == "lab.example" and plan.meta["gateways"] == ["10.9.0.1"]
    result = dnsname.result_with_dns(req.prev_result, cfg, ["10.9.0.1"])
    assert result["dns"] == {"nameservers": ["10.9.0.1"], "search": ["lab.example"]}


@pytest.mark.parametrize("prev_ips,gateways", [([], ["10.9.0.1"]), (PREV["ips"], [])])
def test_dnsname_needs_addresses_and_a_gateway(prev_ips, gateways):
    req = request("dnsname")
    with pytest.raises(CNIError) as e:
        dnsname.make_plan(dnsname.parse_config(req), req, {**PREV, "ips": prev_ips}, gateways, 1)
    assert e.value.code == 7


# --- bridge CHECK's plan ------------------------------------------------------
def test_bridge_expected_state_comes_from_prev_result():
    req = request("bridge", bridge="br0", ipam={"type": "host-local"})
    prev = {**PREV, "routes": [{"dst": "0.0.0.0/0"}], "interfaces": PREV["interfaces"] + [{"name": "bwp0123"}]}
    exp = bridge.expected_state(bridge.parse_config(req), req, prev, None)
    assert exp.host_veths == ["veth1"] and exp.addresses[0] == ipaddress.ip_interface("10.9.0.5/24")
    # our record names our veth: a chained plugin's host interface (bandwidth's ifb) is not expected on the bridge
    assert bridge.expected_state(bridge.parse_config(req), req, prev, {"hostVeth": "veth9"}).host_veths == ["veth9"]
    assert exp.routes[0]["dst"] == ipaddress.ip_network("0.0.0.0/0") and exp.routes[0]["gw"] is None
