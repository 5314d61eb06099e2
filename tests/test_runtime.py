"""The runtime side: libcni.py (chains, cache, prevResult, CHECK/DEL/GC/STATUS),
the cnitool-compatible CLI, and labs.

Everything runs against both plugin sets: Debian's reference Go plugins in
/usr/lib/cni and ours (installed into a tmp bin dir, with the reference
portmap behind them in CNI_PATH).  The chains run inside a private "host"
netns (CNIConfig(exec_netns=...), or the CLI under `ip netns exec`), so no
bridge, address or iptables rule lands in the root netns; only addresses in
namespaces the tests made are ever pinged.
"""
import base64
import hashlib
import json
import os
import random
import subprocess
import textwrap

import pytest

from conftest import PYCNI, REFERENCE_BIN, run, unique
from pycni import lab as labmod
from pycni import libcni



def random_subnet() -> str:
    return f"10.{random.randint(240, 254)}.{random.randint(0, 255)}.0/24"


@pytest.fixture(params=["reference", "pycni"])
def cni_path(request):
    """Plugin search path: the reference plugins, or ours first (portmap
    only exists among the reference ones)."""
    if request.param == "reference":
        return [REFERENCE_BIN]
    return [request.getfixturevalue("bin_dir"), REFERENCE_BIN]


@pytest.fixture
def host(make_netns):
    """A netns standing for the node the plugins run in."""
    return make_netns("ph")


def bridge_conflist(name, bridge, subnet, data_dir, version="1.0.0", portmap=True, subnet6=None):
    ranges, routes = [[{"subnet": subnet}]], [{"dst": "0.0.0.0/0"}]
    if subnet6:
        ranges.append([{"subnet": subnet6}])
        routes.append({"dst": "::/0"})
    plugins = [{
        "type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": False,
        "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": ranges, "routes": routes},
    }]
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}, "snat": True})
    return {"cniVersion": version, "name": name, "plugins": plugins}


def write_conf(directory, fname, conf) -> bytes:
    os.makedirs(directory, exist_ok=True)
    raw = json.dumps(conf, indent=1).encode()
    with open(os.path.join(directory, fname), "wb") as f:
        f.write(raw)
    return raw


def addrs_in(netns, ifname="eth0"):
    out = run("ip", "-n", netns, "-j", "addr", "show", "dev", ifname, check=False)
    if out.returncode != 0:
        return None
    return [a["local"] for i in json.loads(out.stdout) for a in i.get("addr_info", []) if a["family"] == "inet"]


# ---------------------------------------------------------------- config loading

def test_load_conflist_conf_and_json(tmp_path):
    write_conf(tmp_path, "20-b.conflist", {"cniVersion": "1.0.0", "name": "b", "plugins": [{"type": "x"}]})
    write_conf(tmp_path, "10-a.conf", {"cniVersion": "0.4.0", "name": "a", "type": "bridge"})
    write_conf(tmp_path, "30-c.json", {"cniVersion": "1.0.0", "name": "c", "plugins": [{"type": "y"}]})
    write_conf(tmp_path, "05-a.conflist", {"cniVersion": "1.0.0", "name": "a", "plugins": [{"type": "first"}]})
    (tmp_path / "ignored.txt").write_text("{}")
    a = libcni.load_conflist(str(tmp_path), "a")
    assert a.plugins[0]["type"] == "first"  # sorted: 05-a.conflist wins over 10-a.conf
    assert [c.name for c in libcni.load_all(str(tmp_path))] == ["a", "a", "b", "c"]
    os.unlink(tmp_path / "05-a.conflist")
    a = libcni.load_conflist(str(tmp_path), "a")
    assert (a.name, a.cni_version, len(a.plugins)) == ("a", "0.4.0", 1)
    assert json.loads(a.raw)["plugins"][0]["type"] == "bridge"
    assert libcni.load_conflist(str(tmp_path), "c").plugins[0]["type"] == "y"
    with pytest.raises(libcni.ConfigNotFound):
        libcni.load_conflist(str(tmp_path), "nope")
    write_conf(tmp_path, "40-bad.conflist", {"cniVersion": "1.0.0", "name": "bad", "plugins": []})
    with pytest.raises(libcni.LibCNIError, match="no plugins"):
        libcni.load_conflist(str(tmp_path), "bad")


