"""tuning chained after bridge, through the real executables: every option
as a pod sees it (`ip -d link`, /proc/sys in its netns), validation that
changes nothing, DEL restoring, CHECK noticing drift."""
import json
import os

import pytest

from conftest import REFERENCE_BIN, add, exec_plugin, run


def link(ns, ifname="eth0"):
    return json.loads(run("ip", "-n", ns, "-d", "-j", "link", "show", ifname).stdout)[0]


def sysctl(ns, key):
    return run("ip", "netns", "exec", ns, "cat", "/proc/sys/" + key.replace(".", "/")).stdout.strip()


def snapshot(ns):
    lk = link(ns)
    return {"mac": lk["address"], "mtu": lk["mtu"], "promisc": lk.get("promiscuity"),
            "allmulti": "ALLMULTI" in lk["flags"], "txqlen": lk.get("txqlen"),
            "arp_filter": sysctl(ns, "net.ipv4.conf.eth0.arp_filter"),
            "somaxconn": sysctl(ns, "net.core.somaxconn"),
            "tcp_rmem": sysctl(ns, "net.ipv4.tcp_rmem")}


def tuning(net, prev, **options):
    return {"cniVersion": net["cniVersion"], "name": net["name"], "type": "tuning", "prevResult": prev, **options}


def run_tuning(bin_dir, command, conf, ns, cid="c1", **kw):
    return exec_plugin(bin_dir, "tuning", command, conf, netns=f"/run/netns/{ns}" if ns else "",
                       container_id=cid, **kw)


@pytest.fixture
def pod(bin_dir, net, netns):
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    return netns, res


ALL = {"sysctl": {"net.ipv4.conf.IFNAME.arp_filter": "1", "net.core.somaxconn": "512",
                  "net.ipv4.tcp_rmem": "4096 65536 1048576"},
       "mac": "02:aa:bb:cc:dd:ee", "mtu": 1400, "promisc": True, "allmulti": True, "txQLen": 333}


def test_every_option_is_applied_checked_and_restored(bin_dir, net, pod, state_dirs):
    ns, res = pod
    before = snapshot(ns)
    conf = tuning(net, res, **ALL)
    rc, out = run_tuning(bin_dir, "ADD", conf, ns)
    assert rc == 0, out
    lk = link(ns)
    assert lk["address"] == "02:aa:bb:cc:dd:ee" and lk["mtu"] == 1400 and lk["txqlen"] == 333
    assert lk["promiscuity"] == 1 and "PROMISC" in lk["flags"] and "ALLMULTI" in lk["flags"]
    assert sysctl(ns, "net.ipv4.conf.eth0.arp_filter") == "1"
    assert sysctl(ns, "net.core.somaxconn") == "512"
    assert sysctl(ns, "net.ipv4.tcp_rmem").split() == ["4096", "65536", "1048576"]
    # the result is prevResult with the container interface's new MAC
    cont = [i for i in out["interfaces"] if i.get("sandbox")]
    assert cont[0]["mac"] == "02:aa:bb:cc:dd:ee"
    assert [i["mac"] for i in out["interfaces"] if not i.get("sandbox")] == \
        [i["mac"] for i in res["interfaces"] if not i.get("sandbox")]
    assert out["ips"] == res["ips"]

    rc, err = run_tuning(bin_dir, "CHECK", {**conf, "prevResult": out}, ns)
    assert rc == 0, err

    rc, err = run_tuning(bin_dir, "DEL", conf, ns)
    assert rc == 0, err
    assert snapshot(ns) == before
    assert not os.listdir(state_dirs["state"] / "tuning" / net["name"])
    assert run_tuning(bin_dir, "DEL", conf, ns)[0] == 0  # idempotent


@pytest.mark.parametrize("key", ["kernel.hostname", "net.ipv4/../../kernel/hostname", "net..ipv4.ip_forward",
                                 "net.ipv4.no_such_key", "vm.swappiness", "net", ".net.core.somaxconn",
                                 "net.ipv4.conf.IFNAME.no_such_key", "net.ipv4.conf.nosuchif0.forwarding"])
def test_an_invalid_sysctl_key_is_refused_and_nothing_changes(bin_dir, net, pod, state_dirs, key):
    ns, res = pod
    before = snapshot(ns)
    conf = tuning(net, res, sysctl={"net.core.somaxconn": "777", key: "1"}, mtu=1300, mac="02:00:00:00:00:01")
    rc, out = run_tuning(bin_dir, "ADD", conf, ns)
    assert rc == 1 and out["code"] == 7, out
    assert snapshot(ns) == before
    assert not (state_dirs["state"] / "tuning" / net["name"]).exists() or \
        not os.listdir(state_dirs["state"] / "tuning" / net["name"])


