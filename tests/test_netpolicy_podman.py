"""podman containers under a network policy from a file: podman 4.3's CNI
backend on our plugins with `netpolicy` appended to the network's
conflist, `pycni agent --policy-dir DIR` enforcing the NetworkPolicy
files in DIR, containers' labels from label files (podman passes no
labels), and nc between two busybox containers to see it.

podman, the agent and the containers' bridge run in a network namespace
of the test's own (`nsenter --net`: the mount namespace stays the
machine's, so podman's container namespaces under /run/netns are seen by
every later podman and by the agent), so our nftables tables and the
agent's sockets never meet the machine's or another test's.
"""
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest
import yaml

from conftest import stop_process, unique
from podman_env import PodmanEnv, make_busybox_tarball

NEEDED = ("podman", "runc", "conmon", "nsenter")
missing = [t for t in NEEDED if shutil.which(t) is None and not os.path.exists(f"/usr/sbin/{t}")]
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or bool(missing) or not os.path.exists("/bin/busybox"),
    reason=f"needs root, podman, runc, conmon and busybox-static (missing: {', '.join(missing) or '-'})")

PORT = 8080


@dataclass
class NodePodmanEnv(PodmanEnv):
    """PodmanEnv with podman run in network namespace ``node`` (a `podman`
    on the env's PATH that is nsenter, so conmon's cleanup runs there
    too).  Its teardown looks for leftovers in that namespace only: the
    machine's own links are none of its business."""
    node: str = ""

    def __post_init__(self):
        super().__post_init__()
        wrapper = self.base / "nsbin" / "podman"
        wrapper.parent.mkdir()
        wrapper.write_text(f"#!/bin/sh\nexec nsenter --net=/run/netns/{self.node} {shutil.which('podman')} \"$@\"\n")
        wrapper.chmod(0o755)
        self.env["PATH"] = f"{wrapper.parent}:{self.env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"

    def run_container(self, name, net, *args, cmd=("sleep", "600")):
        container = super().run_container(name, net, *args, cmd=cmd)
        container.host_veth = None   # found among the machine's links: not ours
        return container

    def teardown(self) -> list[str]:
        problems = []
        for args in (("rm", "-af", "-t", "0"), *(("network", "rm", "-f", n.name) for n in self.networks)):
            proc = self.podman(*args, timeout=120)
            if proc.returncode != 0:
                problems.append(f"`podman {' '.join(args)}`: {proc.stderr.strip()}")
        links = json.loads(subprocess.run(["ip", "-n", self.node, "-j", "link"], capture_output=True,
                                          text=True).stdout or "[]")
        problems += [f"link {link['ifname']} left in {self.node}" for link in links if link["ifname"] != "lo"]
        for c in self.containers.values():
            if c.sandbox and os.path.exists(c.sandbox):
                problems.append(f"{c.name}: network namespace {c.sandbox} left")
                subprocess.run(["ip", "netns", "delete", os.path.basename(c.sandbox)])
        for net in self.networks:
            problems += self._network_files_left(net)
        self._unmount_and_remove()
        return problems


@pytest.fixture(scope="module")
def busybox_tarball(tmp_path_factory):
    return make_busybox_tarball(tmp_path_factory.mktemp("image") / "busybox-rootfs.tar")


@pytest.fixture
def node():
    name = unique("pnode")
    subprocess.run(["ip", "netns", "add", name], check=True)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name])   # our tables and the bridge go with it


@pytest.fixture
def agent(node, tmp_path):
    """`pycni agent --policy-dir DIR` in the node's namespace; DIR starts empty."""
    policies = tmp_path / "policies"
    policies.mkdir()
    status = tmp_path / "agent.json"
    log = open(tmp_path / "agent.log", "w+")
    proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{node}", sys.executable, "-m", "pycni.cli", "agent",
                             "--policy-dir", str(policies), "--state-dir", str(tmp_path / "state"),
                             "--status-file", str(status)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not (status.exists() and json.loads(status.read_text()).get("ready")):
            assert proc.poll() is None and time.monotonic() < deadline, open(log.name).read()
            time.sleep(0.05)
        yield policies
    finally:
        stop_process(proc, 30)
        log.close()


@pytest.fixture
def penv(node, agent, bin_dir, busybox_tarball):
    env = NodePodmanEnv(bin_dir, node=node)
    try:
        env.import_image(busybox_tarball)
        yield env
    finally:
        problems = env.teardown()
    assert not problems, "\n".join(problems)


def netpol(name, **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": "default"}, "spec": spec}


def answers(env, client, server) -> bool:
    """Does ``server``'s nc answer ``client``'s (busybox nc, 2 s to connect)?"""
    proc = env.exec(client.name, "sh", "-c", f"nc -w 2 {server.ip} {PORT} </dev/null")
    return proc.stdout.strip() == "hi"


def eventually(predicate, what, timeout=15.0):
    """The agent reads its directory every second: wait for it (not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.2)


def test_a_policy_file_blocks_one_direction_and_another_reopens_it(node, agent, penv, tmp_path):
    labels = tmp_path / "labels"
    net = penv.create_network()
    conflist = json.loads(net.path.read_text())
    conflist["plugins"].append({"type": "netpolicy", "labelsDir": str(labels)})
    net.path.write_text(json.dumps(conflist))
    a_name, b_name = unique("a"), unique("b")
    for name, app in ((a_name, "client"), (b_name, "server")):   # podman names the pod by the container
        (labels / "default").mkdir(parents=True, exist_ok=True)
        (labels / "default" / f"{name}.json").write_text(json.dumps({"labels": {"app": app}}))
    server = ("nc", "-ll", "-p", str(PORT), "-e", "echo", "hi")
    a = penv.run_container(a_name, net, cmd=server)
    b = penv.run_container(b_name, net, cmd=server)
    eventually(lambda: answers(penv, a, b) and answers(penv, b, a), "both containers to answer")

    servers = {"matchLabels": {"app": "server"}}
    (agent / "deny.yaml").write_text(yaml.safe_dump(netpol("server-deny", podSelector=servers, policyTypes=["Ingress"])))
    eventually(lambda: not answers(penv, a, b), "the deny policy")
    assert answers(penv, b, a)                  # one direction only: b may still reach a

    (agent / "allow.yaml").write_text(yaml.safe_dump(netpol("server-from-clients", podSelector=servers, ingress=[
        {"from": [{"podSelector": {"matchLabels": {"app": "client"}}}], "ports": [{"port": PORT}]}])))
    eventually(lambda: answers(penv, a, b), "the allow policy")
    assert answers(penv, b, a)
    registered = list((tmp_path / "state" / "netpolicy" / "endpoints").iterdir())
    assert len(registered) == 2
