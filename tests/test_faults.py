"""kill -9 at random moments of ADD and DEL, of the plugin and of the agent
(issue 11): then the runtime's DEL and a new ADD, and nothing leaked,
nothing duplicated.

A runtime drives the chain bridge (host-local, ipMasq) -> portmap ->
firewall for containers on a private node (tests/fuzz_site.py), as libcni
does: ADD plugin by plugin with the previous result, and when anything
fails, DEL of the whole chain in reverse (with the cached result when the
ADD had completed).  A kill is a real SIGKILL at a real moment: after a
seeded delay of 0-100 % of such a run's usual duration (learnt as it
goes) from the plugin's start, sent to the plugin process or to the agent
serving it (which is then restarted, as systemd would).
After every recovery the node must hold exactly what the live containers
need: one veth each, one address file each (no address twice), one record
per plugin each, and the nft elements of their addresses and ports, once.
PYCNI_FUZZ_SEED seeds the kills; PYCNI_FUZZ_SCALE multiplies the rounds.
"""
import concurrent.futures
import json
import os
import random
import signal
import threading
import time

import pytest

from cni_output import output_problems
from fuzz_site import NETWORK, Site, report_line

SEED = int(os.environ.get("PYCNI_FUZZ_SEED", "1123"))
SCALE = float(os.environ.get("PYCNI_FUZZ_SCALE", "1"))
ROUNDS = max(1, round(40 * SCALE))
CONTAINERS = max(2, round(12 * SCALE))
SLOTS = 4
CHAIN = ("bridge", "portmap", "firewall")
VERSION = "1.0.0"


@pytest.fixture(params=[False, True], ids=["alone", "agent"])
def site(request, bin_dir, tmp_path):
    s = Site(tmp_path / "site", bin_dir, "10.239.3.0/24", with_agent=request.param)
    yield s
    s.close()


@pytest.fixture
def report(request, pytestconfig):
    """Prints how many kills hit a run in flight, whatever -q says."""
    lines = []
    yield lines.append
    for line in lines:
        report_line(pytestconfig, f"\n{request.node.name}: {line}")


class Runtime:
    """A runtime's view of the chain on one node: ADD/DEL of containers,
    each in its own netns, with an optional kill during one plugin run."""

    def __init__(self, site: Site, pods: list[str]):
        self.site, self.pods = site, pods
        self.problems: list[str] = []
        self.refusals: list[str] = []   # failures not caused by a kill of the run itself
        self.interrupted = {"plugin": 0, "agent": 0}  # kills that hit a run before it ended
        self.usual: dict = {}   # (plugin, command) -> seconds a run takes
        self._lock = threading.Lock()
        self._agent_lock = threading.Lock()

    def config(self, plugin: str, slot: int, prev) -> bytes:
        if plugin == "bridge":
            conf = self.site.bridge_config(VERSION)
        else:
            conf = {"cniVersion": VERSION, "name": NETWORK, "type": plugin}
        if plugin == "portmap":
            conf["runtimeConfig"] = {"portMappings": [{"hostPort": 20000 + slot, "containerPort": 80,
                                                       "protocol": "tcp"}]}
        if prev is not None:
            conf["prevResult"] = prev
        return json.dumps(conf).encode()

    def run(self, plugin: str, command: str, slot: int, prev, kill=None):
        """One plugin run; ``kill`` = (fraction, target): SIGKILL the plugin
        or the agent that fraction of the run's usual duration after its
        start.  Returns (rc, stdout)."""
        env = self.site.environ(command, container_id=f"fault{slot}", netns_path=f"/run/netns/{self.pods[slot]}")
        started = time.monotonic()
        proc = self.site.start(plugin, env, self.config(plugin, slot, prev))
        if kill is not None:
            fraction, target = kill
            time.sleep(fraction * self.usual.get((plugin, command), 0.05))
            running = proc.poll() is None
            if target == "plugin":
                proc.kill()
            else:
                self.kill_agent()
            with self._lock:
                self.interrupted[target] += running
        out, err = proc.communicate(timeout=120)
        if proc.returncode != -signal.SIGKILL:
            found = output_problems(proc.returncode, out, err.decode(errors="replace"), command, VERSION)
            with self._lock:
                self.problems += [f"{plugin} {command} fault{slot}: {p}" for p in found]
                if proc.returncode != 0 and not found:
                    self.refusals.append(json.loads(out))
                if kill is None and proc.returncode == 0:  # how long such a run takes, lately
                    took, key = time.monotonic() - started, (plugin, command)
                    self.usual[key] = (self.usual.get(key, took) + took) / 2
        return proc.returncode, out

    def kill_agent(self) -> None:
        agent = self.site.agent
        with self._agent_lock:
            if agent is not None and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGKILL)
                agent.proc.wait()

    def revive_agent(self) -> None:
        """Start the agent again if it was killed (not while it starts)."""
        agent = self.site.agent
        with self._agent_lock:
            if agent is not None and agent.proc.poll() is not None:
                agent.start()

    def add(self, slot: int, kill=None, step: int = 0):
        """ADD of the chain (the kill during plugin ``step``); the result,
        or None when it failed (the runtime then owes a DEL)."""
        prev = None
        for i, plugin in enumerate(CHAIN):
            rc, out = self.run(plugin, "ADD", slot, prev, kill if i == step else None)
            if rc != 0:
                return None
            prev = json.loads(out)
        return prev

    def delete(self, slot: int, prev, kill=None, step: int = 0) -> bool:
        """DEL of the chain in reverse; whether every plugin succeeded."""
        ok = True
        for i, plugin in enumerate(reversed(CHAIN)):
            rc, _ = self.run(plugin, "DEL", slot, prev, kill if i == step else None)
            ok = ok and rc == 0
        return ok

    def recover_and_readd(self, slot: int, prev):
        """After a failed or killed command: the DEL that must succeed, then
        a new ADD that must."""
        self.revive_agent()
        assert self.delete(slot, prev), f"DEL of fault{slot} failed after a kill: {self.problems}"
        result = self.add(slot)
        assert result is not None, f"ADD of fault{slot} failed after the recovery: {self.problems}"
        return result