@pytest.mark.parametrize("bad", [{"mtu": "1400"}, {"mac": "01:00:5e:00:00:01"}, {"mac": "zz"}, {"promisc": 1},
                                 {"sysctl": {"net.core.somaxconn": 5}}, {"txQLen": -1}, {"mtu": 20}])
def test_bad_option_values_are_code_7(bin_dir, net, pod, bad):
    ns, res = pod
    rc, out = run_tuning(bin_dir, "ADD", tuning(net, res, **bad), ns)
    assert rc == 1 and out["code"] == 7, out


def test_a_value_the_kernel_refuses_is_code_7_and_rolled_back(bin_dir, net, pod):
    ns, res = pod
    before = snapshot(ns)
    conf = tuning(net, res, sysctl={"net.core.somaxconn": "600", "net.ipv4.conf.IFNAME.arp_filter": "x"})
    rc, out = run_tuning(bin_dir, "ADD", conf, ns)
    assert rc == 1 and out["code"] == 7, out
    assert snapshot(ns) == before


def test_duplicated_sysctl_keys_are_refused(bin_dir, net, pod):
    ns, res = pod
    raw = json.dumps(tuning(net, res))[:-1] + ', "sysctl": {"net.core.somaxconn": "1", "net.core.somaxconn": "2"}}'
    rc, out = run_tuning(bin_dir, "ADD", raw, ns)
    assert rc == 1 and out["code"] == 7 and "duplicated" in out["msg"], out


def test_prev_result_is_required(bin_dir, net, pod):
    ns, _ = pod
    conf = {"cniVersion": "1.0.0", "name": net["name"], "type": "tuning", "mtu": 1400}
    for command in ("ADD", "CHECK"):
        rc, out = run_tuning(bin_dir, command, conf, ns)
        assert rc == 1 and out["code"] == 7, out


def test_check_detects_drift(bin_dir, net, pod):
    ns, res = pod
    conf = tuning(net, res, **ALL)
    rc, out = run_tuning(bin_dir, "ADD", conf, ns)
    assert rc == 0, out
    conf["prevResult"] = out
    drifts = [
        (["ip", "-n", ns, "link", "set", "eth0", "mtu", "1450"], ["ip", "-n", ns, "link", "set", "eth0", "mtu", "1400"]),
        (["ip", "-n", ns, "link", "set", "eth0", "address", "02:11:11:11:11:11"],
         ["ip", "-n", ns, "link", "set", "eth0", "address", "02:aa:bb:cc:dd:ee"]),
        (["ip", "-n", ns, "link", "set", "eth0", "promisc", "off"], ["ip", "-n", ns, "link", "set", "eth0", "promisc", "on"]),
        (["ip", "-n", ns, "link", "set", "eth0", "allmulticast", "off"],
         ["ip", "-n", ns, "link", "set", "eth0", "allmulticast", "on"]),
        (["ip", "-n", ns, "link", "set", "eth0", "txqueuelen", "1000"], ["ip", "-n", ns, "link", "set", "eth0", "txqueuelen", "333"]),
        (["ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.somaxconn=4096"],
         ["ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.somaxconn=512"]),
    ]
    for drift, fix in drifts:
        run(*drift)
        rc, err = run_tuning(bin_dir, "CHECK", conf, ns)
        assert rc == 1 and err["code"] == 104, (drift, err)
        run(*fix)
        rc, err = run_tuning(bin_dir, "CHECK", conf, ns)
        assert rc == 0, (fix, err)
    assert run_tuning(bin_dir, "DEL", conf, ns)[0] == 0


def test_mac_from_cni_args_runtime_config_and_args_cni(bin_dir, net, make_netns):
    cases = [
        ({"mac": "02:00:00:00:00:01"}, "MAC=02:00:00:00:00:02", "02:00:00:00:00:02"),
        ({"mac": "02:00:00:00:00:01", "runtimeConfig": {"mac": "02:00:00:00:00:03"}}, "MAC=02:00:00:00:00:02",
         "02:00:00:00:00:03"),
        ({"runtimeConfig": {"mac": "02:00:00:00:00:03"}, "args": {"cni": {"mac": "02:00:00:00:00:04", "mtu": 1280}}},
         "", "02:00:00:00:00:04"),
    ]
    for i, (options, cni_args, want) in enumerate(cases):
        ns = make_netns()
        rc, res = add(bin_dir, net, ns, f"c{i}")
        assert rc == 0, res
        rc, out = run_tuning(bin_dir, "ADD", tuning(net, res, **options), ns, f"c{i}", cni_args=cni_args)
        assert rc == 0, out
        assert link(ns)["address"] == want
        assert [x["mac"] for x in out["interfaces"] if x.get("sandbox")] == [want]
        if "args" in options:
            assert link(ns)["mtu"] == 1280


