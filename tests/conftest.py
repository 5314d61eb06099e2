"""Shared fixtures: real network namespaces, an installed bin dir, and
private state directories, each removed by a finalizer even when a test fails."""
import json
import os
import random
import signal
import subprocess
import sys
import uuid

import pytest

from cni_plugins.core import execute

REFERENCE_BIN = "/usr/lib/cni"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def run(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


PYCNI = [sys.executable, "-m", "pycni.cli"]


def lab_cli(root, *args, check=True) -> subprocess.CompletedProcess:
    """`pycni ARGS` with labs kept under ``root``; never a traceback."""
    out = subprocess.run([*PYCNI, *args], capture_output=True, text=True,
                         env={**os.environ, "PYCNI_LAB_ROOT": str(root)})
    assert not check or out.returncode == 0, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    return out


def stop_process(proc: subprocess.Popen, timeout: float, sig=signal.SIGTERM) -> bool:
    """Send ``sig`` and wait; kill after ``timeout`` s.  Whether it stopped
    on the signal (the exit status is then ``proc.returncode``)."""
    proc.send_signal(sig)
    try:
        proc.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return False


def _paths_under(root: str) -> set[str]:
    return {os.path.join(d, n) for d, dirs, files in os.walk(root) for n in dirs + files}


@pytest.fixture(scope="session", autouse=True)
def default_dirs_left_as_found():
    """Plugins that podman runs (or that run in a podman test's node
    namespace) use the default state and run dirs, which tests cannot
    redirect.  What a session adds there that only tells of work done goes
    at its end: resolver logs, lock files, dirs left empty.  Anything else
    new (a record, a pid file) stays, for someone to see."""
    from cni_plugins.core.request import DEFAULT_RUN_DIR, DEFAULT_STATE_DIR

    roots = [DEFAULT_STATE_DIR, DEFAULT_RUN_DIR]
    before = {root: (os.path.isdir(root), _paths_under(root)) for root in roots}
    yield
    for root, (existed, paths) in before.items():
        for path in sorted(_paths_under(root) - paths, key=len, reverse=True):   # deepest first
            name = os.path.basename(path)
            try:
                if os.path.isdir(path):
                    os.rmdir(path)   # only when empty
                elif name == "lock" or (name.startswith("resolver-") and name.endswith(".log")):
                    os.unlink(path)
            except OSError:
                pass
        if not existed:
            try:
                os.rmdir(root)
            except OSError:
                pass


@pytest.fixture
def make_netns():
    """Factory for named netns; every one made is deleted at teardown."""
    made = []

    def make(prefix="pt"):
        name = unique(prefix)
        run("ip", "netns", "add", name)
        made.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    yield make
    for name in made:
        run("ip", "netns", "delete", name, check=False)


@pytest.fixture
def netns(make_netns):
    return make_netns()


@pytest.fixture
def state_dirs(tmp_path, monkeypatch):
    """Private pycni state and run dirs (inherited by the plugins we exec)."""
    state = tmp_path / "state"
    rundir = tmp_path / "run"
    monkeypatch.setenv("PYCNI_STATE_DIR", str(state))
    monkeypatch.setenv("PYCNI_RUN_DIR", str(rundir))
    return {"state": state, "run": rundir, "data": tmp_path / "ipam"}


@pytest.fixture(scope="session")
def bin_dir(tmp_path_factory):
    from pycni.install import install

    d = tmp_path_factory.mktemp("bin")
    install(str(d))
    return str(d)


@pytest.fixture
def bridge_name():
    """A unique bridge name; the bridge and its nft state go at teardown."""
    name = unique("pbr")
    yield name
    run("ip", "link", "delete", name, check=False)


def plugin_env(bin_dir, command, *, netns="", container_id="c1", ifname="eth0", cni_args="",
               extra_env=None, path=None) -> dict:
    """The environment a runtime gives a plugin: CNI_* variables (plus our
    state-dir and agent overrides), no PATH."""
    env = execute.cni_environ({}, command, container_id=container_id, netns=netns, ifname=ifname,
                              args=cni_args, path=path or bin_dir)
    env.setdefault("CNI_NETNS", "")
    for key in ("PYCNI_STATE_DIR", "PYCNI_RUN_DIR", "PYCNI_AGENT_SOCKET", "PYCNI_NO_AGENT"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra_env or {})
    return env


def stdin_of(config) -> bytes:
    data = config if isinstance(config, (bytes, str)) else json.dumps(config)
    return data if isinstance(data, bytes) else data.encode()


def exec_plugin(bin_dir, plugin, command, config, *, prefix=(), **kw):
    """Run a plugin as a runtime does (see plugin_env); ``prefix`` wraps the
    command (e.g. `ip netns exec HOST`).  Returns (exit code, parsed stdout)."""
    out = execute.run([*prefix, os.path.join(bin_dir, plugin)], plugin_env(bin_dir, command, **kw),
                      stdin_of(config), timeout=60)
    text = out.stdout.decode().strip()
    return out.rc, (json.loads(text) if text else None)


# --- bridge networks ------------------------------------------------------------
def subnet24():
    return f"10.{random.randint(240, 249)}.{random.randint(0, 255)}.0/24"


@pytest.fixture
def net(bin_dir, bridge_name, state_dirs, tmp_path):
    """A bridge network config with a private dataDir and unique subnet.
    Teardown runs our GC with no valid attachment, so whatever a failed test
    left (records, nft elements, addresses) goes before the bridge does."""
    v4 = subnet24()
    conf = {
        "cniVersion": "1.0.0", "name": unique("net"), "type": "bridge", "bridge": bridge_name,
        "isGateway": True, "isDefaultGateway": True, "ipMasq": True,
        "ipam": {"type": "host-local", "dataDir": str(tmp_path / "ipam"),
                 "ranges": [[{"subnet": v4}]]},
    }
    yield conf
    exec_plugin(bin_dir, "bridge", "GC", {**conf, "cniVersion": "1.1.0", "cni.dev/valid-attachments": []},
                extra_env={"PYCNI_NO_AGENT": "1"})


def data_files(conf):
    d = os.path.join(conf["ipam"]["dataDir"], conf["name"])
    if not os.path.isdir(d):
        return []
    return sorted(f for f in os.listdir(d) if f != "lock" and not f.startswith("last_reserved_ip"))


def host_veths(bridge):
    out = run("ip", "-o", "link", "show", "master", bridge, check=False).stdout
    return [line.split(": ")[1].split("@")[0] for line in out.splitlines() if line]


def ruleset():
    return run("nft", "list", "ruleset").stdout


def in_ruleset(conf):
    """Does any nft rule or set element name an address of this network?"""
    prefix = conf["ipam"]["ranges"][0][0]["subnet"].rsplit(".", 1)[0] + "."
    return prefix in ruleset()


def ping(ns, addr, count=1):
    return subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", str(count), "-W", "2", addr],
                          capture_output=True).returncode == 0


def add(bin_dir, conf, ns, cid="c1", ifname="eth0", **kw):
    return exec_plugin(bin_dir, "bridge", "ADD", conf, netns=f"/run/netns/{ns}", container_id=cid,
                       ifname=ifname, **kw)


def delete(bin_dir, conf, ns, cid="c1", ifname="eth0", **kw):
    return exec_plugin(bin_dir, "bridge", "DEL", conf, netns=f"/run/netns/{ns}" if ns else "",
                       container_id=cid, ifname=ifname, **kw)