# ---------------------------------------------------------------- fake plugin

FAKE = textwrap.dedent("""\
    #!/usr/bin/python3 -S
    import json, os, sys
    stdin = sys.stdin.read()
    conf = json.loads(stdin) if stdin.strip() else {}
    cmd = os.environ.get("CNI_COMMAND")
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    with open(conf.get("log", "/dev/null") if conf else "/dev/null", "a") as f:
        f.write(json.dumps({"plugin": os.path.basename(sys.argv[0]), "conf": conf, "env": env}) + "\\n")
    if cmd == "VERSION":
        print(json.dumps({"cniVersion": "1.1.0", "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"]}))
        sys.exit(0)
    fail = conf.get("fail", {}).get(cmd)
    if fail:
        print(json.dumps({"cniVersion": conf["cniVersion"], "code": fail[0], "msg": fail[1], "details": "d"}))
        sys.exit(1)
    if cmd == "ADD":
        prev = conf.get("prevResult") or {"cniVersion": conf["cniVersion"], "interfaces": [], "ips": []}
        prev["interfaces"] = prev.get("interfaces", []) + [{"name": conf["add"]}]
        if "ip" in conf:
            prev["ips"] = prev.get("ips", []) + [{"address": conf["ip"]}]
        if conf.get("noversion"):
            prev.pop("cniVersion", None)
        print(json.dumps(prev))
""")


@pytest.fixture
def fake_bin(tmp_path):
    d = tmp_path / "fakebin"
    d.mkdir()
    for name in ("fake-a", "fake-b"):
        p = d / name
        p.write_text(FAKE)
        p.chmod(0o755)
    return d


def fake_list(tmp_path, version="1.0.0", **extra_b):
    log = str(tmp_path / "calls.log")
    conf = {"cniVersion": version, "name": "fakenet", "plugins": [
        {"type": "fake-a", "add": "if-a", "ip": "10.250.9.2/24", "log": log},
        dict({"type": "fake-b", "add": "if-b", "log": log, "noversion": True,
              "capabilities": {"portMappings": True, "bandwidth": False}}, **extra_b),
    ]}
    raw = json.dumps(conf).encode()
    return libcni.conflist_from_bytes(raw), log


def read_log(path):
    try:
        with open(path) as f:
            calls = [json.loads(line) for line in f]
    except FileNotFoundError:
        return []
    os.unlink(path)
    return calls