def test_del_with_the_netns_gone_drops_the_record(bin_dir, net, make_netns, state_dirs):
    ns = make_netns()
    rc, res = add(bin_dir, net, ns)
    assert rc == 0, res
    conf = tuning(net, res, mtu=1400, sysctl={"net.core.somaxconn": "300"})
    assert run_tuning(bin_dir, "ADD", conf, ns)[0] == 0
    run("ip", "netns", "delete", ns)
    rc, out = run_tuning(bin_dir, "DEL", conf, ns)
    assert rc == 0, out
    rc, out = run_tuning(bin_dir, "DEL", conf, "")
    assert rc == 0, out
    assert not os.listdir(state_dirs["state"] / "tuning" / net["name"])


def test_del_leaves_a_sysctl_someone_else_changed_since(bin_dir, net, pod):
    ns, res = pod
    conf = tuning(net, res, sysctl={"net.core.somaxconn": "300"})
    assert run_tuning(bin_dir, "ADD", conf, ns)[0] == 0
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.core.somaxconn=999")
    assert run_tuning(bin_dir, "DEL", conf, ns)[0] == 0
    assert sysctl(ns, "net.core.somaxconn") == "999"


def test_repeated_add_keeps_the_true_originals(bin_dir, net, pod):
    ns, res = pod
    before = snapshot(ns)
    conf = tuning(net, res, mtu=1400, sysctl={"net.core.somaxconn": "300"})
    assert run_tuning(bin_dir, "ADD", conf, ns)[0] == 0
    assert run_tuning(bin_dir, "ADD", {**conf, "mtu": 1300}, ns)[0] == 0
    assert link(ns)["mtu"] == 1300
    assert run_tuning(bin_dir, "DEL", conf, ns)[0] == 0
    assert snapshot(ns) == before


def test_gc_forgets_stale_records(bin_dir, net, pod, state_dirs):
    ns, res = pod
    assert run_tuning(bin_dir, "ADD", tuning(net, res, mtu=1400), ns)[0] == 0
    gc = {"cniVersion": "1.1.0", "name": net["name"], "type": "tuning", "cni.dev/valid-attachments": []}
    rc, out = exec_plugin(bin_dir, "tuning", "GC", gc)
    assert rc == 0, out
    assert not os.listdir(state_dirs["state"] / "tuning" / net["name"])


@pytest.mark.skipif(not os.path.exists(f"{REFERENCE_BIN}/tuning"), reason="no reference tuning plugin")
def test_same_effect_as_the_reference(bin_dir, net, make_netns, tmp_path):
    options = {k: v for k, v in ALL.items() if k != "txQLen"}  # the packaged reference predates txQLen
    seen = []
    for i, plugin_dir in enumerate((bin_dir, REFERENCE_BIN)):
        ns = make_netns()
        rc, res = add(bin_dir, net, ns, f"r{i}")
        assert rc == 0, res
        conf = tuning(net, res, dataDir=str(tmp_path / "ref"), **options)
        rc, out = exec_plugin(plugin_dir, "tuning", "ADD", conf, netns=f"/run/netns/{ns}", container_id=f"r{i}")
        assert rc == 0, out
        snap = snapshot(ns)
        del snap["txqlen"]
        seen.append((snap, [x["mac"] for x in out["interfaces"] if x.get("sandbox")]))
        rc, out = exec_plugin(plugin_dir, "tuning", "DEL", conf, netns=f"/run/netns/{ns}", container_id=f"r{i}")
        assert rc == 0, out
    assert seen[0] == seen[1]


def test_interface_names_with_dots_in_sysctl_keys(bin_dir, net, netns):
    rc, res = add(bin_dir, net, netns, ifname="net1.5")
    assert rc == 0, res
    conf = tuning(net, res, sysctl={"net.ipv4.conf.IFNAME.arp_filter": "1",
                                    "net.ipv4.conf.net1.5.arp_announce": "2"})
    rc, out = run_tuning(bin_dir, "ADD", conf, netns, ifname="net1.5")
    assert rc == 0, out
    assert run("ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/net1.5/arp_filter").stdout.strip() == "1"
    assert run("ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/net1.5/arp_announce").stdout.strip() == "2"
    assert run_tuning(bin_dir, "CHECK", {**conf, "prevResult": out}, netns, ifname="net1.5")[0] == 0
    assert run_tuning(bin_dir, "DEL", conf, netns, ifname="net1.5")[0] == 0
    assert run("ip", "netns", "exec", netns, "cat", "/proc/sys/net/ipv4/conf/net1.5/arp_announce").stdout.strip() == "0"
