"""Kubernetes nodes: containerd 1.6's CRI runs our plugins as kubelet drives it.

A private containerd (tests/cri/containerd_env.py) runs inside a network
namespace standing for the node.  Its CRI plugin execs our plugins (written
by `pycni install`) through a bin dir of small shell wrappers, each of which
records what containerd hands it (the CNI_* and PYCNI_* environment, stdin)
and then execs our plugin unchanged.  The chain is bridge + host-local +
portmap + bandwidth + tuning, from a conflist template whose subnet is
containerd's `{{.PodCIDR}}`.

A CRI v1 client (tests/cri/cri_client.py) plays kubelet: it starts the node as
kubelet does (Status, then UpdateRuntimeConfig with the node's pod CIDR,
which makes containerd render the template into its conf dir), runs pod
sandboxes with metadata, port mappings, bandwidth annotations and DNS
config, starts a container in one, stops and removes them.  The tests
assert what a user sees: Status, addresses in the pod CIDR, the default
route, tuning's sysctl, pings between pods, a hostPort answered by the pod's
container, tc qdiscs, and after removal no veth, host-local reservation, nft
element or record of ours.

containerd 1.6 sends capabilities in go-cni's untagged Go structs
(`{"HostPort": ...}`, `{"IngressRate": ...}`); test_what_containerd_sends
pins that, and test_runtime_forms.py has every runtime's forms.
"""
from __future__ import annotations

import concurrent.futures
import ipaddress
import json
import os
import shutil
import sys
import tempfile
import uuid
from pathlib import Path

import grpc
import pytest

from conftest import run, unique

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri"))
from cri_client import CRIClient, Port, compile_cri  # noqa: E402
from containerd_env import SANDBOX_IMAGE, Containerd, make_sandbox_image  # noqa: E402
from k8s_node import (SOMAXCONN, eth0_ipv4,  # noqa: E402
                      free_port, host_veth_of, in_netns, k8s_conflist, leftovers, node_links, node_nft,
                      pod_subnets, shaping, tcp_answer, wait_for)
from k8s_node import installed  # noqa: E402,F401  (a fixture: pytest finds it by name)

MISSING = [t for t in ("containerd", "ctr", "runc", "nsenter", "tc") if not shutil.which(t)] + \
    [f for f in ("/bin/busybox",) if not os.path.exists(f)]
TEMPLATE_NAME = "10-containerd-net.conflist"   # what containerd renders conf_template into
K8S_ARGS = {"IgnoreUnknown", "K8S_POD_NAMESPACE", "K8S_POD_NAME", "K8S_POD_INFRA_CONTAINER_ID", "K8S_POD_UID"}

# --- what containerd hands the plugins ------------------------------------------
WRAPPER = """#!/bin/sh
# Records what the runtime hands this plugin, then runs it unchanged.
log="{log_dir}/$(date +%s%N)-$$-{name}"
env | grep -E '^(CNI|PYCNI)_' > "$log.env"
cat > "$log.stdin"
exec "{real}" "$@" < "$log.stdin"
"""


def write_recording_bin_dir(bin_dir: Path, real_dir: Path, log_dir: Path) -> None:
    for name in os.listdir(real_dir):
        path = bin_dir / name
        path.write_text(WRAPPER.format(log_dir=log_dir, name=name, real=real_dir / name))
        path.chmod(0o755)


def recorded(log_dir: Path, command: str, *, container_id: str = "", pod_name: str = "") -> list[dict]:
    """The calls of `command` for one sandbox (by id, or by K8S_POD_NAME when
    a failed RunPodSandbox left no id), in exec order: [{plugin, env, config}]."""
    calls = []
    for env_file in sorted(log_dir.glob("*.env")):
        env = dict(line.split("=", 1) for line in env_file.read_text().splitlines() if "=" in line)
        call = {"plugin": env_file.name.removesuffix(".env").split("-", 2)[2], "env": env}
        if env.get("CNI_COMMAND") != command or (container_id and env.get("CNI_CONTAINERID") != container_id) \
                or (pod_name and cni_args(call).get("K8S_POD_NAME") != pod_name):
            continue
        stdin = env_file.with_suffix(".stdin").read_text()
        calls.append({**call, "config": json.loads(stdin) if stdin.strip() else None})
    return calls


def cni_args(call: dict) -> dict:
    return dict(kv.split("=", 1) for kv in call["env"].get("CNI_ARGS", "").split(";") if kv)


