"""What the Kubernetes tests share: the CNI chain a node's user configures,
our plugins installed as a user installs them, and what a user can see of a
pod from the node (addresses, the host veth, nftables, tc qdiscs, a TCP
answer, our record files).

A "node" is a network namespace the test made; pods are network namespaces
whose eth0 is a veth into it.  Observations run commands in those
namespaces (`ip -n`, `nsenter --net=PATH`), never in the machine's own.
"""
from __future__ import annotations

import ipaddress
import json
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import run
from podman_env import mentions

PYCNI = str(Path(sys.executable).with_name("pycni"))   # the venv's console script
SOMAXCONN = "1234"                                      # tuning's sysctl, seen inside every pod

@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> Path:
    """Our plugins, written by `pycni install --bin-dir` as a user runs it."""
    d = tmp_path_factory.mktemp("pycni-bin")
    run(PYCNI, "install", "--bin-dir", str(d))
    return d


def k8s_conflist(name: str, bridge: str, data_dir: Path, subnet: str | None,
                 capabilities: dict | None = None) -> dict:
    """bridge + host-local + portmap + bandwidth + tuning, as a Kubernetes
    node runs them; no subnet: no ranges of its own (the runtime sends
    ipRanges); `capabilities` adds {plugin type: {capability: true}}."""
    caps = capabilities or {}
    return {"cniVersion": "1.0.0", "name": name, "plugins": [
        {"type": "bridge", "bridge": bridge, "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
         "hairpinMode": True, "capabilities": caps.get("bridge", {}),
         "ipam": {"type": "host-local", "dataDir": str(data_dir), "ranges": [[{"subnet": subnet}]] if subnet else []}},
        {"type": "portmap", "capabilities": {"portMappings": True, **caps.get("portmap", {})}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True, **caps.get("bandwidth", {})}},
        {"type": "tuning", "sysctl": {"net.core.somaxconn": SOMAXCONN}, "capabilities": caps.get("tuning", {})},
    ]}


def pod_subnets(count: int) -> list[ipaddress.IPv4Network]:
    """Distinct 10.2xx.y.0/24s (used only inside namespaces the test made)."""
    found: set[ipaddress.IPv4Network] = set()
    while len(found) < count:
        found.add(ipaddress.ip_network(f"10.{random.randint(200, 239)}.{random.randint(0, 255)}.0/24"))
    return list(found)


def free_port() -> int:
    """A host port for a fresh node namespace, where nothing else listens."""
    return random.randint(20000, 40000)


def wait_for(fn, timeout: float, what: str, interval=0.1):
    """Poll fn until it returns something true; fail naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


# --- running in a namespace -------------------------------------------------------
def in_netns(path: str, *cmd, timeout=30, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["nsenter", f"--net={path}", *cmd], capture_output=True, text=True,
                          timeout=timeout, **kw)


# --- what a user sees -----------------------------------------------------------
def eth0_ipv4(netns_path: str) -> list[str]:
    out = in_netns(netns_path, "ip", "-j", "-4", "addr", "show", "dev", "eth0").stdout
    return [a["local"] for i in json.loads(out or "[]") for a in i.get("addr_info", [])]


def eth0_mac(netns_path: str) -> str:
    return json.loads(in_netns(netns_path, "ip", "-j", "link", "show", "eth0").stdout)[0]["address"]


def node_links(node_ns: str) -> dict[str, dict]:
    return {l["ifname"]: l for l in json.loads(run("ip", "-n", node_ns, "-j", "link", "show").stdout or "[]")}


def host_veth_of(node_ns: str, netns_path: str) -> str:
    """The node-side name of a pod's eth0: its peer's ifindex, asked of
    netlink (under nsenter, /sys is still the node's)."""
    eth0 = json.loads(in_netns(netns_path, "ip", "-j", "link", "show", "eth0").stdout or "[{}]")[0]
    veth = next((name for name, l in node_links(node_ns).items() if l["ifindex"] == eth0.get("link_index")), None)
    assert veth, f"no node-side peer of eth0 in {netns_path}: {eth0}"
    return veth


def node_nft(node_ns: str) -> str:
    return run("ip", "netns", "exec", node_ns, "nft", "list", "ruleset", check=False).stdout


def tcp_answer(node_ns: str, host: str, port: int) -> str:
    """What host:port says to a client on the node (busybox nc, stdin closed)."""
    proc = subprocess.run(["ip", "netns", "exec", node_ns, "busybox", "nc", "-w", "3", host, str(port)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    return proc.stdout


def listen_in(netns_path: str, port: int, answer="hi") -> subprocess.Popen:
    """A TCP server in a pod's netns answering every connection with `answer`."""
    return subprocess.Popen(["nsenter", f"--net={netns_path}", "busybox", "nc", "-ll", "-p", str(port),
                             "-e", "echo", answer])


def tbf_rates(node_ns: str, dev: str) -> list[int]:
    """Rates (bytes/s) of the tbf qdiscs on a node device."""
    out = run("tc", "-n", node_ns, "-j", "qdisc", "show", "dev", dev, check=False).stdout
    return [q["options"]["rate"] for q in json.loads(out or "[]") if q.get("kind") == "tbf"]


def shaping(node_ns: str, veth: str) -> tuple[list[int], list[int]]:
    """(ingress, egress) tbf rates in bytes/s: on the host veth, and on the
    ifb devices (`bwp…`) that egress traffic is redirected to."""
    ifbs = [name for name in node_links(node_ns) if name.startswith("bwp")]
    return tbf_rates(node_ns, veth), [r for ifb in ifbs for r in tbf_rates(node_ns, ifb)]


def files_naming(directory: Path, needle: str) -> list[str]:
    """Files under directory whose name or content contains needle."""
    if not directory.exists():
        return []
    return [str(p) for p in directory.rglob("*")
            if p.is_file() and (needle in p.name or needle in p.read_text(errors="replace"))]


def leftovers(node_ns: str, veth: str, ip: str, reservations: Path, record_dirs: list[Path],
              record_names: list[str]) -> list[str]:
    """What of a removed pod is still on the node: its host veth, its
    host-local reservation, nft rules or elements naming its address, and
    our plugins' records naming it."""
    problems = [f"host veth {veth} still exists"] if veth in node_links(node_ns) else []
    if (reservations / ip).exists():
        problems.append(f"host-local still reserves {ip}")
    problems += [f"nft names {ip}: {line}" for line in mentions(node_nft(node_ns), ip)]
    problems += [f"record left: {f}" for d in record_dirs for name in record_names for f in files_naming(d, name)]
    return problems