def test_chain_injection_prevresult_and_cache(tmp_path, fake_bin, monkeypatch):
    monkeypatch.setenv("SOME_RUNTIME_VAR", "kept")
    netconf, log = fake_list(tmp_path)
    cache = tmp_path / "cache"
    cni = libcni.CNIConfig([str(tmp_path / "nothing-here"), str(fake_bin)], str(cache))
    rt = libcni.RuntimeConf("ctr1", "/run/netns/whatever", "eth0", [("K8S_POD_NAME", "p"), ("X", "1")],
                            {"portMappings": [{"hostPort": 1}], "bandwidth": {"a": 1}, "other": 3})
    result = cni.add_network_list(netconf, rt)
    assert result["cniVersion"] == "1.0.0"  # filled in for a result without one
    assert [i["name"] for i in result["interfaces"]] == ["if-a", "if-b"]

    a, b = read_log(log)
    assert a["plugin"] == "fake-a" and b["plugin"] == "fake-b"
    for call in (a, b):
        assert call["conf"]["name"] == "fakenet" and call["conf"]["cniVersion"] == "1.0.0"
        assert call["env"]["CNI_COMMAND"] == "ADD"
        assert call["env"]["CNI_CONTAINERID"] == "ctr1"
        assert call["env"]["CNI_NETNS"] == "/run/netns/whatever"
        assert call["env"]["CNI_IFNAME"] == "eth0"
        assert call["env"]["CNI_ARGS"] == "K8S_POD_NAME=p;X=1"
        assert call["env"]["CNI_PATH"] == f"{tmp_path / 'nothing-here'}:{fake_bin}"
    assert "prevResult" not in a["conf"] and "runtimeConfig" not in a["conf"]
    assert b["conf"]["prevResult"]["interfaces"] == [{"name": "if-a"}]
    assert b["conf"]["runtimeConfig"] == {"portMappings": [{"hostPort": 1}]}  # only enabled capabilities

    path = cache / "results" / "fakenet-ctr1-eth0"
    entry = json.loads(path.read_text())
    assert entry["kind"] == "cniCacheV1"
    assert (entry["containerId"], entry["ifName"], entry["networkName"]) == ("ctr1", "eth0", "fakenet")
    assert base64.b64decode(entry["config"]) == netconf.raw
    assert entry["cniArgs"] == [["K8S_POD_NAME", "p"], ["X", "1"]]
    assert entry["capabilityArgs"] == rt.capability_args
    assert entry["result"] == result
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    raw, cached_rt = cni.get_cached_config("fakenet", libcni.RuntimeConf("ctr1", ifname="eth0"))
    assert raw == netconf.raw and cached_rt.args == [("K8S_POD_NAME", "p"), ("X", "1")]

    cni.check_network_list(netconf, rt)
    calls = read_log(log)
    assert [c["plugin"] for c in calls] == ["fake-a", "fake-b"]
    assert all(c["env"]["CNI_COMMAND"] == "CHECK" and c["conf"]["prevResult"] == result for c in calls)

    cni.del_network_list(netconf, rt)
    calls = read_log(log)
    assert [c["plugin"] for c in calls] == ["fake-b", "fake-a"]  # reverse order
    assert all(c["env"]["CNI_COMMAND"] == "DEL" and c["conf"]["prevResult"] == result for c in calls)
    assert not path.exists()
    # DEL again (no cache): no prevResult, still succeeds
    cni.del_network_list(netconf, rt)
    assert all("prevResult" not in c["conf"] for c in read_log(log))


def test_old_versions_no_prevresult_on_del_and_no_check(tmp_path, fake_bin):
    netconf, log = fake_list(tmp_path, version="0.3.1")
    cni = libcni.CNIConfig([str(fake_bin)], str(tmp_path / "cache"))
    rt = libcni.RuntimeConf("ctr2", "/x", "net1")
    result = cni.add_network_list(netconf, rt)
    assert result["cniVersion"] == "0.3.1"
    read_log(log)
    with pytest.raises(libcni.LibCNIError, match="does not support the CHECK"):
        cni.check_network_list(netconf, rt)
    cni.del_network_list(netconf, rt)
    calls = read_log(log)
    assert len(calls) == 2 and all("prevResult" not in c["conf"] for c in calls)


def test_plugin_error_propagates(tmp_path, fake_bin):
    netconf, log = fake_list(tmp_path, fail={"ADD": [7, "bad config"]})
    cni = libcni.CNIConfig([str(fake_bin)], str(tmp_path / "cache"))
    rt = libcni.RuntimeConf("ctr3", "/x", "eth0")
    with pytest.raises(libcni.PluginError) as info:
        cni.add_network_list(netconf, rt)
    e = info.value
    assert (e.code, e.msg, e.details, e.plugin, e.command) == (7, "bad config", "d", "fake-b", "ADD")
    assert 'plugin type=\'fake-b\' failed (add): bad config' in str(e)
    assert not (tmp_path / "cache" / "results").exists() or not os.listdir(tmp_path / "cache" / "results")
    with pytest.raises(libcni.LibCNIError, match="failed to find plugin"):
        libcni.CNIConfig([str(tmp_path)], str(tmp_path / "cache")).add_network_list(netconf, rt)
    with pytest.raises(libcni.LibCNIError, match="containerID"):
        cni.add_network_list(netconf, libcni.RuntimeConf("bad id!", "/x", "eth0"))


