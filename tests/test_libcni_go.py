"""End to end through Go's libcni, the library containerd, CRI-O and podman
use to call CNI plugins.

A tiny Go CLI (tests/go/libcni-driver) is built once per session against
Debian's golang-github-appc-cni-dev in GOPATH mode.  Each test writes a
bridge + host-local conflist, then lets libcni ADD two pods, CHECK them
(0.4.0 and later; libcni itself refuses CHECK for 0.3.1, which is asserted),
ping between them and the gateway, DEL them, and verifies nothing is left
behind: no veth on the bridge, no host-local reservation, no cached result,
no nft rule naming a pod address.

The same test runs against our plugins (`bin_dir`) and the reference
plugins in /usr/lib/cni, so a failure on ours can be compared directly.
"""
import ipaddress
import json
import os
import re
import shutil
import subprocess

import pytest

from conformance.runner import pick_subnet
from conftest import REFERENCE_BIN, run, unique
from go import build_driver


VERSIONS = ["0.3.1", "0.4.0", "1.0.0"]

pytestmark = pytest.mark.skipif(
    shutil.which("go") is None,
    reason="`go` not installed (Debian golang-go; tools/bootstrap installs it)")


@pytest.fixture(scope="session")
def libcni_driver(tmp_path_factory):
    """Build tests/go/libcni-driver once; path to the binary."""
    try:
        return build_driver.build(str(tmp_path_factory.mktemp("libcni-driver")))
    except build_driver.BuildError as e:
        pytest.fail(str(e))


class Driver:
    """Runs the libcni driver for one network/config."""

    def __init__(self, exe, conf, cni_path, cache_dir):
        self.exe, self.conf, self.cni_path, self.cache_dir = exe, conf, cni_path, cache_dir

    def cmdline(self, command, netns, container_id, ifname="eth0"):
        return [self.exe, command, "--conf", str(self.conf), "--netns", f"/run/netns/{netns}",
                "--id", container_id, "--ifname", ifname, "--cni-path", self.cni_path,
                "--cache-dir", str(self.cache_dir)]

    def __call__(self, command, netns, container_id, ifname="eth0"):
        # The environment (PYCNI_STATE_DIR/PYCNI_RUN_DIR from `state_dirs`)
        # is inherited; libcni passes it through to the plugins.
        cmd = self.cmdline(command, netns, container_id, ifname)
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        return proc.returncode, proc.stdout, proc.stderr

    def ok(self, command, netns, container_id, ifname="eth0"):
        rc, out, err = self(command, netns, container_id, ifname)
        assert rc == 0, (f"libcni {command.upper()} failed (exit {rc})\n"
                         f"command: {' '.join(self.cmdline(command, netns, container_id, ifname))}\n"
                         f"conf: {self.conf.read_text()}\nstderr: {err}\nstdout: {out}")
        return out


def host_veths_on(bridge):
    out = run("ip", "-j", "link", "show", "master", bridge, check=False)
    if out.returncode != 0:  # bridge gone: nothing can be enslaved to it
        return []
    return [link["ifname"] for link in json.loads(out.stdout or "[]")]


def leftover_ipam_files(data_dir):
    left = []
    for root, _dirs, files in os.walk(data_dir):
        for f in files:
            if f == "lock" or f.startswith("last_reserved_ip."):
                continue
            left.append(os.path.relpath(os.path.join(root, f), data_dir))
    return sorted(left)


def check_result_shape(result, version, netns, bridge, subnet):
    """The ADD result as libcni hands it to a runtime, in the config's version."""
    assert result.get("cniVersion") == version, result
    ifaces = result.get("interfaces")
    assert isinstance(ifaces, list) and ifaces, f"no interfaces in result: {result}"
    names = [i.get("name") for i in ifaces]
    assert bridge in names, f"bridge {bridge} not among result interfaces {names}"
    container = [i for i, iface in enumerate(ifaces) if iface.get("name") == "eth0"]
    assert len(container) == 1, f"expected one eth0 interface in {ifaces}"
    cidx = container[0]
    assert ifaces[cidx].get("sandbox") == f"/run/netns/{netns}", ifaces[cidx]
    for iface in ifaces:
        assert iface.get("mac"), f"interface without mac: {iface}"
    host_side = [iface["name"] for iface in ifaces
                 if iface.get("name") != bridge and not iface.get("sandbox")]
    assert len(host_side) == 1, f"expected one host-side veth in {ifaces}"

    ips = result.get("ips")
    assert isinstance(ips, list) and len(ips) == 1, f"expected exactly one IP: {result}"
    ip = ips[0]
    if version.startswith("0."):
        assert ip.get("version") == "4", f"0.x results carry ips[].version: {ip}"
    else:
        assert "version" not in ip, f"1.0.0 results have no ips[].version: {ip}"
    assert ip.get("interface") == cidx, f"ips[0].interface should index eth0 ({cidx}): {ip}"
    addr = ipaddress.ip_interface(ip["address"])
    assert addr.network == subnet, f"{addr} not in {subnet}"
    gateway = ipaddress.ip_address(ip["gateway"])
    assert gateway == subnet.network_address + 1, ip
    return addr.ip, gateway, host_side[0]


