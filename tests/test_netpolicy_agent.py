"""The node agent's network-policy duty in a network namespace of the
test's own: `pycni agent --policy-dir DIR` enforces DIR's policies, says
so in its status, refuses to start beside another controller, and keeps
its tables when it stops, so a restarted agent has nothing to change."""
import json
import os
import subprocess
import sys
import time

import pytest

from conftest import stop_process

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

OBJECTS = [
    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"team": "blue"}}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "deny", "namespace": "x"},
     "spec": {"podSelector": {}}},
    {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"},
     "spec": {"nodeName": "n1"}, "status": {"podIPs": [{"ip": "10.231.7.2"}]}},
]


class Agent:
    def __init__(self, netns, tmp_path, *args):
        self.status_file = tmp_path / f"status-{time.monotonic_ns()}.json"
        self.log = tmp_path / "agent.log"
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "pycni.cli", "agent",
                                          "--node-name", "n1", "--status-file", str(self.status_file), *args],
                                         stdout=log, stderr=subprocess.STDOUT)

    def status(self) -> dict:
        try:
            return json.loads(self.status_file.read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self):
        deadline = time.monotonic() + 30
        while not self.status().get("ready"):
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.05)

    def stop(self) -> int:
        stop_process(self.proc, 30)
        return self.proc.returncode


def test_the_policy_duty_enforces_reports_refuses_a_second_controller_and_keeps_its_tables(make_netns, tmp_path):
    netns = make_netns("npa")
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "objects.json").write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": OBJECTS}))
    args = ("--policy-dir", str(policies), "--state-dir", str(tmp_path / "state"))
    agent = Agent(netns, tmp_path, *args)
    try:
        agent.wait_ready()
        duty = agent.status()["duties"]["policy"]
        assert duty["ready"] and duty["socket"] == "pycni-policy" and duty["store"] is None
        assert (duty["policies"], duty["endpoints"], duty["errors"]) == (1, 1, [])
        table = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "pycni_netpolicy"],
                               capture_output=True, text=True)
        assert "10.231.7.2" in table.stdout          # x/a is isolated: its address is in the ingress map

        second = Agent(netns, tmp_path, "--socket", "pycni-agent-2", *args)
        assert second.proc.wait(30) == 2
        assert "already serves @pycni-policy" in agent.log.read_text()
    finally:
        assert agent.stop() == 0
    after = subprocess.run(["ip", "netns", "exec", netns, "nft", "list", "table", "inet", "pycni_netpolicy"],
                           capture_output=True, text=True).stdout
    assert after == table.stdout                    # x/a stays isolated while no agent runs

    restarted = Agent(netns, tmp_path, *args)
    try:
        restarted.wait_ready()
        assert "netpolicy: first sync: 0 change(s)" in restarted.log.read_text()
    finally:
        assert restarted.stop() == 0
