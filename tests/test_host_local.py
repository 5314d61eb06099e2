"""host-local IPAM, run as installed executables against real files, and side
by side with the reference Go plugin on one data directory."""
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import REFERENCE_BIN, exec_plugin

NETNS = "/var/run/netns/unused"  # host-local never enters the netns
REFERENCE = os.path.join(REFERENCE_BIN, "host-local")


@pytest.fixture
def hl_bin(bin_dir):
    return bin_dir


def conf(data_dir, version="1.0.0", name="hlnet", **ipam):
    if "ranges" not in ipam:
        ipam.setdefault("subnet", "10.1.0.0/24")
    return {
        "cniVersion": version,
        "name": name,
        "type": "host-local",
        "ipam": {"type": "host-local", "dataDir": str(data_dir), **ipam},
    }


def add(hl_bin, config, cid="c1", ifname="eth0", **kw):
    return exec_plugin(hl_bin, "host-local", "ADD", config, netns=NETNS,
                       container_id=cid, ifname=ifname, **kw)


def delete(hl_bin, config, cid="c1", ifname="eth0"):
    return exec_plugin(hl_bin, "host-local", "DEL", config, container_id=cid, ifname=ifname)


def check(hl_bin, config, cid="c1", ifname="eth0"):
    return exec_plugin(hl_bin, "host-local", "CHECK", config, netns=NETNS,
                       container_id=cid, ifname=ifname)


def netdir(tmp_path, name="hlnet"):
    return tmp_path / name


def reservations(tmp_path, name="hlnet"):
    d = netdir(tmp_path, name)
    if not d.exists():
        return {}
    return {
        f.name: f.read_bytes().decode()
        for f in d.iterdir()
        if f.name not in ("lock",) and not f.name.startswith("last_reserved_ip.")
    }


def addresses(result):
    return [ip["address"] for ip in result["ips"]]


@pytest.mark.parametrize("version", ["0.3.1", "0.4.0", "1.0.0", "1.1.0"])
def test_allocate_release_cycle(hl_bin, tmp_path, version):
    config = conf(tmp_path, version, routes=[{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}])
    rc, out = add(hl_bin, config)
    assert rc == 0, out
    assert out["cniVersion"] == version
    expected_ip = {"address": "10.1.0.2/24", "gateway": "10.1.0.1"}
    if version.startswith("0."):
        expected_ip["version"] = "4"
    assert out["ips"] == [expected_ip]
    assert "interface" not in out["ips"][0]
    assert out["routes"] == [{"dst": "0.0.0.0/0"}, {"dst": "192.168.0.0/16", "gw": "10.1.0.254"}]
    assert out["dns"] == {}
    assert reservations(tmp_path) == {"10.1.0.2": "c1\r\neth0"}
    assert (netdir(tmp_path) / "last_reserved_ip.0").read_text() == "10.1.0.2"
    assert (netdir(tmp_path) / "lock").exists()

    if version != "0.3.1":
        assert check(hl_bin, config) == (0, None)
    assert delete(hl_bin, config) == (0, None)
    assert reservations(tmp_path) == {}
    if version != "0.3.1":
        rc, out = check(hl_bin, config)
        assert rc != 0 and out["code"] == 104
    # Round-robin: the next container gets the next address, not the freed one.
    rc, out = add(hl_bin, config, cid="c2")
    assert rc == 0 and addresses(out) == ["10.1.0.3/24"]
    assert delete(hl_bin, config, cid="c2") == (0, None)


