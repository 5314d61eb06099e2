"""Defects the fuzzing suite (test_fuzz_plugins.py) found, one test each,
each failing on the code before its fix."""
import json
import os
import subprocess

import pytest

from conftest import add, data_files, delete, exec_plugin, host_veths, in_ruleset, run, unique
from test_overlay_plugin import STATE as OVERLAY_STATE, conf as overlay_conf, plugin as overlay_plugin
from test_overlay_plugin import host  # noqa: F401 - the fixture


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
    try:
        rc, out = exec_plugin(bin_dir, plugin, "ADD", conf, netns=f"/run/netns/{netns}")
        assert rc == 1 and out["code"] == 7 and "prevResult" in out["msg"], out
    finally:  # what the code before the fix made
        exec_plugin(bin_dir, plugin, "DEL", conf, netns=f"/run/netns/{netns}")


def test_a_lone_surrogate_decodes_as_go_does_and_nul_is_refused_naming_the_field(bin_dir, net, netns, state_dirs):
    """A lone surrogate escape reached paths and netlink as text that has no
    UTF-8 (UnicodeEncodeError: 999), NUL reached paths (ValueError: 999).
    Now the first becomes U+FFFD, as in Go's decoder, and NUL is code 7."""
    raw = json.dumps({**net, "dns": {"nameservers": ["10.0.0.1"], "search": ["@"]}}).replace('"@"', '"a\\ud800"')
    rc, res = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 0 and res["dns"]["search"] == ["a\ufffd"], res
    assert delete(bin_dir, net, netns) == (0, None)
    raw = json.dumps({**net, "ipam": {**net["ipam"], "dataDir": "@"}}).replace('"@"', '"/tmp/x\\u0000y"')
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 7 and "ipam.dataDir holds NUL" in out["msg"], out
    assert nothing_left(net, state_dirs)


@pytest.mark.parametrize("name", ["\u00e9" * 8, "a b", "a/b", "."])
def test_a_bridge_name_the_kernel_refuses_is_code_7(bin_dir, net, netns, state_dirs, name):
    """16 bytes in 8 characters passed the length check (a netlink ERANGE
    reached the runtime as 5, "I/O failure"), 'a b' became 103."""
    rc, out = add(bin_dir, {**net, "bridge": name}, netns)
    assert rc == 1 and out["code"] == 7 and "invalid interface name" in out["msg"], out
    assert nothing_left(net, state_dirs)


def test_a_host_interface_name_too_long_for_the_kernel_names_no_interface(bin_dir, net, netns, state_dirs):
    """dnsname looked it up to find the gateway: the kernel's ERANGE came
    out unwrapped as code 5."""
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "\u00e9" * 8}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.240.0.5/24", "interface": 1}]}
    conf = {"cniVersion": "1.0.0", "name": net["name"], "type": "dnsname", "prevResult": prev}
    rc, out = exec_plugin(bin_dir, "dnsname", "ADD", conf, netns=f"/run/netns/{netns}", cni_args="K8S_POD_NAME=a")
    assert rc == 1 and out["code"] == 7 and "no gateway address" in out["msg"], out


# --- ADD again without DEL (runtimes that retry) -------------------------------------------
def test_an_add_repeated_without_del_leaves_the_live_attachment_whole(bin_dir, net, netns, state_dirs):
    """The second ADD (another requested address) overwrote the first one's
    record, failed on the existing interface, then removed that record and
    released every address of the attachment, the live one's too: a second
    container could get the same address, and a DEL without prevResult left
    the veth and masquerade elements for good."""
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    other = res["ips"][0]["address"].split("/")[0].rsplit(".", 1)[0] + ".200"
    try:
        rc, out = add(bin_dir, net, netns, cni_args=f"IP={other}")
        assert rc == 1 and out["code"] == 102 and "ADD again without DEL" in out["msg"], out
        assert data_files(net) == [res["ips"][0]["address"].split("/")[0]] and len(host_veths(net["bridge"])) == 1
        assert delete(bin_dir, net, netns) == (0, None)  # no prevResult: our record is all DEL has
        assert nothing_left(net, state_dirs)
    finally:  # what the code before the fix left, found from the result
        delete(bin_dir, {**net, "prevResult": res}, netns)


