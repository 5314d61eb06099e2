"""Defects the fuzzing suite (test_fuzz_plugins.py) found, one test each,
each failing on the code before its fix."""
import json

import pytest

from conftest import add, data_files, delete, exec_plugin, host_veths, in_ruleset


def nothing_left(conf, state_dirs):
    records = [p for p in state_dirs["state"].rglob("*") if p.is_file()] if state_dirs["state"].exists() else []
    return data_files(conf) == [] and host_veths(conf["bridge"]) == [] and not in_ruleset(conf) and records == []


@pytest.mark.parametrize("number", ["1e999", "-1e999", "1E400"])
def test_a_number_beyond_a_double_is_a_decode_failure(bin_dir, net, netns, state_dirs, number):
    """Python decoded it as Infinity: passed through into the result, ADD
    printed no JSON but code 999 ("a bug")."""
    raw = json.dumps({**net, "dns": {"nameservers": ["10.0.0.1"], "x": "@"}}).replace('"@"', number)
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 6 and "out of range" in out["msg"], out
    assert nothing_left(net, state_dirs)


@pytest.mark.parametrize("ipam_type", ["bridge", "portmap", "loopback"])
def test_an_ipam_type_naming_one_of_our_other_plugins_is_code_7(bin_dir, net, netns, state_dirs, ipam_type):
    """ipam.type "bridge" made our bridge its own IPAM, in-process, until
    RecursionError (999)."""
    conf = {**net, "ipam": {**net["ipam"], "type": ipam_type}}
    rc, out = add(bin_dir, conf, netns)
    assert rc == 1 and out["code"] == 7 and "not an IPAM plugin" in out["msg"], out
    assert nothing_left(net, state_dirs)


@pytest.mark.parametrize("plugin", ["loopback", "portmap", "firewall", "dnsname"])
@pytest.mark.parametrize("edit", [
    {"ips": [{"address": "10.240.0.5/24", "interface": 2}], "interfaces": []},
    {"ips": [{"address": "10.240.0.5/24", "interface": 0}], "interfaces": [{"name": ""}]},
    {"ips": [{"address": "10.240.0.5/24"}], "interfaces": [{"name": "eth0", "mac": 10 ** 30}]},
    {"ips": [{"address": "10.240.0.5/24"}], "interfaces": [{"name": "eth0", "mac": "zz"}]},
    {"ips": [{"address": "10.240.0.5/24"}], "routes": [{"dst": "0.0.0.0/0", "mtu": "1500"}]},
])
def test_a_prev_result_that_is_no_valid_result_is_refused_not_passed_through(bin_dir, net, netns, plugin, edit):
    """Chained plugins returned such a prevResult as their own result: the
    runtime got a result the spec does not allow (an IP on an interface that
    is not listed, an interface without a name, a MAC that is a number)."""
    prev = {"cniVersion": "1.1.0", **edit}
    conf = {"cniVersion": "1.1.0", "name": net["name"], "type": plugin, "prevResult": prev,
            "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80}]}}
    rc, out = exec_plugin(bin_dir, plugin, "ADD", conf, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"], out
