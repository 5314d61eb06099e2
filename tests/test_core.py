"""The protocol core and the bridge plan: pure functions, no root needed."""
import ipaddress
import json

import pytest

from cni_plugins import bridge
from cni_plugins.core import skel, version
from cni_plugins.core.errors import CNIError
from cni_plugins.core.request import from_environment, parse_cni_args


class Echo:
    """A plugin that returns a fixed result, to test the entry point."""

    result = {"interfaces": [{"name": "eth0", "sandbox": "/x"}],
              "ips": [{"address": "10.9.0.2/24", "gateway": "10.9.0.1", "interface": 0},
                      {"address": "fd00::2/64", "interface": 0}],
              "routes": [{"dst": "0.0.0.0/0", "gw": "10.9.0.1", "mtu": 1400}]}

    def add(self, req):
        return self.result

    def delete(self, req):
        pass

    def check(self, req):
        pass


ENV = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "abc", "CNI_NETNS": "/run/netns/x",
       "CNI_IFNAME": "eth0", "CNI_PATH": "/opt/cni/bin"}


def conf(version="1.0.0", **extra):
    return json.dumps({"cniVersion": version, "name": "n", "type": "echo", **extra}).encode()


@pytest.mark.parametrize("ver", ["0.3.0", "0.3.1", "0.4.0"])
def test_legacy_results_carry_ip_version_and_drop_1_1_route_fields(ver):
    status, out = skel.handle(Echo(), ENV, conf(ver))
    assert status == 0 and out["cniVersion"] == ver
    assert [ip["version"] for ip in out["ips"]] == ["4", "6"]
    assert out["routes"] == [{"dst": "0.0.0.0/0", "gw": "10.9.0.1"}]


def test_1_1_0_keeps_route_mtu_and_1_0_0_drops_it():
    assert skel.handle(Echo(), ENV, conf("1.1.0"))[1]["routes"][0]["mtu"] == 1400
    out = skel.handle(Echo(), ENV, conf("1.0.0"))[1]
    assert "mtu" not in out["routes"][0] and "version" not in out["ips"][0]


def test_prev_result_of_an_old_version_is_normalised():
    prev = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.9.0.2/24"}]}
    env = dict(ENV)
    req = from_environment(env, conf("1.0.0", prevResult=prev))
    assert req.prev_result["ips"] == [{"address": "10.9.0.2/24"}]


def test_version_answers_supported_versions_in_the_callers_version():
    status, out = skel.handle(Echo(), {"CNI_COMMAND": "VERSION"}, conf("0.4.0"))
    assert status == 0 and out == {"cniVersion": "0.4.0", "supportedVersions": list(version.SUPPORTED)}


@pytest.mark.parametrize("env,stdin,code", [
    ({"CNI_COMMAND": "CHECK"}, conf("0.3.1"), 1),
    ({"CNI_COMMAND": "GC"}, conf("1.0.0"), 1),
    ({"CNI_IFNAME": "a/b"}, conf(), 4),
    ({"CNI_IFNAME": "x" * 16}, conf(), 4),
    ({"CNI_CONTAINERID": "-bad"}, conf(), 4),
    ({"CNI_NETNS": ""}, conf(), 4),
    ({"CNI_ARGS": "novalue"}, conf(), 4),
    ({}, b"[]", 6),
])
def test_invalid_requests_get_the_spec_code(env, stdin, code):
    status, out = skel.handle(Echo(), {**ENV, **env}, stdin)
    assert status == 1 and out["code"] == code


def test_del_does_not_need_a_netns():
    assert skel.handle(Echo(), {**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}, conf()) == (0, None)


def test_cni_args_parse():
    assert parse_cni_args("IP=10.0.0.2;K8S_POD_NAME=a;") == {"IP": "10.0.0.2", "K8S_POD_NAME": "a"}


def _req(**config):
    base = {"cniVersion": "1.0.0", "name": "n", "type": "bridge", "ipam": {"type": "host-local"}}
    return from_environment(ENV, json.dumps({**base, **config}).encode())


def test_plan_default_gateway_masquerade_and_spoof_check():
    req = _req(isDefaultGateway=True, ipMasq=True, macspoofchk=True, bridge="br9")
    cfg = bridge.parse_config(req)
    ipam_result = {"ips": [{"address": "10.9.0.5/24"}, {"address": "fd00:9::5/64", "gateway": "fd00:9::1"}],
                   "routes": [{"dst": "192.168.50.0/24"}]}
    plan = bridge.make_plan(cfg, req, ipam_result, "veth1234", "02:00:00:00:00:01")
    assert cfg.is_gateway  # implied by isDefaultGateway
    assert plan.gateways == [ipaddress.ip_interface("10.9.0.1/24"), ipaddress.ip_interface("fd00:9::1/64")]
    assert [r["dst"] for r in plan.result["routes"]] == ["192.168.50.0/24", "0.0.0.0/0", "::/0"]
    # a route without gw goes via its family's gateway
    assert plan.routes[0]["gw"] == ipaddress.ip_address("10.9.0.1")
    assert (bridge.MASQUERADE, "masq4", "10.9.0.5") in plan.nft_elements
    assert (bridge.SPOOFCHK, "spoofchk_ports", "veth1234") in plan.nft_elements
    assert plan.result["ips"][0] == {"address": "10.9.0.5/24", "interface": 2, "gateway": "10.9.0.1"}


def test_plan_without_gateway_has_no_bridge_address_or_default_route():
    req = _req()
    plan = bridge.make_plan(bridge.parse_config(req), req, {"ips": [{"address": "10.9.0.5/24"}]},
                            "veth1", "02:00:00:00:00:01")
    assert plan.gateways == [] and plan.routes == [] and plan.nft_elements == []


@pytest.mark.parametrize("config", [
    {"mtu": 10}, {"vlan": 5000}, {"bridge": "x" * 16}, {"hairpinMode": "yes"},
    {"vlan": 5, "vlanTrunk": [{"id": 6}]}, {"vlanTrunk": [{"minID": 9, "maxID": 3}]},
    {"ipMasqBackend": "pf"}, {"ipam": {}},
])
def test_invalid_bridge_config_is_code_7(config):
    with pytest.raises(CNIError) as e:
        bridge.parse_config(_req(**config))
    assert e.value.code == 7


def test_requested_mac_must_be_unicast():
    with pytest.raises(CNIError):
        bridge.parse_config(_req(runtimeConfig={"mac": "01:00:5e:00:00:01"}))
    assert bridge.parse_config(_req(runtimeConfig={"mac": "02:AA:bb:cc:dd:ee"})).mac == "02:aa:bb:cc:dd:ee"


def test_masquerade_elements_exempt_the_containers_own_subnet():
    elements = bridge.masq_elements("10.9.0.5", "10.9.0.0/24")
    assert elements[0] == (bridge.MASQUERADE, "masq4", "10.9.0.5")
    assert elements[1][2] == {"concat": ["10.9.0.5", {"prefix": {"addr": "10.9.0.0", "len": 24}}]}