# --- what the node holds --------------------------------------------------------------------
def holdings(site: Site, live: dict[int, dict]) -> dict:
    """What the node holds and what ``live`` ({slot: result}) needs, side by side."""
    seen = site.observe()
    addresses = {slot: r["ips"][0]["address"].split("/")[0] for slot, r in live.items()}
    data = site.data / NETWORK
    owners = sorted(p.read_bytes().decode().split("\r\n")[0] for p in data.iterdir()
                    if p.name[0].isdigit()) if data.is_dir() else []
    nft = {table: dict(sets) for table, sets in seen["nft"].items()}

    def elements(table, name):
        return [json.loads(e) for e in nft.get(table, {}).get(name, [])]

    return {
        "host veths": (len([link for link in seen["node links"] if link[2] == site.bridge]), len(live)),
        "address owners": (owners, sorted(f"fault{slot}" for slot in live)),
        "addresses": (sorted(p.name for p in data.iterdir() if p.name[0].isdigit()) if data.is_dir() else [],
                      sorted(addresses.values())),
        "records": ({kind: sorted(p.name.split(":")[0] for p in (site.state / kind / NETWORK).glob("*.json"))
                     for kind in CHAIN},
                    {kind: sorted(f"fault{slot}" for slot in live) for kind in CHAIN}),
        "masquerade": (sorted(elements("inet pycni_bridge", "masq4")), sorted(addresses.values())),
        "published ports": (len(elements("inet pycni_portmap", "addr4")), len(live)),
        "firewall": (sorted(elements("inet pycni_firewall", "ctr4")), sorted(addresses.values())),
        "tables when idle": (sorted(nft) if not live else [], []),
        "temporary files": ([f for f in seen["files"] if ".tmp" in f], []),
    }


def check_node(site: Site, live: dict, runtime: Runtime, what: str) -> None:
    wrong = {k: v for k, v in holdings(site, live).items() if v[0] != v[1]}
    assert not wrong, f"after {what}: (has, needs) {wrong}"
    assert not runtime.problems, runtime.problems
    # the one error a kill may cause in a run not killed itself: its agent went away (11)
    assert all(e["code"] == 11 for e in runtime.refusals), runtime.refusals
    log = site.agent_log()
    assert "Traceback" not in log, log[log.index("Traceback"):][:3000]


