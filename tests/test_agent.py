"""The node agent: same answers as a plugin working alone, served only to
callers in its own network and mount namespaces."""
import concurrent.futures
import contextlib
import fcntl
import json
import os
import subprocess
import time

import pytest

from agent_env import RunningAgent
from conftest import (add, data_files, delete, exec_plugin, host_veths, in_ruleset, ping, plugin_env, run,
                      stdin_of, unique)


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


def test_a_caller_in_another_mount_namespace_that_sees_our_files_is_served(bin_dir, agent, net, netns):
    rc, res = add(bin_dir, net, netns, prefix=("unshare", "--mount"))
    assert rc == 0, res
    assert agent.served() == 1
    assert delete(bin_dir, net, netns) == (0, None)
    assert agent.served() == 2 and data_files(net) == [] and host_veths(net["bridge"]) == []


def test_a_caller_that_sees_other_files_is_refused_and_works_alone(bin_dir, agent, net, netns, state_dirs):
    """Its run dir is another filesystem than the agent's: the agent would
    write where the caller cannot see, so the caller does the work."""
    state_dirs["run"].mkdir(parents=True, exist_ok=True)
    other_run_dir = ("unshare", "--mount", "sh", "-c", 'mount -t tmpfs pycni-test "$PYCNI_RUN_DIR" && exec "$0"')
    rc, res = add(bin_dir, net, netns, prefix=other_run_dir)
    assert rc == 0, res
    assert agent.served() == 0 and "refused a caller" in agent.log()
    assert delete(bin_dir, net, netns) == (0, None)
    assert agent.served() == 1


def test_plugins_under_ip_netns_exec_reach_an_agent_started_the_same_way(bin_dir, net, make_netns, tmp_path):
    """Every `ip netns exec` makes a mount namespace of its own (with /sys
    remounted): the agent serves it, since /run and /var are the same."""
    host, pod = make_netns(), make_netns()
    in_host = ("ip", "netns", "exec", host)
    agent = RunningAgent(unique("pycni-test-agent-"), tmp_path / "agent.log", prefix=in_host)
    try:
        env = {"PYCNI_AGENT_SOCKET": agent.name}
        rc, res = add(bin_dir, net, pod, prefix=in_host, extra_env=env)
        assert rc == 0, res
        assert agent.served() == 1
        assert ping(pod, res["ips"][0]["gateway"])
        assert delete(bin_dir, net, pod, prefix=in_host, extra_env=env) == (0, None)
        assert agent.served() == 2
    finally:
        agent.stop()


@contextlib.contextmanager
def ipam_lock_held(conf):
    """Hold host-local's lock as a concurrent ADD would: an ADD now waits."""
    d = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    os.makedirs(d, exist_ok=True)
    fd = os.open(os.path.join(d, "lock"), os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        yield
    finally:
        os.close(fd)


def start_add(bin_dir, conf, ns, cid="c1"):
    env = plugin_env(bin_dir, "ADD", netns=f"/run/netns/{ns}", container_id=cid)
    proc = subprocess.Popen([os.path.join(bin_dir, "bridge")], env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(stdin_of(conf))
    proc.stdin.close()
    return proc


def nothing_left(conf, state_dirs):
    records = list(state_dirs["state"].rglob("*")) if state_dirs["state"].exists() else []
    return (data_files(conf) == [] and host_veths(conf["bridge"]) == [] and not in_ruleset(conf)
            and not [r for r in records if r.is_file()])


def test_an_add_whose_caller_was_killed_is_undone_and_del_waits_for_it(bin_dir, agent, net, netns, state_dirs):
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        with ipam_lock_held(net):
            proc = start_add(bin_dir, net, netns)
            time.sleep(0.3)
            proc.kill()
            proc.wait()
            deleting = pool.submit(delete, bin_dir, net, netns)
            time.sleep(0.3)
            assert not deleting.done()  # waiting for the ADD in flight
        assert deleting.result(timeout=30) == (0, None)
    time.sleep(1)
    assert "undid bridge ADD c1" in agent.log()
    assert nothing_left(net, state_dirs)


def test_an_agent_killed_mid_request_gives_the_caller_error_json(bin_dir, agent, net, netns, state_dirs):
    with ipam_lock_held(net):
        proc = start_add(bin_dir, net, netns)
        time.sleep(0.3)
        agent.proc.kill()
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(30)
    assert proc.returncode == 1 and b"Traceback" not in err, err
    error = json.loads(out)
    assert error["code"] == 11 and error["cniVersion"] == net["cniVersion"], error
    assert delete(bin_dir, net, netns) == (0, None)
    assert nothing_left(net, state_dirs)
    assert not [f for f in state_dirs["state"].rglob("*tmp*")]


def test_plugins_work_alone_once_the_agent_is_gone(bin_dir, agent, net, netns):
    agent.stop()
    rc, res = add(bin_dir, net, netns)
    assert rc == 0, res
    assert delete(bin_dir, net, netns) == (0, None)


def test_a_caller_with_relative_paths_elsewhere_than_the_agent_works_alone(bin_dir, agent, net, netns, tmp_path):
    """A relative dataDir means the caller's working directory: the agent,
    started elsewhere, would reserve the address in its own."""
    caller_dir = tmp_path / "caller"
    caller_dir.mkdir()
    relative = {**net, "ipam": {**net["ipam"], "dataDir": "ipam-rel"}}
    in_caller_dir = ("sh", "-c", f'cd "{caller_dir}" && exec "$0"')
    rc, res = add(bin_dir, relative, netns, prefix=in_caller_dir)
    assert rc == 0, res
    assert agent.served() == 0 and "refused a caller" in agent.log()
    assert os.listdir(caller_dir / "ipam-rel" / net["name"]) != []
    assert not os.path.exists("ipam-rel")
    assert delete(bin_dir, relative, netns, prefix=in_caller_dir) == (0, None)
    assert agent.served() == 0
    assert [f for f in os.listdir(caller_dir / "ipam-rel" / net["name"]) if f[0].isdigit()] == []
