"""bandwidth chained after bridge, through the real executables.

Everything runs inside a "host" netns of our own (plugins exec'd with
`ip netns exec HOST`): the bridge, the host veths, the ifb devices and the
iperf3 server all live there and go with it at teardown, so a failed test
leaves nothing on the machine and traffic stays between our namespaces."""
import json
import os
import random
import shutil
import subprocess
import time

import pytest

from conftest import REFERENCE_BIN, exec_plugin, run, unique

MBIT = 1_000_000


@pytest.fixture
def host(make_netns):
    return make_netns("bwh")


@pytest.fixture
def bnet(host, state_dirs, tmp_path):
    """A bridge network inside ``host``."""
    return {
        "cniVersion": "1.0.0", "name": unique("bwn"), "type": "bridge", "bridge": unique("bwb"),
        "isGateway": True, "isDefaultGateway": True,
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                 "ranges": [[{"subnet": f"10.{random.randint(240, 249)}.{random.randint(0, 255)}.0/24"}]]},
    }


def in_host(bin_dir, host, plugin, command, conf, ns="", cid="c1", **kw):
    return exec_plugin(bin_dir, plugin, command, conf, netns=f"/run/netns/{ns}" if ns else "", container_id=cid,
                       prefix=("ip", "netns", "exec", host), **kw)


def bandwidth(bnet, prev, **options):
    return {"cniVersion": bnet["cniVersion"], "name": bnet["name"], "type": "bandwidth", "prevResult": prev,
            **options}


def limits(ingress=0, egress=0, burst=500_000):
    out = {}
    if ingress:
        out.update(ingressRate=ingress, ingressBurst=burst)
    if egress:
        out.update(egressRate=egress, egressBurst=burst)
    return out


@pytest.fixture
def pod(bin_dir, host, bnet, make_netns):
    def make(cid="c1"):
        ns = make_netns("bwp")
        rc, res = in_host(bin_dir, host, "bridge", "ADD", bnet, ns, cid)
        assert rc == 0, res
        return ns, res
    return make


def host_veth(res):
    return [i["name"] for i in res["interfaces"] if not i.get("sandbox") and i["name"].startswith("veth")][0]


def qdiscs(host, dev):
    return json.loads(run("ip", "netns", "exec", host, "tc", "-j", "qdisc", "show", "dev", dev).stdout)


def links(host):
    return {lk["ifname"]: lk for lk in json.loads(run("ip", "-n", host, "-d", "-j", "link", "show").stdout)}


def tbf(host, dev):
    return [q for q in qdiscs(host, dev) if q["kind"] == "tbf"]


def test_add_check_del(bin_dir, host, bnet, pod, state_dirs):
    ns, res = pod()
    veth = host_veth(res)
    conf = bandwidth(bnet, res, runtimeConfig={"bandwidth": limits(10 * MBIT, 20 * MBIT)})
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
    assert rc == 0, out

    ifbs = [i for i in out["interfaces"] if i["name"].startswith("bwp")]
    assert len(ifbs) == 1 and len(ifbs[0]["name"]) == 15
    ifb = ifbs[0]["name"]
    assert out["interfaces"][:-1] == res["interfaces"] and out["ips"] == res["ips"]
    have = links(host)
    assert have[ifb]["linkinfo"]["info_kind"] == "ifb" and "UP" in have[ifb]["flags"]
    assert have[ifb]["mtu"] == have[veth]["mtu"] and have[ifb]["address"] == ifbs[0]["mac"]

    q = tbf(host, veth)
    assert len(q) == 1 and q[0]["options"]["rate"] == 10 * MBIT // 8 and q[0]["options"]["burst"] == 500_000 // 8
    q = tbf(host, ifb)
    assert len(q) == 1 and q[0]["options"]["rate"] == 20 * MBIT // 8
    assert [q for q in qdiscs(host, veth) if q["kind"] == "ingress"]
    filters = run("ip", "netns", "exec", host, "tc", "filter", "show", "dev", veth, "ingress").stdout
    assert f"Egress Redirect to device {ifb}" in filters

    rc, err = in_host(bin_dir, host, "bandwidth", "CHECK", {**conf, "prevResult": out}, ns)
    assert rc == 0, err
    # the whole chain's CHECK: bridge is handed the final result, ifb included
    rc, err = in_host(bin_dir, host, "bridge", "CHECK", {**bnet, "prevResult": out}, ns)
    assert rc == 0, err

    rc, err = in_host(bin_dir, host, "bandwidth", "DEL", conf, ns)
    assert rc == 0, err
    assert ifb not in links(host)
    assert tbf(host, veth) == [] and not [q for q in qdiscs(host, veth) if q["kind"] == "ingress"]
    records = state_dirs["state"] / "bandwidth" / bnet["name"]
    assert not records.exists() or not os.listdir(records)
    assert in_host(bin_dir, host, "bandwidth", "DEL", conf, ns)[0] == 0