# --- the tests ------------------------------------------------------------------------------
def test_kill_at_random_moments_then_del_and_add_again(site, make_netns, report):
    rng = random.Random(SEED)
    runtime = Runtime(site, [make_netns("pflt") for _ in range(SLOTS)])
    targets = ["plugin", "agent"] if site.agent is not None else ["plugin"]
    live, kills = {0: runtime.add(0)}, 0   # also learns how long runs take
    for round_ in range(ROUNDS):
        slot, phase, step = rng.randrange(SLOTS), rng.choice(["ADD", "DEL"]), rng.randrange(len(CHAIN))
        kill = (rng.random(), rng.choice(targets))
        what = f"round {round_}: {kill[1]} killed {kill[0]:.0%} into {CHAIN[step]} {phase} of fault{slot}"
        if phase == "ADD":
            if slot in live:
                assert runtime.delete(slot, live.pop(slot)), runtime.problems
            result = runtime.add(slot, kill, step)
            prev = None if result is None else result
        else:
            if slot not in live:
                live[slot] = runtime.recover_and_readd(slot, None)
            prev = live.pop(slot)
            runtime.delete(slot, prev, kill, len(CHAIN) - 1 - step)
        kills += 1
        live[slot] = runtime.recover_and_readd(slot, prev)
        check_node(site, live, runtime, what)
    for slot in list(live):
        assert runtime.delete(slot, live.pop(slot)), runtime.problems
    check_node(site, live, runtime, "deleting every container")
    assert site.observe() == site.pristine
    report(f"seed {SEED}: {kills} kills, {runtime.interrupted} of them during a run")
    assert sum(runtime.interrupted.values()) >= ROUNDS // 4  # the delays do hit runs in flight


def test_concurrent_adds_and_dels_with_random_kills(site, make_netns, report):
    """Many containers at once, each killed at random moments of its ADD and
    DEL (with the agent: the agent killed too, while requests are in flight)."""
    runtime = Runtime(site, [make_netns("pflt") for _ in range(CONTAINERS)])
    targets = ["plugin", "agent"] if site.agent is not None else ["plugin"]
    # each container kills the agent twice at most: that many runs may see it go (11), then one succeeds
    RETRIES = 2 * CONTAINERS + 2

    def life(slot):
        rng = random.Random(SEED * 1000 + slot)

        def maybe_kill():
            return (rng.random(), rng.choice(targets)) if rng.random() < 0.6 else None

        def recover(prev):
            """The runtime's DEL, again while the agent is killed under it."""
            for _ in range(RETRIES):
                runtime.revive_agent()
                if runtime.delete(slot, prev):
                    return
            raise AssertionError(f"DEL of fault{slot} never succeeded: {runtime.problems} {runtime.refusals}")

        def add_until_done(kill=None):
            """ADD; after a failure (a kill, or the agent killed under it by
            another container's round) DEL, and ADD again."""
            for attempt in range(RETRIES):
                result = runtime.add(slot, kill if attempt == 0 else None, rng.randrange(len(CHAIN)))
                if result is not None:
                    return result
                recover(None)
            raise AssertionError(f"fault{slot} never got added: {runtime.problems} {runtime.refusals}")

        result = add_until_done(maybe_kill())
        if not runtime.delete(slot, result, maybe_kill(), rng.randrange(len(CHAIN))):
            recover(result)
        result = add_until_done()
        return slot, result

    with concurrent.futures.ThreadPoolExecutor(CONTAINERS) as pool:
        live = dict(pool.map(life, range(CONTAINERS)))
    runtime.revive_agent()
    assert all(live.values()), runtime.problems
    check_node(site, live, runtime, f"{CONTAINERS} concurrent lives with kills")
    with concurrent.futures.ThreadPoolExecutor(CONTAINERS) as pool:
        assert all(pool.map(lambda s: runtime.delete(s, live[s]), list(live))), runtime.problems
    check_node(site, {}, runtime, "deleting every container")
    assert site.observe() == site.pristine
    report(f"seed {SEED}: {CONTAINERS} containers, kills during a run: {runtime.interrupted}")