def test_gc_status_version(tmp_path, fake_bin):
    netconf, log = fake_list(tmp_path, version="1.1.0")
    cni = libcni.CNIConfig([str(fake_bin)], str(tmp_path / "cache"))
    for cid in ("keep1", "keep2", "gone"):
        cni.add_network_list(netconf, libcni.RuntimeConf(cid, f"/run/netns/{cid}", "eth0"))
    read_log(log)
    assert cni.gc_network_list(netconf, exclude=[{"containerID": "gone"}]) == []
    calls = read_log(log)
    dels = [c for c in calls if c["env"]["CNI_COMMAND"] == "DEL"]
    gcs = [c for c in calls if c["env"]["CNI_COMMAND"] == "GC"]
    assert {c["env"]["CNI_CONTAINERID"] for c in dels} == {"gone"}
    assert dels[0]["env"]["CNI_NETNS"] == "/run/netns/gone"
    assert [c["plugin"] for c in gcs] == ["fake-a", "fake-b"]
    for c in gcs:
        assert sorted(c["conf"]["cni.dev/valid-attachments"], key=lambda a: a["containerID"]) == [
            {"containerID": "keep1", "ifname": "eth0"}, {"containerID": "keep2", "ifname": "eth0"}]
        assert set(c["env"]) == {"CNI_COMMAND", "CNI_PATH"}
    assert sorted(e["containerId"] for e in cni.cached_attachments("fakenet")) == ["keep1", "keep2"]

    cni.get_status_network_list(netconf)
    assert [c["env"]["CNI_COMMAND"] for c in read_log(log)] == ["STATUS", "STATUS"]
    bad, _ = fake_list(tmp_path, version="1.1.0", fail={"STATUS": [50, "not ready"]})
    with pytest.raises(libcni.PluginError) as info:
        cni.get_status_network_list(bad)
    assert info.value.code == 50

    info = cni.get_version_info("fake-a")
    assert "1.1.0" in info["supportedVersions"]
    assert cni.validate_network_list(netconf) == ["portMappings"]
    ref = libcni.CNIConfig([REFERENCE_BIN], str(tmp_path / "cache"))
    assert "1.0.0" in ref.get_version_info("bridge")["supportedVersions"]


# ---------------------------------------------------------------- real plugins

@pytest.mark.parametrize("cni_version", ["0.4.0", "1.0.0"])
def test_real_chain_add_check_del(cni_path, cni_version, host, make_netns, tmp_path, state_dirs):
    bridge = unique("pbr")
    subnet = random_subnet()
    netconf = libcni.conflist_from_bytes(json.dumps(
        bridge_conflist("realnet", bridge, subnet, state_dirs["data"], cni_version)).encode())
    cni = libcni.CNIConfig(cni_path, str(tmp_path / "cache"), exec_netns=f"/run/netns/{host}")
    pod = make_netns("pp")
    rt = libcni.RuntimeConf("ctr-" + pod, f"/run/netns/{pod}", "eth0", [("IgnoreUnknown", "1")],
                            {"portMappings": [{"hostPort": 18080, "containerPort": 80, "protocol": "tcp"}]})
    result = cni.add_network_list(netconf, rt)
    assert result["cniVersion"] == cni_version
    addr = result["ips"][0]["address"].split("/")[0]
    assert addrs_in(pod) == [addr]
    assert os.path.exists(f"{state_dirs['data']}/realnet/{addr}")
    # the bridge is in the host netns, not in ours
    assert run("ip", "-n", host, "link", "show", bridge, check=False).returncode == 0
    assert not os.path.exists(f"/sys/class/net/{bridge}")
    gw = result["ips"][0]["gateway"]
    assert run("ip", "netns", "exec", pod, "ping", "-c1", "-W2", gw, check=False).returncode == 0
    cache = tmp_path / "cache" / "results" / f"realnet-ctr-{pod}-eth0"
    assert json.loads(cache.read_text())["result"] == result

    try:
        cni.check_network_list(netconf, rt)
    except libcni.PluginError as e:
        # Debian's portmap (1.1.x) CHECK looks for IPv6 chains it never made
        assert e.plugin == "portmap" and "ipv6" in e.msg, e
        data = json.loads(netconf.raw)
        data["plugins"] = data["plugins"][:1]
        cni.check_network_list(libcni.conflist_from_bytes(json.dumps(data).encode()), rt)
    cni.del_network_list(netconf, rt)
    assert not cache.exists()
    assert addrs_in(pod) is None
    assert not os.path.exists(f"{state_dirs['data']}/realnet/{addr}")