# --- the node -------------------------------------------------------------------
class Node:
    """A node: its netns, containerd, a kubelet-like CRI client, and the
    places our plugins keep state."""

    def __init__(self, base: Path, real_dir: Path):
        self.base, self.real_dir = base, real_dir
        self.netns = unique("pcnode")
        self.network = unique("k8s-pycni-")
        self.bridge = unique("pk")
        self.pod_cidr = pod_subnets(1)[0]
        self.gateway = str(self.pod_cidr.network_address + 1)
        self.bin_dir, self.conf_dir, self.log_dir, self.data_dir, self.state_dir, self.run_dir = (
            base / d for d in ("bin", "net.d", "calls", "ipam", "pycni-state", "pycni-run"))
        for d in (self.bin_dir, self.conf_dir, self.log_dir):
            d.mkdir()
        self.template = base / "cni-template.conflist"
        self.containerd: Containerd | None = None
        self.cri: CRIClient | None = None
        self.status_before: dict = {}

    def start(self, cri_modules) -> None:
        run("ip", "netns", "add", self.netns)
        run("ip", "-n", self.netns, "link", "set", "lo", "up")
        write_recording_bin_dir(self.bin_dir, self.real_dir, self.log_dir)
        self.template.write_text(json.dumps(
            k8s_conflist(self.network, self.bridge, self.data_dir, "{{.PodCIDR}}"), indent=1))
        self.containerd = Containerd(self.base / "containerd", self.netns, str(self.bin_dir), str(self.conf_dir),
                                     str(self.template),
                                     {"PYCNI_STATE_DIR": str(self.state_dir), "PYCNI_RUN_DIR": str(self.run_dir)})
        self.containerd.start()
        self.containerd.import_image(make_sandbox_image(self.base))
        self.cri = CRIClient(self.containerd.address, cri_modules)
        wait_for(self._answers, 30, "containerd's CRI service")
        # kubelet's start-up: it reads Status, then hands the node's pod CIDR over.
        self.status_before = self.cri.conditions()
        self.cri.update_pod_cidr(str(self.pod_cidr))
        wait_for(lambda: self.cri.conditions().get("NetworkReady", (False,))[0], 30,
                 f"NetworkReady after UpdateRuntimeConfig(pod_cidr={self.pod_cidr})")

    def _answers(self) -> bool:
        try:
            self.cri.version()
            return True
        except grpc.RpcError:
            return False

    def stop(self) -> list[str]:
        """Remove every sandbox, stop containerd, delete the node's netns;
        return what could not be removed the normal way."""
        problems = []
        if self.cri:
            for pod_id in self.cri.pod_ids():
                for call in (self.cri.stop_pod, self.cri.remove_pod):
                    try:
                        call(pod_id)
                    except grpc.RpcError as e:
                        problems.append(f"{call.__name__}({pod_id[:12]}): {e.details()}")
            self.cri.close()
        if self.containerd:
            problems += self.containerd.stop()
        run("ip", "netns", "delete", self.netns, check=False)
        return problems

    def netns_path(self, pod_id: str) -> str:
        spec = self.cri.pod_info(pod_id)["runtimeSpec"]
        return next(ns["path"] for ns in spec["linux"]["namespaces"] if ns["type"] == "network")

    def leftovers(self, pod_id: str, ip: str, veth: str, netns_path: str) -> list[str]:
        problems = leftovers(self.netns, veth, ip, self.data_dir / self.network, [self.state_dir, self.run_dir],
                             [pod_id])
        if os.path.exists(netns_path):
            problems.append(f"netns {netns_path} still exists")
        return problems


@pytest.fixture(scope="session")
def cri_modules(tmp_path_factory):
    return compile_cri(str(tmp_path_factory.mktemp("cri-proto")))


@pytest.fixture(scope="session")
def node(cri_modules, installed):
    if MISSING:
        pytest.skip(f"needs {', '.join(MISSING)} (tools/apt-packages.txt; tools/bootstrap installs them)")
    # a short base: unix socket paths (containerd's, the shims') have a 108-byte limit
    base = Path(tempfile.mkdtemp(prefix="pcnictd-", dir="/tmp"))
    n = Node(base, installed)
    try:
        n.start(cri_modules)
        yield n
    finally:
        problems = n.stop()
        shutil.rmtree(base, ignore_errors=True)
    assert not problems, "containerd teardown found leftovers:\n" + "\n".join(problems)


class Pods:
    """Runs sandboxes as kubelet would; whatever a test leaves is stopped and
    removed at teardown."""

    def __init__(self, node: Node):
        self.node, self.made = node, []

    def config(self, name=None, namespace="default", **kw):
        return self.node.cri.sandbox_config(name or unique("pod-"), namespace, str(uuid.uuid4()), **kw)

    def run(self, config) -> str:
        pod_id = self.node.cri.run_pod(config)
        self.made.append(pod_id)
        return pod_id

    def remove(self, pod_id: str) -> None:
        self.node.cri.stop_pod(pod_id)
        self.node.cri.remove_pod(pod_id)

    def cleanup(self):
        existing = set(self.node.cri.pod_ids())
        for pod_id in self.made:
            if pod_id in existing:
                self.remove(pod_id)