def test_dual_stack_file_layout(hl_bin, tmp_path):
    config = conf(tmp_path, ranges=[
        [{"subnet": "10.2.0.0/16", "rangeStart": "10.2.3.10", "rangeEnd": "10.2.3.20", "gateway": "10.2.0.1"}],
        [{"subnet": "fd00:0:0:7::/64"}],
    ])
    rc, out = add(hl_bin, config, cid="dual", ifname="net1")
    assert rc == 0, out
    assert out["ips"] == [
        {"address": "10.2.3.10/16", "gateway": "10.2.0.1"},
        {"address": "fd00:0:0:7::2/64", "gateway": "fd00:0:0:7::1"},
    ]
    d = netdir(tmp_path)
    assert sorted(os.listdir(d)) == sorted(
        ["10.2.3.10", "fd00:0:0:7::2", "last_reserved_ip.0", "last_reserved_ip.1", "lock"])
    assert (d / "10.2.3.10").read_bytes() == b"dual\r\nnet1"
    assert (d / "fd00:0:0:7::2").read_bytes() == b"dual\r\nnet1"
    assert (d / "last_reserved_ip.0").read_bytes() == b"10.2.3.10"
    assert (d / "last_reserved_ip.1").read_bytes() == b"fd00:0:0:7::2"
    assert delete(hl_bin, config, cid="dual", ifname="net1") == (0, None)
    assert reservations(tmp_path) == {}


def test_round_robin_across_ranges_and_wrap(hl_bin, tmp_path):
    config = conf(tmp_path, ranges=[[
        {"subnet": "10.3.0.0/24", "rangeStart": "10.3.0.10", "rangeEnd": "10.3.0.11"},
        {"subnet": "10.4.0.0/24", "rangeStart": "10.4.0.1", "rangeEnd": "10.4.0.2"},
    ]])
    got = []
    for i in range(3):
        rc, out = add(hl_bin, config, cid=f"rr{i}")
        assert rc == 0, out
        got.append(out["ips"][0])
    # The second range's gateway (10.4.0.1, the default) is skipped.
    assert got == [
        {"address": "10.3.0.10/24", "gateway": "10.3.0.1"},
        {"address": "10.3.0.11/24", "gateway": "10.3.0.1"},
        {"address": "10.4.0.2/24", "gateway": "10.4.0.1"},
    ]
    assert delete(hl_bin, config, cid="rr0") == (0, None)
    rc, out = add(hl_bin, config, cid="rr3")  # wraps to the first range
    assert rc == 0 and addresses(out) == ["10.3.0.10/24"]


def test_requested_ips(hl_bin, tmp_path):
    config = conf(tmp_path)
    rc, out = add(hl_bin, config, cid="a", cni_args="IgnoreUnknown=1;IP=10.1.0.50")
    assert rc == 0 and addresses(out) == ["10.1.0.50/24"]
    rt = dict(config, runtimeConfig={"ips": ["10.1.0.60/24"]})
    rc, out = add(hl_bin, rt, cid="b")
    assert rc == 0 and addresses(out) == ["10.1.0.60/24"]
    args = dict(config, args={"cni": {"ips": ["10.1.0.70"]}})
    rc, out = add(hl_bin, args, cid="c")
    assert rc == 0 and addresses(out) == ["10.1.0.70/24"]
    assert reservations(tmp_path) == {"10.1.0.50": "a\r\neth0", "10.1.0.60": "b\r\neth0",
                                      "10.1.0.70": "c\r\neth0"}
    # Taken, outside every range, or the gateway: 101, nothing reserved.
    for cid, ip in (("d", "10.1.0.50"), ("e", "10.9.0.5"), ("f", "10.1.0.1")):
        rc, out = add(hl_bin, config, cid=cid, cni_args=f"IP={ip}")
        assert rc != 0 and out["code"] == 101, out
    assert len(reservations(tmp_path)) == 3