def test_check_detects_changes(bin_dir, host, bnet, pod):
    ns, res = pod()
    veth = host_veth(res)
    conf = bandwidth(bnet, res, **limits(10 * MBIT, 10 * MBIT))
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
    assert rc == 0, out
    ifb = out["interfaces"][-1]["name"]
    conf["prevResult"] = out
    tc = ("ip", "netns", "exec", host, "tc")
    # another rate on the ifb, then no redirect, then no ifb, then no tbf on the veth
    for change in ([*tc, "qdisc", "replace", "dev", ifb, "root", "handle", "1:", "tbf", "rate", "5mbit",
                    "burst", "62500", "latency", "25ms"],
                   [*tc, "qdisc", "del", "dev", veth, "ingress"],
                   ["ip", "-n", host, "link", "del", ifb],
                   [*tc, "qdisc", "del", "dev", veth, "root"]):
        run(*change)
        rc, err = in_host(bin_dir, host, "bandwidth", "CHECK", conf, ns)
        assert rc == 1 and err["code"] == 104, (change, err)
    assert in_host(bin_dir, host, "bandwidth", "DEL", conf, ns)[0] == 0


def test_static_config_wins_over_runtime_config(bin_dir, host, bnet, pod):
    ns, res = pod()
    conf = bandwidth(bnet, res, ingressRate=8 * MBIT, ingressBurst=400_000,
                     runtimeConfig={"bandwidth": limits(10 * MBIT, 10 * MBIT)})
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
    assert rc == 0, out
    assert [q["options"]["rate"] for q in tbf(host, host_veth(res))] == [MBIT]
    assert not [i for i in out["interfaces"] if i["name"].startswith("bwp")]  # no egress: no ifb
    assert in_host(bin_dir, host, "bandwidth", "DEL", conf, ns)[0] == 0


def test_no_limits_passes_prev_result_through(bin_dir, host, bnet, pod):
    ns, res = pod()
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", bandwidth(bnet, res), ns)
    assert rc == 0 and out["interfaces"] == res["interfaces"], out
    assert tbf(host, host_veth(res)) == []


@pytest.mark.parametrize("bad", [{"ingressRate": MBIT}, {"egressBurst": 1000}, {"ingressRate": "1", "ingressBurst": 8},
                                 {"egressRate": -8, "egressBurst": 8}, {"ingressRate": 8, "ingressBurst": 8 << 32},
                                 {"egressRate": MBIT, "egressBurst": 80000, "shapedSubnets": ["10.0.0.0/8"]}])
def test_invalid_limits_are_code_7(bin_dir, host, bnet, pod, bad):
    ns, res = pod()
    for conf in (bandwidth(bnet, res, **bad), bandwidth(bnet, res, runtimeConfig={"bandwidth": bad})):
        rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
        assert rc == 1 and out["code"] == 7, (conf, out)
    assert tbf(host, host_veth(res)) == []
    assert not [n for n in links(host) if n.startswith("bwp")]


def test_prev_result_is_required(bin_dir, host, bnet, pod):
    ns, res = pod()
    conf = {"cniVersion": "1.0.0", "name": bnet["name"], "type": "bandwidth", **limits(MBIT)}
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
    assert rc == 1 and out["code"] == 7, out


def test_del_after_the_container_is_gone_removes_the_ifb(bin_dir, host, bnet, pod):
    ns, res = pod()
    conf = bandwidth(bnet, res, **limits(MBIT, MBIT))
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, ns)
    assert rc == 0, out
    ifb = out["interfaces"][-1]["name"]
    run("ip", "netns", "delete", ns)  # the veth pair goes with it, the ifb stays
    assert ifb in links(host)
    rc, err = in_host(bin_dir, host, "bandwidth", "DEL", conf, "")
    assert rc == 0, err
    assert ifb not in links(host)


def test_gc_undoes_stale_attachments(bin_dir, host, bnet, pod, state_dirs):
    (ns1, r1), (ns2, r2) = pod("g1"), pod("g2")
    ifbs = []
    for ns, cid, res in ((ns1, "g1", r1), (ns2, "g2", r2)):
        rc, out = in_host(bin_dir, host, "bandwidth", "ADD", bandwidth(bnet, res, **limits(MBIT, MBIT)), ns, cid)
        assert rc == 0, out
        ifbs.append(out["interfaces"][-1]["name"])
    gc = {"cniVersion": "1.1.0", "name": bnet["name"], "type": "bandwidth",
          "cni.dev/valid-attachments": [{"containerID": "g2", "ifname": "eth0"}]}
    rc, out = in_host(bin_dir, host, "bandwidth", "GC", gc)
    assert rc == 0, out
    have = links(host)
    assert ifbs[0] not in have and ifbs[1] in have
    assert tbf(host, host_veth(r1)) == [] and tbf(host, host_veth(r2))