@pytest.fixture
def pods(node):
    p = Pods(node)
    yield p
    p.cleanup()


# --- the tests ------------------------------------------------------------------
def test_network_ready_after_kubelet_hands_over_the_pod_cidr(node):
    ready, reason, _ = node.status_before["NetworkReady"]
    assert not ready and reason == "NetworkPluginNotReady", node.status_before
    conditions = node.cri.conditions()
    assert conditions["NetworkReady"][0] and conditions["RuntimeReady"][0], conditions
    rendered = json.loads((node.conf_dir / TEMPLATE_NAME).read_text())
    assert rendered["plugins"][0]["ipam"]["ranges"] == [[{"subnet": str(node.pod_cidr)}]]


def test_pod_network_lifecycle(node, pods):
    config = pods.config(namespace="team-a")
    pod_id = pods.run(config)
    ip = node.cri.pod_status(pod_id).network.ip
    assert ipaddress.ip_address(ip) in node.pod_cidr
    path = node.netns_path(pod_id)
    assert path.startswith(str(node.containerd.state)), path   # netns_mounts_under_state_dir
    assert eth0_ipv4(path) == [ip]
    route = json.loads(in_netns(path, "ip", "-j", "route", "show", "default").stdout)
    assert [r.get("gateway") for r in route] == [node.gateway]
    assert in_netns(path, "cat", "/proc/sys/net/core/somaxconn").stdout.strip() == SOMAXCONN
    veth = host_veth_of(node.netns, path)
    assert node_links(node.netns)[veth].get("master") == node.bridge

    # What containerd handed the chain: kubelet's pod identity in CNI_ARGS,
    # the sandbox's netns, our state dirs through its environment, no ipRanges.
    # (go-cni attaches loopback and our network concurrently; host-local is
    # bridge's exec, through the same recording bin dir.)
    adds = recorded(node.log_dir, "ADD", container_id=pod_id)
    chain = [c for c in adds if c["plugin"] != "loopback"]
    assert len(adds) - len(chain) == 1
    assert [c["plugin"] for c in chain] == ["bridge", "host-local", "portmap", "bandwidth", "tuning"]
    for call in chain:
        args = cni_args(call)
        assert set(args) == K8S_ARGS and args["IgnoreUnknown"] == "1", args
        assert (args["K8S_POD_NAMESPACE"], args["K8S_POD_NAME"], args["K8S_POD_UID"], args["K8S_POD_INFRA_CONTAINER_ID"]) \
            == ("team-a", config.metadata.name, config.metadata.uid, pod_id)
        assert (call["env"]["CNI_NETNS"], call["env"]["CNI_IFNAME"]) == (path, "eth0")
        assert call["env"]["PYCNI_STATE_DIR"] == str(node.state_dir)
        assert "ipRanges" not in (call["config"].get("runtimeConfig") or {})
    # While the pod runs, each kind of leftover the checks below look for is there.
    present = " | ".join(node.leftovers(pod_id, ip, veth, path))
    for kind in ("host veth", "host-local still reserves", "nft names", "record left", "netns"):
        assert kind in present, f"{kind!r} not found for a running pod: {present}"

    node.cri.stop_pod(pod_id)
    assert not node.leftovers(pod_id, ip, veth, path)
    dels = [c for c in recorded(node.log_dir, "DEL", container_id=pod_id) if c["plugin"] != "loopback"]
    assert {c["plugin"] for c in dels} == {"bridge", "host-local", "portmap", "bandwidth", "tuning"}
    assert all(cni_args(c)["K8S_POD_NAME"] == config.metadata.name for c in dels)
    node.cri.remove_pod(pod_id)
    assert pod_id not in node.cri.pod_ids()
    assert not node.leftovers(pod_id, ip, veth, path)


def test_pods_reach_each_other(node, pods):
    a, b = (pods.run(pods.config()) for _ in range(2))
    ip = {p: node.cri.pod_status(p).network.ip for p in (a, b)}
    path = {p: node.netns_path(p) for p in (a, b)}
    assert ip[a] != ip[b]
    for src, dst in ((a, b), (b, a)):
        proc = in_netns(path[src], "ping", "-c", "1", "-W", "2", ip[dst])
        assert proc.returncode == 0, f"{ip[src]} -> {ip[dst]}: {proc.stdout}{proc.stderr}"