def test_requested_ip_taken_releases_other_range_sets(hl_bin, tmp_path):
    config = conf(tmp_path, ranges=[[{"subnet": "10.5.0.0/24"}], [{"subnet": "fd00:5::/64"}]])
    rc, out = add(hl_bin, config, cid="owner", cni_args="IP=fd00:5::9")
    assert rc == 0 and addresses(out) == ["10.5.0.2/24", "fd00:5::9/64"]
    before = {f: (netdir(tmp_path) / f).read_bytes() for f in os.listdir(netdir(tmp_path))}
    # Comma-separated: the IPv4 one is free and reserved first, then rolled back.
    rc, out = add(hl_bin, config, cid="loser", cni_args="IP=10.5.0.7,fd00:5::9")
    assert rc != 0 and out["code"] == 101
    assert "fd00:5::9" in out["msg"]
    after = {f: (netdir(tmp_path) / f).read_bytes() for f in os.listdir(netdir(tmp_path))}
    assert after == before  # no reservation, last_reserved_ip untouched


def test_exhaustion(hl_bin, tmp_path):
    config = conf(tmp_path, ranges=[[{"subnet": "10.6.0.0/24", "rangeStart": "10.6.0.2", "rangeEnd": "10.6.0.3"}]])
    for cid in ("x1", "x2"):
        rc, out = add(hl_bin, config, cid=cid)
        assert rc == 0, out
    rc, out = add(hl_bin, config, cid="x3")
    assert rc != 0 and out["code"] == 100
    assert "10.6.0.2-10.6.0.3" in out["msg"]
    assert sorted(os.listdir(netdir(tmp_path))) == ["10.6.0.2", "10.6.0.3", "last_reserved_ip.0", "lock"]
    # A later range set full: the earlier set's reservation is undone.
    dual = conf(tmp_path, ranges=[[{"subnet": "10.7.0.0/24"}],
                                  [{"subnet": "10.6.0.0/24", "rangeStart": "10.6.0.2", "rangeEnd": "10.6.0.3"}]])
    rc, out = add(hl_bin, dual, cid="x4")
    assert rc != 0 and out["code"] == 100 and "range 1" in out["msg"]
    assert sorted(os.listdir(netdir(tmp_path))) == ["10.6.0.2", "10.6.0.3", "last_reserved_ip.0", "lock"]


def test_duplicate_add_refused_like_reference(hl_bin, tmp_path):
    config = conf(tmp_path)
    assert add(hl_bin, config)[0] == 0
    rc, out = add(hl_bin, config)
    assert rc != 0 and "duplicate allocation is not allowed" in out["msg"]
    rc, out = add(hl_bin, config, ifname="eth1")  # another interface is fine
    assert rc == 0 and addresses(out) == ["10.1.0.3/24"]
    assert reservations(tmp_path) == {"10.1.0.2": "c1\r\neth0", "10.1.0.3": "c1\r\neth1"}


def test_del_idempotent_and_unknown(hl_bin, tmp_path):
    config = conf(tmp_path)
    assert delete(hl_bin, config, cid="never") == (0, None)
    assert not netdir(tmp_path).exists()
    assert add(hl_bin, config, cid="k")[0] == 0
    assert add(hl_bin, config, cid="other")[0] == 0
    assert delete(hl_bin, config, cid="k") == (0, None)
    assert delete(hl_bin, config, cid="k") == (0, None)
    assert reservations(tmp_path) == {"10.1.0.3": "other\r\neth0"}


def test_del_old_format_file(hl_bin, tmp_path):
    config = conf(tmp_path)
    d = netdir(tmp_path)
    d.mkdir()
    (d / "10.1.0.9").write_bytes(b"oldid\n")
    assert check(hl_bin, config, cid="oldid") == (0, None)
    assert delete(hl_bin, config, cid="oldid") == (0, None)
    assert reservations(tmp_path) == {}


