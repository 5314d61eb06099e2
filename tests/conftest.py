"""Shared fixtures: real network namespaces, an installed bin dir, and
private state directories, each removed by a finalizer even when a test fails."""
import json
import os
import subprocess
import uuid

import pytest

REFERENCE_BIN = "/usr/lib/cni"


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def run(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


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
    from cni_plugins.runtime.install import install

    d = tmp_path_factory.mktemp("bin")
    install(str(d))
    return str(d)


@pytest.fixture
def bridge_name():
    """A unique bridge name; the bridge and its nft state go at teardown."""
    name = unique("pbr")
    yield name
    run("ip", "link", "delete", name, check=False)


def exec_plugin(bin_dir, plugin, command, config, *, netns="", container_id="c1",
                ifname="eth0", cni_args="", extra_env=None, path=None):
    """Run a plugin as a runtime does: CNI_* variables and stdin only (plus
    our state-dir overrides), no PATH.  Returns (exit code, parsed stdout)."""
    env = {
        "CNI_COMMAND": command,
        "CNI_CONTAINERID": container_id,
        "CNI_NETNS": netns,
        "CNI_IFNAME": ifname,
        "CNI_PATH": path or bin_dir,
    }
    if cni_args:
        env["CNI_ARGS"] = cni_args
    for key in ("PYCNI_STATE_DIR", "PYCNI_RUN_DIR"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(extra_env or {})
    data = config if isinstance(config, (bytes, str)) else json.dumps(config)
    proc = subprocess.run(
        [os.path.join(bin_dir, plugin)], input=data if isinstance(data, bytes) else data.encode(),
        env=env, capture_output=True, timeout=60,
    )
    out = proc.stdout.decode().strip()
    return proc.returncode, (json.loads(out) if out else None)