def test_host_port_reachable_from_the_node(node, pods):
    host_port = free_port()
    config = pods.config(ports=[Port(host_port, 8080)])
    pod_id = pods.run(config)
    node.cri.run_container(pod_id, config, "web", SANDBOX_IMAGE, ["nc", "-ll", "-p", "8080", "-e", "echo", "hi"])
    ip, path = node.cri.pod_status(pod_id).network.ip, node.netns_path(pod_id)
    veth = host_veth_of(node.netns, path)
    for target in ("127.0.0.1", node.gateway):
        wait_for(lambda: tcp_answer(node.netns, target, host_port) == "hi\n", 10,
                 f"{target}:{host_port} answered by the pod's container")
    pods.remove(pod_id)
    assert tcp_answer(node.netns, "127.0.0.1", host_port) == ""
    assert not node.leftovers(pod_id, ip, veth, path)
    assert f"{host_port}" not in node_nft(node.netns)


def test_bandwidth_annotations_shape_the_pod(node, pods):
    pod_id = pods.run(pods.config(annotations={"kubernetes.io/ingress-bandwidth": "10M",
                                               "kubernetes.io/egress-bandwidth": "20M"}))
    veth = host_veth_of(node.netns, node.netns_path(pod_id))
    assert shaping(node.netns, veth) == ([10_000_000 // 8], [20_000_000 // 8])


def test_what_containerd_sends(node, pods):
    """Pins the containerd column of test_runtime_forms.py's table to what
    containerd 1.6 really hands the plugins: go-cni's untagged structs."""
    host_port = free_port()
    published = pods.config(ports=[Port(host_port, 8080), Port(0, 9090)])
    pods.run(published)
    portmap = {c["plugin"]: c for c in recorded(node.log_dir, "ADD", pod_name=published.metadata.name)}["portmap"]
    # hostPort 0 is dropped; HostIP is there even when empty
    assert portmap["config"]["runtimeConfig"] == {"portMappings": [
        {"HostPort": host_port, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}]}

    shaped = pods.config(annotations={"kubernetes.io/ingress-bandwidth": "10M", "team": "a"},
                         dns={"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]})
    pods.run(shaped)
    calls = {c["plugin"]: c for c in recorded(node.log_dir, "ADD", pod_name=shaped.metadata.name)}
    # the annotation's bits/s, a burst of MaxUint32 bits, the other direction zero
    assert calls["bandwidth"]["config"]["runtimeConfig"] == {"bandwidth": {
        "IngressRate": 10_000_000, "IngressBurst": 4294967295, "EgressRate": 0, "EgressBurst": 0}}
    # only enabled capabilities are injected: the DNS config and the pod
    # annotations reach no plugin of this chain, nor does an empty portMappings
    others = {plugin: c["config"].get("runtimeConfig") for plugin, c in calls.items() if plugin != "bandwidth"}
    assert others == dict.fromkeys(others), others


def test_sandbox_whose_netns_was_deleted_is_removed_cleanly(node, pods):
    pod_id = pods.run(pods.config())
    ip, path = node.cri.pod_status(pod_id).network.ip, node.netns_path(pod_id)
    veth = host_veth_of(node.netns, path)
    # deleted under the runtime, as `ip netns delete` does: unmount and unlink
    run("umount", path)
    os.unlink(path)
    pods.remove(pod_id)
    dels = recorded(node.log_dir, "DEL", container_id=pod_id)
    assert dels and all(c["env"].get("CNI_NETNS", "") == "" for c in dels), \
        "containerd passes no netns once it is gone"
    # StopPodSandbox killed the pause process; the kernel then frees its netns
    # (and the veth pair in it) asynchronously
    wait_for(lambda: veth not in node_links(node.netns), 10, f"{veth} to go with the netns")
    assert not node.leftovers(pod_id, ip, veth, path)


def test_ten_sandboxes_in_parallel_get_distinct_addresses(node, pods):
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        ids = list(pool.map(pods.run, [pods.config() for _ in range(10)]))
    ips = [node.cri.pod_status(p).network.ip for p in ids]
    assert len(set(ips)) == 10 and all(ipaddress.ip_address(i) in node.pod_cidr for i in ips), ips
    paths = [node.netns_path(p) for p in ids]
    assert [eth0_ipv4(p) for p in paths] == [[i] for i in ips]
    veths = [host_veth_of(node.netns, p) for p in paths]
    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        list(pool.map(pods.remove, ids))
    problems = [f"{ip}: {p}" for pod_id, ip, veth, path in zip(ids, ips, veths, paths)
                for p in node.leftovers(pod_id, ip, veth, path)]
    assert not problems, problems