@pytest.mark.skipif(not os.path.exists(f"{REFERENCE_BIN}/bandwidth"), reason="no reference bandwidth plugin")
def test_same_qdiscs_as_the_reference(bin_dir, host, bnet, pod):
    seen = []
    for i, plugin_dir in enumerate((bin_dir, REFERENCE_BIN)):
        ns, res = pod(f"r{i}")
        conf = bandwidth(bnet, res, runtimeConfig={"bandwidth": limits(3 * MBIT, 7 * MBIT, burst=300_000)})
        rc, out = in_host(plugin_dir, host, "bandwidth", "ADD", conf, ns, f"r{i}")
        assert rc == 0, out
        veth, ifb = host_veth(res), out["interfaces"][-1]["name"]
        shaped = [(q["kind"], q.get("options")) for q in qdiscs(host, veth) + qdiscs(host, ifb)
                  if q["kind"] in ("tbf", "ingress")]
        seen.append((ifb, shaped))
        rc, out = in_host(plugin_dir, host, "bandwidth", "DEL", conf, ns, f"r{i}")
        assert rc == 0, out
    assert seen[0][1] == seen[1][1]
    assert seen[0][0] != seen[1][0] and seen[0][0][:3] == seen[1][0][:3] == "bwp"


# --- measured rates ---------------------------------------------------------------
def iperf(host, server_ip, client_ns, reverse=False):
    """bits/s received in a 3-second TCP run from ``client_ns`` to the
    server in ``host`` (``reverse``: from the server to the client)."""
    port = str(random.randint(20000, 60000))
    server = subprocess.Popen(["ip", "netns", "exec", host, "iperf3", "-s", "-1", "-B", server_ip, "-p", port],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            listening = run("ip", "netns", "exec", host, "ss", "-Htln", f"sport = :{port}").stdout.strip()
            if listening:
                break
            time.sleep(0.1)
        cmd = ["ip", "netns", "exec", client_ns, "iperf3", "-c", server_ip, "-p", port, "-t", "3", "-J"]
        out = subprocess.run(cmd + (["-R"] if reverse else []), capture_output=True, text=True, timeout=30)
        data = json.loads(out.stdout)
        assert "error" not in data, data["error"]
        return data["end"]["sum_received"]["bits_per_second"]
    finally:
        server.kill()
        server.wait()


@pytest.mark.skipif(not shutil.which("iperf3"), reason="iperf3 is not installed (tools/apt-packages.txt)")
def test_measured_rates(bin_dir, host, bnet, pod):
    (shaped, rs), (free, _) = pod("shaped"), pod("free")
    rate = 10 * MBIT
    conf = bandwidth(bnet, rs, runtimeConfig={"bandwidth": limits(rate, rate)})
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", conf, shaped, "shaped")
    assert rc == 0, out
    gw = rs["ips"][0]["gateway"]
    ingress = iperf(host, gw, shaped, reverse=True)   # toward the container
    egress = iperf(host, gw, shaped)                  # from the container
    free_in = iperf(host, gw, free, reverse=True)
    free_out = iperf(host, gw, free)
    print(f"shaped ingress {ingress / MBIT:.1f} egress {egress / MBIT:.1f}; "
          f"unshaped ingress {free_in / MBIT:.1f} egress {free_out / MBIT:.1f} Mbit/s")
    assert 0.7 * rate <= ingress <= 1.15 * rate
    assert 0.7 * rate <= egress <= 1.15 * rate
    assert free_in > 5 * rate and free_out > 5 * rate
    rc, err = in_host(bin_dir, host, "bandwidth", "DEL", conf, shaped, "shaped")
    assert rc == 0, err
    assert iperf(host, gw, shaped) > 5 * rate  # unshaped again after DEL


def test_a_failed_add_rolls_back_and_leaves_foreign_devices_alone(bin_dir, host, bnet, pod, state_dirs):
    ns, res = pod()
    veth = host_veth(res)
    from cni_plugins.bandwidth import ifb_name
    taken = ifb_name(bnet["name"], "c1")
    run("ip", "-n", host, "link", "add", taken, "type", "ifb")  # someone else's device of that name
    rc, out = in_host(bin_dir, host, "bandwidth", "ADD", bandwidth(bnet, res, **limits(MBIT, MBIT)), ns)
    assert rc == 1 and out["code"] == 102, out
    assert taken in links(host)
    assert tbf(host, veth) == [] and not [q for q in qdiscs(host, veth) if q["kind"] == "ingress"]
    records = state_dirs["state"] / "bandwidth" / bnet["name"]
    assert not records.exists() or not os.listdir(records)