def test_concurrent_adds(hl_bin, tmp_path):
    config = conf(tmp_path, subnet="10.8.0.0/16")
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: add(hl_bin, config, cid=f"par{i}"), range(50)))
    assert all(rc == 0 for rc, _ in results), results
    got = [addresses(out)[0] for _, out in results]
    assert len(set(got)) == 50
    files = reservations(tmp_path)
    assert len(files) == 50
    assert sorted(files.values()) == sorted(f"par{i}\r\neth0" for i in range(50))


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="reference host-local not installed")
def test_side_by_side_with_reference(hl_bin, tmp_path):
    config = conf(tmp_path, ranges=[[{"subnet": "10.9.0.0/24"}], [{"subnet": "fd00:9::/120"}]])
    owners = {}
    for i in range(12):
        plugin_dir = REFERENCE_BIN if i % 2 else hl_bin
        rc, out = exec_plugin(plugin_dir, "host-local", "ADD", config, netns=NETNS, container_id=f"sbs{i}")
        assert rc == 0, (plugin_dir, out)
        for addr in addresses(out):
            assert addr not in owners, f"{addr} handed out twice"
            owners[addr] = plugin_dir
    assert len(owners) == 24
    # Each round-robins from where the other left off: the addresses are consecutive.
    assert {a for a in owners if "." in a} == {f"10.9.0.{n}/24" for n in range(2, 14)}
    assert (netdir(tmp_path) / "last_reserved_ip.0").read_text() == "10.9.0.13"
    assert (netdir(tmp_path) / "last_reserved_ip.1").read_text() == "fd00:9::d"
    # Each one's CHECK sees the other's reservations, and DEL releases them.
    for i in range(12):
        other = hl_bin if i % 2 else REFERENCE_BIN
        assert exec_plugin(other, "host-local", "CHECK", config, netns=NETNS, container_id=f"sbs{i}")[0] == 0
        assert exec_plugin(other, "host-local", "DEL", config, container_id=f"sbs{i}") == (0, None)
        assert f"sbs{i}\r\neth0" not in reservations(tmp_path).values()
    assert reservations(tmp_path) == {}


@pytest.mark.skipif(not os.path.exists(REFERENCE), reason="reference host-local not installed")
def test_concurrent_with_reference(hl_bin, tmp_path):
    config = conf(tmp_path, subnet="10.10.0.0/24")

    def one(i):
        plugin_dir = REFERENCE_BIN if i % 2 else hl_bin
        return exec_plugin(plugin_dir, "host-local", "ADD", config, netns=NETNS, container_id=f"mix{i}")

    with ThreadPoolExecutor(40) as pool:
        results = list(pool.map(one, range(40)))
    assert all(rc == 0 for rc, _ in results), results
    assert len({addresses(out)[0] for _, out in results}) == 40
    assert len(reservations(tmp_path)) == 40


def test_gc(hl_bin, tmp_path):
    config = conf(tmp_path, "1.1.0")
    for cid, ifname in (("g1", "eth0"), ("g2", "eth0"), ("g3", "eth0"), ("g3", "eth1")):
        assert add(hl_bin, config, cid=cid, ifname=ifname)[0] == 0
    d = netdir(tmp_path)
    (d / "10.1.0.100").write_bytes(b"g1")      # old id-only format, valid id
    (d / "10.1.0.101").write_bytes(b"gone")    # old id-only format, stale
    gc_config = dict(config, **{"cni.dev/valid-attachments": [
        {"containerID": "g1", "ifname": "eth0"}, {"containerID": "g3", "ifname": "eth0"}]})
    rc, out = exec_plugin(hl_bin, "host-local", "GC", gc_config)
    assert rc == 0, out
    assert reservations(tmp_path) == {"10.1.0.2": "g1\r\neth0", "10.1.0.4": "g3\r\neth0", "10.1.0.100": "g1"}
    assert (d / "lock").exists() and (d / "last_reserved_ip.0").exists()
    # An empty list releases everything.
    rc, out = exec_plugin(hl_bin, "host-local", "GC", dict(config, **{"cni.dev/valid-attachments": []}))
    assert rc == 0, out
    assert reservations(tmp_path) == {}
    # Without the key GC refuses rather than release everything.
    rc, out = exec_plugin(hl_bin, "host-local", "GC", config)
    assert rc != 0 and out["code"] == 7