def test_real_gc_deletes_stale_attachments(cni_path, host, make_netns, tmp_path, state_dirs):
    bridge = unique("pbr")
    netconf = libcni.conflist_from_bytes(json.dumps(
        bridge_conflist("gcnet", bridge, random_subnet(), state_dirs["data"], portmap=False)).encode())
    cni = libcni.CNIConfig(cni_path, str(tmp_path / "cache"), exec_netns=f"/run/netns/{host}")
    pods = [make_netns("pg") for _ in range(2)]
    ips = []
    for p in pods:
        r = cni.add_network_list(netconf, libcni.RuntimeConf(p, f"/run/netns/{p}", "eth0"))
        ips.append(r["ips"][0]["address"].split("/")[0])
    assert cni.gc_network_list(netconf, exclude=[{"containerID": pods[1], "ifname": "eth0"}]) == []
    assert addrs_in(pods[0]) == [ips[0]]
    assert addrs_in(pods[1]) is None
    assert os.path.exists(f"{state_dirs['data']}/gcnet/{ips[0]}")
    assert not os.path.exists(f"{state_dirs['data']}/gcnet/{ips[1]}")
    assert [e["containerId"] for e in cni.cached_attachments("gcnet")] == [pods[0]]
    # explicit valid list: nothing valid -> everything goes
    assert cni.gc_network_list(netconf, []) == []
    assert addrs_in(pods[0]) is None and cni.cached_attachments("gcnet") == []


# ---------------------------------------------------------------- CLI