@pytest.mark.parametrize("plugin, first, again", [
    ("portmap", {"runtimeConfig": {"portMappings": [{"hostPort": 18080, "containerPort": 80}]}},
     {"runtimeConfig": {"portMappings": [{"hostPort": 19090, "containerPort": 90}]}}),
    ("firewall", {"prevResult": "other address"}, {}),
])
def test_a_chained_add_repeated_without_del_replaces_the_first(bin_dir, net, netns, state_dirs, plugin, first, again):
    """The second ADD's record took the first one's place, so the first
    one's port mapping (or firewall element) outlived DEL, and the port
    could never be published again.  (nothing_left sees every nft element
    naming the network's addresses, the moved one too.)"""
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    moved = {**res, "ips": [{**res["ips"][0], "address": res["ips"][0]["address"].rsplit(".", 1)[0] + ".201/24"}]}
    confs = [{"cniVersion": net["cniVersion"], "name": net["name"], "type": plugin, "prevResult": res,
              **({**extra, "prevResult": moved} if extra.get("prevResult") else extra)} for extra in (first, again)]
    try:
        for conf in confs:
            rc, out = exec_plugin(bin_dir, plugin, "ADD", conf, netns=f"/run/netns/{netns}")
            assert rc == 0, out
        rc, out = exec_plugin(bin_dir, plugin, "DEL", confs[1], netns=f"/run/netns/{netns}")
        assert rc == 0, out
        assert delete(bin_dir, net, netns) == (0, None)
        assert nothing_left(net, state_dirs)
    finally:  # what the code before the fix left: the first one's elements, DELeted by their own config
        exec_plugin(bin_dir, plugin, "ADD", confs[0], netns=f"/run/netns/{netns}", container_id="cleanup")
        exec_plugin(bin_dir, plugin, "DEL", confs[0], netns=f"/run/netns/{netns}", container_id="cleanup")


def test_a_tuning_add_repeated_without_del_still_restores_what_the_first_changed(bin_dir, net, netns, state_dirs):
    """The second ADD's record listed only its own sysctls and attributes:
    what the first one alone had changed was never restored."""
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res

    def seen():
        return (run("ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore").stdout,
                json.loads(run("ip", "-n", netns, "-j", "link", "show", "eth0").stdout)[0]["mtu"])

    before = seen()
    for options in ({"sysctl": {"net.ipv4.conf.IFNAME.arp_ignore": "1"}, "mtu": 1400},
                    {"sysctl": {"net.core.somaxconn": "600"}}):
        conf = {"cniVersion": net["cniVersion"], "name": net["name"], "type": "tuning", "prevResult": res, **options}
        rc, out = exec_plugin(bin_dir, "tuning", "ADD", conf, netns=f"/run/netns/{netns}")
        assert rc == 0, out
    assert seen() != before
    rc, out = exec_plugin(bin_dir, "tuning", "DEL", conf, netns=f"/run/netns/{netns}")
    assert rc == 0, out
    assert seen() == before
    assert delete(bin_dir, net, netns) == (0, None)


def test_del_sweeps_the_temporaries_of_writers_killed_half_way(bin_dir, net, netns, state_dirs):
    """Found by the fault tests: a plugin killed between naming its record's
    temporary and renaming it left `.tmp<pid>.<random>` for good."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    records = state_dirs["state"] / "bridge" / net["name"]
    left, live = records / f".tmp{dead.pid}.0badc0de", records / f".tmp{os.getpid()}.0badc0de"
    left.write_text("{")
    live.write_text("{")
    assert delete(bin_dir, net, netns) == (0, None)
    assert not left.exists() and live.exists()  # a writer still running keeps its own
    live.unlink()
    assert nothing_left(net, state_dirs)


def test_a_reservation_appears_with_its_owner_or_not_at_all(tmp_path):
    """Found by the fault tests (agent killed 65 % into a bridge ADD, seed
    9001, scale 3): host-local created the address file, then wrote the
    owner; killed between the two, it left an empty reservation that no
    DEL could ever release.  Now the file is written unnamed and linked in
    complete (records.create_atomic); what is left to see here is that it
    still reserves exclusively and leaves no temporary."""
    from ipam.store import DiskStore

    store = DiskStore(str(tmp_path), "net")
    with store:
        assert store.reserve("10.240.0.5", "c1\r\neth0") and not store.reserve("10.240.0.5", "c2\r\neth0")
    assert (tmp_path / "net" / "10.240.0.5").read_bytes() == b"c1\r\neth0"
    assert sorted(p.name for p in (tmp_path / "net").iterdir()) == ["10.240.0.5", "lock"]


def test_a_del_retried_with_the_cached_result_spares_the_address_s_next_owner(bin_dir, net, make_netns, state_dirs):
    """Found by the fault tests (concurrent lives, agent killed): a runtime
    retries the chain's DEL with its cached result after part of it had
    succeeded; with our records gone, bridge and firewall rebuilt what to
    remove from that result, and removed the masquerade and firewall
    elements of the address's new owner."""
    a, b = make_netns(), make_netns()
    rc, res_a = add(bin_dir, net, a, cid="ca")
    assert rc == 0, res_a
    address = res_a["ips"][0]["address"].split("/")[0]
    fw = {"cniVersion": net["cniVersion"], "name": net["name"], "type": "firewall"}
    assert exec_plugin(bin_dir, "firewall", "ADD", {**fw, "prevResult": res_a}, netns=f"/run/netns/{a}",
                       container_id="ca")[0] == 0
    chain_del = [("firewall", {**fw, "prevResult": res_a}), ("bridge", {**net, "prevResult": res_a})]
    for plugin, conf in chain_del:
        assert exec_plugin(bin_dir, plugin, "DEL", conf, netns=f"/run/netns/{a}", container_id="ca") == (0, None)
    rc, res_b = add(bin_dir, net, b, cid="cb", cni_args=f"IP={address}")  # the address, someone else's now
    assert rc == 0, res_b
    try:
        assert exec_plugin(bin_dir, "firewall", "ADD", {**fw, "prevResult": res_b}, netns=f"/run/netns/{b}",
                           container_id="cb")[0] == 0
        for plugin, conf in chain_del:  # the retry
            assert exec_plugin(bin_dir, plugin, "DEL", conf, netns=f"/run/netns/{a}", container_id="ca") == (0, None)
        tables = run("nft", "list", "table", "inet", "pycni_bridge").stdout + \
            run("nft", "list", "table", "inet", "pycni_firewall").stdout
        assert tables.count(address) >= 3, tables  # masq4, nomasq4, ctr4
    finally:
        exec_plugin(bin_dir, "firewall", "DEL", {**fw, "prevResult": res_b}, netns=f"/run/netns/{b}",
                    container_id="cb")
        assert delete(bin_dir, {**net, "prevResult": res_b}, b, cid="cb") == (0, None)
    assert nothing_left(net, state_dirs)