def write_conflist(path, version, name, bridge, subnet, data_dir):
    conf = {
        "cniVersion": version,
        "name": name,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": True,
            "ipMasq": True,
            "ipam": {
                "type": "host-local",
                "dataDir": str(data_dir),
                "ranges": [[{"subnet": str(subnet)}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    }
    path.write_text(json.dumps(conf, indent=2))
    return conf


def ping(netns, target):
    proc = run("ip", "netns", "exec", netns, "ping", "-c1", "-W2", str(target), check=False)
    return proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(params=["ours", "reference"])
def plugin_dir(request):
    if request.param == "reference":
        if not os.path.exists(os.path.join(REFERENCE_BIN, "bridge")):
            pytest.skip("reference plugins (containernetworking-plugins) not installed")
        return REFERENCE_BIN
    return request.getfixturevalue("bin_dir")


@pytest.mark.parametrize("version", VERSIONS)
def test_libcni_add_check_del(version, plugin_dir, libcni_driver, tmp_path, state_dirs,
                              make_netns, bridge_name):
    subnet = pick_subnet()
    data_dir = tmp_path / "ipam"
    cache_dir = tmp_path / "libcni-cache"
    conf = tmp_path / "net.conflist"
    net_name = unique("libcni-")
    write_conflist(conf, version, net_name, bridge_name, subnet, data_dir)
    drive = Driver(libcni_driver, conf, plugin_dir, cache_dir)

    pods = [(make_netns("plc"), unique("ctr-")) for _ in range(2)]
    added = []
    try:
        # ADD both pods.
        results = []
        for ns, cid in pods:
            out = drive.ok("add", ns, cid)
            added.append((ns, cid))
            try:
                result = json.loads(out)
            except ValueError:
                pytest.fail(f"ADD printed non-JSON: {out!r}")
            results.append(check_result_shape(result, version, ns, bridge_name, subnet))
        (ip_a, gw, veth_a), (ip_b, gw_b, veth_b) = results
        assert ip_a != ip_b and gw == gw_b
        assert sorted(host_veths_on(bridge_name)) == sorted([veth_a, veth_b])
        assert len(leftover_ipam_files(data_dir)) == 2, (
            f"host-local did not record both reservations under dataDir {data_dir}: "
            f"{leftover_ipam_files(data_dir)}")

        # CHECK: libcni only supports it from 0.4.0 on.
        for ns, cid in pods:
            if version == "0.3.1":
                rc, out, err = drive("check", ns, cid)
                assert rc == 1, f"libcni accepted CHECK for 0.3.1: rc={rc} {out} {err}"
                assert "does not support the CHECK command" in err, err
            else:
                drive.ok("check", ns, cid)

        # Real traffic: pod <-> pod and pod -> gateway.
        for (ns, _), peer in ((pods[0], ip_b), (pods[1], ip_a)):
            for target in (peer, gw):
                ok, text = ping(ns, target)
                assert ok, f"ping {target} from {ns} failed:\n{text}"

        # DEL both, then DEL again: runtimes repeat DEL and it must succeed.
        for ns, cid in pods:
            drive.ok("del", ns, cid)
            added.remove((ns, cid))
        for ns, cid in pods:
            drive.ok("del", ns, cid)
    finally:
        for ns, cid in added:  # best effort, so a failed test leaks nothing
            drive("del", ns, cid)

    # Nothing is left.
    assert host_veths_on(bridge_name) == [], f"veths still on {bridge_name}"
    for veth in (veth_a, veth_b):
        assert run("ip", "link", "show", veth, check=False).returncode != 0, f"{veth} still exists"
    assert leftover_ipam_files(data_dir) == [], f"host-local reservations left in {data_dir}"
    if cache_dir.exists():
        cached = [os.path.join(r, f) for r, _d, fs in os.walk(cache_dir) for f in fs]
        assert cached == [], f"libcni cache not cleared: {cached}"
    ruleset = run("nft", "list", "ruleset").stdout
    for addr in (ip_a, ip_b):
        pattern = re.compile(r"(?<![\d.])" + re.escape(str(addr)) + r"(?![\d])")
        mentions = [line.strip() for line in ruleset.splitlines() if pattern.search(line)]
        assert mentions == [], f"nft rules still mention {addr}: {mentions}"