def pycni(*args, netns=None, env=None, check=False):
    cmd = list(PYCNI) + list(args)
    if netns:
        cmd = ["ip", "netns", "exec", netns] + cmd
    full = dict(os.environ)
    full.update(env or {})
    full = {k: v for k, v in full.items() if v is not None}
    full["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return subprocess.run(cmd, capture_output=True, text=True, env=full, check=check, timeout=120)


def test_cli_help():
    out = pycni("--help")
    assert out.returncode == 0
    for word in ("add", "check", "del", "gc", "status", "install", "lab", "NETCONFPATH", "CAP_ARGS"):
        assert word in out.stdout
    assert pycni("lab", "--help").returncode == 0
    assert pycni("bogus").returncode != 0


def test_cli_cnitool_compatible(cni_path, host, make_netns, tmp_path, state_dirs):
    netd, cache = tmp_path / "net.d", tmp_path / "cache"
    bridge = unique("pbr")
    write_conf(netd, "10-cli.conflist", bridge_conflist("clinet", bridge, random_subnet(), state_dirs["data"]))
    write_conf(netd, "20-broken.conflist", {"cniVersion": "1.0.0", "name": "broken", "plugins": [
        {"type": "bridge", "bridge": bridge, "ipam": {"type": "host-local", "dataDir": str(state_dirs["data"]),
                                                       "ranges": [[{"subnet": "not-a-subnet"}]]}}]})
    env = {"NETCONFPATH": str(netd), "CNI_PATH": ":".join(cni_path), "CNI_CACHE_DIR": str(cache),
           "CAP_ARGS": json.dumps({"portMappings": [{"hostPort": 18081, "containerPort": 80, "protocol": "tcp"}]}),
           "CNI_ARGS": "IgnoreUnknown=1;K8S_POD_NAME=x"}
    pod = make_netns("pc")
    path = f"/run/netns/{pod}"
    out = pycni("add", "clinet", path, netns=host, env=env)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout)
    addr = result["ips"][0]["address"].split("/")[0]
    assert addrs_in(pod) == [addr]
    cid = "cnitool-" + hashlib.sha512(path.encode()).hexdigest()[:20]
    entry = json.loads((cache / "results" / f"clinet-{cid}-eth0").read_text())
    assert entry["containerId"] == cid and entry["cniArgs"] == [["IgnoreUnknown", "1"], ["K8S_POD_NAME", "x"]]
    assert entry["capabilityArgs"]["portMappings"][0]["hostPort"] == 18081

    out = pycni("check", "clinet", path, netns=host, env=env)
    if out.returncode != 0:  # Debian's portmap CHECK bug, see test_real_chain_add_check_del
        assert "type='portmap' failed (check)" in out.stderr and "ipv6" in json.loads(out.stdout)["msg"]
    assert pycni("status", "clinet", netns=host, env=env).returncode == 0
    assert "18081" in run("ip", "netns", "exec", host, "nft", "list", "ruleset").stdout
    # gc naming no attachment keeps this one (it is cached, hence valid)
    assert pycni("gc", "clinet", netns=host, env=env).returncode == 0
    assert addrs_in(pod) == [addr]
    # del without CAP_ARGS/CNI_ARGS: the cached ones are used (portmap removes its rules)
    out = pycni("del", "clinet", path, netns=host,
                env=dict(env, CAP_ARGS=None, CNI_ARGS=None))
    assert out.returncode == 0, out.stderr
    assert addrs_in(pod) is None
    assert "18081" not in run("ip", "netns", "exec", host, "nft", "list", "ruleset", check=False).stdout
    assert not (cache / "results" / f"clinet-{cid}-eth0").exists()

    # errors: unknown network, plugin failure (error JSON on stdout), bad CAP_ARGS
    out = pycni("add", "nosuchnet", path, netns=host, env=env)
    assert out.returncode == 1 and "nosuchnet" in out.stderr
    out = pycni("add", "broken", path, netns=host, env=env)
    assert out.returncode == 1 and out.stderr.startswith("pycni: ")
    err = json.loads(out.stdout)
    assert isinstance(err["code"], int) and err["code"] > 0 and err["msg"]
    pycni("del", "broken", path, netns=host, env=env)
    out = pycni("add", "clinet", path, netns=host, env=dict(env, CAP_ARGS="{nope"))
    assert out.returncode == 1 and "CAP_ARGS" in out.stderr


def test_cli_install(tmp_path):
    out = pycni("install", "--bin-dir", str(tmp_path / "bin"))
    assert out.returncode == 0, out.stderr
    for name in ("bridge", "loopback", "host-local"):
        assert os.access(tmp_path / "bin" / name, os.X_OK)


# ---------------------------------------------------------------- lab

def lab_leftovers(name):
    left = []
    if os.path.isdir("/run/netns"):
        left += [n for n in os.listdir("/run/netns") if n.startswith(f"pycni-{name}-")]
    if os.path.exists(os.path.join(labmod.lab_root(), name)):
        left.append("lab dir")
    for link in os.listdir("/sys/class/net"):
        if link == f"plb-{labmod._hash(name)}":
            left.append(link)
    return left


@pytest.fixture
def lab_file(tmp_path):
    """Factory: write a lab file with a unique lab name; the lab is torn
    down at teardown whatever happened."""
    names = []

    def make(body: str, name=None):
        name = name or unique("t")
        names.append(name)
        path = tmp_path / f"{name}.yaml"
        path.write_text(f"name: {name}\n" + textwrap.dedent(body))
        return name, str(path)

    yield make
    for name in names:
        pycni("lab", "down", name)
        assert lab_leftovers(name) == []


@pytest.fixture(params=["reference", "pycni"])
def lab_cni_args(request):
    return ["--cni-path", REFERENCE_BIN] if request.param == "reference" else []


