"""The node agent: same answers as a plugin working alone, served only to
callers in its own network and mount namespaces."""
import concurrent.futures
import os
import socket
import subprocess
import sys
import time

import pytest

from conftest import add, data_files, delete, exec_plugin, host_veths, ping, run, unique



class RunningAgent:
    def __init__(self, name, log_path):
        self.name = name
        self.log_path = log_path
        pycni = os.path.join(os.path.dirname(sys.executable), "pycni")
        self.proc = subprocess.Popen([pycni, "agent", "--socket", name, "--verbose"],
                                     stderr=open(log_path, "w"), stdout=subprocess.DEVNULL)
        deadline = time.time() + 15
        while time.time() < deadline:
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect("\0" + name)
                return
            except OSError:
                time.sleep(0.05)
            finally:
                probe.close()
        self.stop()
        raise RuntimeError(f"agent did not start: {open(log_path).read()}")

    def log(self):
        with open(self.log_path) as f:
            return f.read()

    def served(self):
        return self.log().count("served ")

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


@pytest.fixture
def agent(tmp_path, monkeypatch, state_dirs):
    a = RunningAgent(unique("pycni-test-agent-"), tmp_path / "agent.log")
    monkeypatch.setenv("PYCNI_AGENT_SOCKET", a.name)
    yield a
    a.stop()


def _shape(result):
    """What must not differ between agent and local runs (names and
    addresses are allocated, so compare structure)."""
    return {
        "cniVersion": result["cniVersion"],
        "interfaces": [(bool(i.get("sandbox")), sorted(i)) for i in result["interfaces"]],
        "ips": [(sorted(ip), ip["gateway"]) for ip in result["ips"]],
        "routes": result.get("routes"),
    }


def test_agent_serves_add_check_del_with_the_same_result_as_local(bin_dir, agent, net, make_netns):
    a, b = make_netns(), make_netns()
    rc, via_agent = add(bin_dir, net, a, "ca")
    assert rc == 0, via_agent
    assert agent.served() == 1
    rc, local = add(bin_dir, net, b, "cb", extra_env={"PYCNI_NO_AGENT": "1"})
    assert rc == 0, local
    assert agent.served() == 1
    assert _shape(via_agent) == _shape(local)
    assert ping(a, local["ips"][0]["address"].split("/")[0])
    rc, out = exec_plugin(bin_dir, "bridge", "CHECK", {**net, "prevResult": via_agent}, netns=f"/run/netns/{a}",
                          container_id="ca")
    assert rc == 0, out
    assert delete(bin_dir, net, a, "ca") == (0, None)
    assert delete(bin_dir, net, b, "cb") == (0, None)
    assert agent.served() == 4
    assert data_files(net) == [] and host_veths(net["bridge"]) == []


def test_agent_returns_the_same_error_json_and_status(bin_dir, agent, net, netns):
    bad = {**net, "mtu": "big"}
    via_agent = add(bin_dir, bad, netns)
    local = add(bin_dir, bad, netns, extra_env={"PYCNI_NO_AGENT": "1"})
    assert via_agent == local and via_agent[0] != 0 and via_agent[1]["code"] == 7
    assert "served bridge ADD c1 -> 1" in agent.log()


def test_fifty_concurrent_adds_through_the_agent(bin_dir, agent, net, make_netns):
    namespaces = [make_netns() for _ in range(50)]
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda i: add(bin_dir, net, namespaces[i], f"c{i}"), range(50)))
    assert all(rc == 0 for rc, _ in results), [r for r in results if r[0]]
    assert len({r["ips"][0]["address"] for _, r in results}) == 50
    assert agent.served() == 50
    with concurrent.futures.ThreadPoolExecutor(50) as pool:
        assert all(rc == 0 for rc, _ in pool.map(lambda i: delete(bin_dir, net, namespaces[i], f"c{i}"), range(50)))
    assert data_files(net) == [] and host_veths(net["bridge"]) == []


def test_a_caller_in_another_network_namespace_is_not_served(bin_dir, agent, net, make_netns):
    """A plugin run inside a lab host's netns cannot see this agent's
    abstract socket; it works alone, and the bridge lands in that netns."""
    host, pod = make_netns(), make_netns()
    rc, res = add(bin_dir, net, pod, prefix=("ip", "netns", "exec", host))
    assert rc == 0, res
    assert agent.served() == 0
    assert net["bridge"] in run("ip", "-n", host, "link", "show", net["bridge"]).stdout
    assert ping(pod, res["ips"][0]["gateway"])
    assert delete(bin_dir, net, pod, prefix=("ip", "netns", "exec", host)) == (0, None)


def test_a_caller_in_another_mount_namespace_is_refused_and_works_alone(bin_dir, agent, net, netns):
    rc, res = add(bin_dir, net, netns, prefix=("unshare", "--mount"))
    assert rc == 0, res
    assert agent.served() == 0 and "refused a caller" in agent.log()
    assert delete(bin_dir, net, netns) == (0, None)
    assert agent.served() == 1


def test_plugins_work_alone_once_the_agent_is_gone(bin_dir, agent, net, netns):
    agent.stop()
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    assert delete(bin_dir, net, netns) == (0, None)