# --- found once the suite covered overlay and netpolicy ----------------------------------
@pytest.mark.parametrize("plugin", ["loopback", "portmap", "firewall", "tuning"])
def test_a_null_optional_field_of_prev_result_is_absent_not_printed_back(bin_dir, net, netns, state_dirs, plugin):
    """A prevResult IP with "gateway": null (Go decodes it as no gateway)
    passed the shape check and came back in the chained plugin's result as
    null: the runtime got a result whose gateway is no IP address (found
    through netpolicy, which returns its prevResult too)."""
    prev = {"cniVersion": "1.0.0", "interfaces": [{"name": "eth0", "sandbox": f"/run/netns/{netns}", "mtu": None}],
            "ips": [{"address": "10.240.0.5/24", "gateway": None, "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0", "gw": None}]}
    conf = {"cniVersion": "1.0.0", "name": net["name"], "type": plugin, "prevResult": prev}
    try:
        rc, out = exec_plugin(bin_dir, plugin, "ADD", conf, netns=f"/run/netns/{netns}")
        assert rc == 0, out
        assert out["ips"] == [{"address": "10.240.0.5/24", "interface": 0}], out
        assert out["interfaces"] == [{"name": "eth0", "sandbox": f"/run/netns/{netns}"}] and out["routes"] == [
            {"dst": "0.0.0.0/0"}], out
    finally:
        assert exec_plugin(bin_dir, plugin, "DEL", conf, netns=f"/run/netns/{netns}") == (0, None)


def test_a_document_that_is_no_object_is_a_decode_failure_whatever_it_holds(bin_dir, net, netns, state_dirs):
    """A JSON array holding a string with NUL was code 7 ("holds NUL"): the
    NUL check came before the check that the document is an object at all."""
    raw = "[" + json.dumps({**net, "vlan": "@"}).replace('"@"', '"a\\u0000b"') + "]"
    rc, out = exec_plugin(bin_dir, "bridge", "ADD", raw, netns=f"/run/netns/{netns}")
    assert rc == 1 and out["code"] == 6 and "must be a JSON object" in out["msg"], out
    assert nothing_left(net, state_dirs)


@pytest.mark.parametrize("version", [True, 1.0])
def test_a_node_state_format_version_is_the_integer_1_not_what_python_finds_equal(bin_dir, host, make_netns,
                                                                                  tmp_path, version):
    """The overlay plugin compared the node state's "version" with 1 by
    Python's equality: true and 1.0 passed as format version 1 (Go's
    decoder refuses both for an integer)."""
    host_ns, state_file = host
    state_file.parent.mkdir(parents=True)
    state_file.write_text(json.dumps({**OVERLAY_STATE, "version": version}))
    pod = make_netns("ovpp")
    config = overlay_conf(tmp_path, bridge=unique("ovb"))
    try:
        rc, out = overlay_plugin(bin_dir, host_ns, "ADD", config, pod)
        assert rc == 1 and out["code"] == 6 and "format version" in out["msg"], out
    finally:
        assert overlay_plugin(bin_dir, host_ns, "DEL", config, pod) == (0, None)