def test_gc_network_in_process(tmp_path):
    from ipam.host_local import gc_network

    d = tmp_path / "net"
    d.mkdir()
    (d / "10.0.0.2").write_bytes(b"keep\r\neth0")
    (d / "10.0.0.3").write_bytes(b"drop\r\neth0")
    (d / "fd00::2").write_bytes(b"keep\r\neth1")
    (d / "last_reserved_ip.0").write_bytes(b"10.0.0.3")
    assert sorted(gc_network(str(tmp_path), "net", {("keep", "eth0")})) == ["10.0.0.3", "fd00::2"]
    assert sorted(os.listdir(d)) == ["10.0.0.2", "last_reserved_ip.0", "lock"]


def test_status(hl_bin, tmp_path):
    assert exec_plugin(hl_bin, "host-local", "STATUS", conf(tmp_path, "1.1.0")) == (0, None)


@pytest.mark.parametrize("ipam", [
    {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.128/25"}]]},      # overlap in a set
    {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]},      # overlapping sets
    {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.2.0.5"}]]},         # start outside
    {"ranges": [[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.1.5"}]]},           # end outside
    {"ranges": [[{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.9", "rangeEnd": "10.1.0.5"}]]},
    {"subnet": "10.1.0.0/31"},
    {"subnet": "10.1.0.1/32"},
    {"subnet": "10.1.0.5/24"},                                                  # host bits
    {"ranges": [[{"subnet": "10.1.0.0/24"}, {"subnet": "fd00::/64"}]]},          # mixed families
    {"ranges": []},
    {"ranges": [[]]},
    {"subnet": "not-a-subnet"},
    {"subnet": "10.1.0.0/24", "routes": [{"dst": "nonsense"}]},
])
def test_invalid_config(hl_bin, tmp_path, ipam):
    config = conf(tmp_path, **ipam)
    rc, out = add(hl_bin, config)
    assert rc != 0 and out["code"] == 7, out
    assert not netdir(tmp_path).exists()


def test_missing_ipam_section(hl_bin, tmp_path):
    rc, out = add(hl_bin, {"cniVersion": "1.0.0", "name": "x", "type": "host-local"})
    assert rc != 0 and out["code"] == 7


def test_resolv_conf(hl_bin, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text(
        "# comment\n; other comment\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
        "domain example.org\nsearch a.example b.example\noptions ndots:2 edns0\nbogus\n"
    )
    rc, out = add(hl_bin, conf(tmp_path, resolvConf=str(resolv)))
    assert rc == 0, out
    assert out["dns"] == {
        "nameservers": ["192.0.2.53", "2001:db8::53"],
        "domain": "example.org",
        "search": ["a.example", "b.example"],
        "options": ["ndots:2", "edns0"],
    }
    rc, out = add(hl_bin, conf(tmp_path, resolvConf=str(tmp_path / "missing")), cid="c2")
    assert rc != 0 and out["code"] == 5
    assert reservations(tmp_path) == {"10.1.0.2": "c1\r\neth0"}


def test_del_scans_without_the_lock(hl_bin, tmp_path):
    """DEL reads reservations before taking the lock: a DEL with nothing to
    release never waits for it; one with something to release waits."""
    import fcntl
    import threading

    config = conf(tmp_path)
    assert add(hl_bin, config, cid="held")[0] == 0
    fd = os.open(netdir(tmp_path) / "lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        assert delete(hl_bin, config, cid="unrelated") == (0, None)  # would hang otherwise
        done = []
        t = threading.Thread(target=lambda: done.append(delete(hl_bin, config, cid="held")))
        t.start()
        t.join(1.0)
        assert not done and "10.1.0.2" in reservations(tmp_path)
    finally:
        os.close(fd)
    t.join(30)
    assert done == [(0, None)]
    assert reservations(tmp_path) == {}