def test_lab_up_status_exec_down(lab_file, lab_cni_args):
    s1, s2 = random_subnet(), random_subnet()
    u = random.randint(0, 255)
    name, path = lab_file(f"""\
        hosts:
          - name: node1
            underlay: 10.250.{u}.1/24
          - name: node2
            underlay: 10.250.{u}.2/24
        networks:
          - name: podnet
            subnet: {s1}
          - name: other
            subnet: {s2}
            mtu: 1400
        pods:
          - {{name: a, host: node1, network: podnet}}
          - {{name: b, namespace: web, host: node1, network: podnet}}
          - {{name: c, host: node2, network: other}}
    """)
    out = pycni("lab", "up", path, *lab_cni_args)
    assert out.returncode == 0, out.stderr + out.stdout
    out = pycni("lab", "status", name, "--json")
    assert out.returncode == 0, out.stderr
    st = json.loads(out.stdout)
    assert [h["name"] for h in st["hosts"]] == ["node1", "node2"]
    assert st["hosts"][0]["netns"] == f"pycni-{name}-node1"
    assert st["hosts"][1]["underlay"] == f"10.250.{u}.2/24"
    pods = {p["name"]: p for p in st["pods"]}
    assert set(pods) == {"a", "b", "c"}
    assert pods["b"]["namespace"] == "web" and pods["a"]["namespace"] == "default"
    for p in pods.values():
        assert len(p["ips"]) == 1 and os.path.exists(f"/run/netns/{p['netns']}")
    # the bridges live in the hosts' netns
    assert run("ip", "-n", f"pycni-{name}-node1", "link", "show", "pb-podnet", check=False).returncode == 0
    assert run("ip", "-n", f"pycni-{name}-node2", "link", "show", "pb-other", check=False).returncode == 0
    # hosts keep separate IPAM state: first address of each subnet
    assert pods["c"]["ips"][0].endswith(".2")
    assert run("ip", "-n", pods["a"]["netns"], "link", "show", "lo", check=True).stdout.count("UP") >= 1

    ping = ["ping", "-c1", "-W2"]
    out = pycni("lab", "exec", "--lab", name, "a", "--", *ping, pods["b"]["ips"][0])
    assert out.returncode == 0, out.stdout + out.stderr
    out = pycni("lab", "exec", "--lab", name, "web/b", "--", *ping, pods["b"]["gateways"][0])
    assert out.returncode == 0, out.stdout + out.stderr
    out = pycni("lab", "exec", "--lab", name, "--host", "node1", "--", *ping, f"10.250.{u}.2")
    assert out.returncode == 0, out.stdout + out.stderr
    assert pycni("lab", "exec", "--lab", name, "a", "--", "sh", "-c", "exit 3").returncode == 3
    assert pycni("lab", "exec", "--lab", name, "nobody", "--", "true").returncode == 1
    out = pycni("lab", "status", path)
    assert out.returncode == 0 and "web/b" in out.stdout
    # up again refuses
    assert pycni("lab", "up", path, *lab_cni_args).returncode == 1

    out = pycni("lab", "down", path)
    assert out.returncode == 0, out.stderr
    assert lab_leftovers(name) == []
    assert pycni("lab", "status", name).returncode == 1


def test_lab_failed_up_cleans_up(lab_file):
    name, path = lab_file(f"""\
        cniPath: {REFERENCE_BIN}
        hosts:
          - name: node1
            underlay: 10.250.{random.randint(0, 255)}.1/24
        networks:
          - name: good
            subnet: {random_subnet()}
          - name: bad
            plugins:
              - type: no-such-plugin
        pods:
          - {{name: a, host: node1, network: good}}
          - {{name: b, host: node1, network: bad}}
    """)
    out = pycni("lab", "up", path)
    assert out.returncode == 1
    assert "no-such-plugin" in out.stderr
    assert lab_leftovers(name) == []
    # down after a failed up is fine too
    assert pycni("lab", "down", path).returncode == 0


def test_lab_down_without_state(lab_file):
    """`down` by name works from the netns names alone (state file lost)."""
    name, path = lab_file(f"""\
        cniPath: {REFERENCE_BIN}
        hosts: [{{name: node1}}]
        networks: [{{name: n, subnet: {random_subnet()}}}]
        pods: [{{name: a, host: node1, network: n}}]
    """)
    assert pycni("lab", "up", path).returncode == 0
    os.unlink(os.path.join(labmod.lab_root(), name, "state.json"))
    assert pycni("lab", "down", name).returncode == 0
    assert lab_leftovers(name) == []


@pytest.mark.parametrize("body,message", [
    ("hosts: [{name: n1, colour: red}]\nnetworks: []\n", "unknown key 'colour'"),
    ("hosts: [{name: n1}]\nnetworks: [{name: x, subnet: 10.250.0.0/24}]\n"
     "pods: [{name: a, host: n2, network: x}]\n", "unknown host 'n2'"),
    ("hosts: [{name: n1}]\nnetworks: [{name: x}]\n", "subnet"),
    ("hosts: [{name: n1}]\nnetworks: [{name: x, subnet: bogus}]\n", "not a network"),
    ("hosts: [{name: N_1}]\nnetworks: []\n", "invalid name"),
    ("hostz: []\n", "unknown key 'hostz'"),
])
def test_lab_file_errors(lab_file, body, message):
    name, path = lab_file(body)
    out = pycni("lab", "up", path)
    assert out.returncode == 1
    assert message in out.stderr
    assert lab_leftovers(name) == []


# ---------------------------------------------------------------- Go libcni interop

GO_DRIVER_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "go", "libcni-driver")


@pytest.fixture(scope="module")
def go_libcni(tmp_path_factory):
    """tests/go/libcni-driver (Go's libcni), built once for this module."""
    import shutil

    if shutil.which("go") is None or not os.path.isdir(GO_DRIVER_SRC):
        pytest.skip("go or tests/go/libcni-driver not available")
    work = tmp_path_factory.mktemp("golibcni")
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"/usr/share/gocode:{work / 'gopath'}",
               GOCACHE=str(work / "gocache"), GOFLAGS="", CGO_ENABLED="0")
    proc = subprocess.run(["go", "build", "-o", str(work / "driver"), "."], cwd=GO_DRIVER_SRC,
                          env=env, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        pytest.fail(f"building libcni-driver failed:\n{proc.stdout}{proc.stderr}")
    return str(work / "driver")


def norm(result):
    """Go re-marshals results with an empty "dns": {}; equal otherwise."""
    return {k: v for k, v in result.items() if not (k == "dns" and not v)}


@pytest.mark.parametrize("adder", ["pycni", "go"])
def test_cache_interoperates_with_go_libcni(go_libcni, adder, tmp_path, fake_bin):
    """A result cached by one library is the prevResult the other's DEL sends."""
    netconf, log = fake_list(tmp_path)
    conf = tmp_path / "fake.conflist"
    conf.write_bytes(netconf.raw)
    cache = tmp_path / "cache"
    cni = libcni.CNIConfig([str(fake_bin)], str(cache))
    rt = libcni.RuntimeConf("interop1", "/run/netns/interop", "eth0")

    def go(command):
        proc = subprocess.run([go_libcni, command, "--conf", str(conf), "--netns", rt.netns, "--id",
                               rt.container_id, "--ifname", "eth0", "--cni-path", str(fake_bin),
                               "--cache-dir", str(cache)], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    if adder == "pycni":
        result = cni.add_network_list(netconf, rt)
    else:
        result = json.loads(go("add"))
        assert norm(cni.get_cached_result(netconf, rt)) == norm(result)
    read_log(log)
    if adder == "pycni":
        go("check")
    else:
        cni.check_network_list(netconf, rt)
    calls = read_log(log)
    assert len(calls) == 2
    for c in calls:
        assert norm(c["conf"]["prevResult"]) == norm(result)
    if adder == "pycni":
        go("del")
    else:
        cni.del_network_list(netconf, rt)
    calls = read_log(log)
    assert [c["plugin"] for c in calls] == ["fake-b", "fake-a"]
    assert all(norm(c["conf"]["prevResult"]) == norm(result) for c in calls)
    assert not (cache / "results" / "fakenet-interop1-eth0").exists()
