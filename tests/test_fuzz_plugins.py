"""Fuzzing every plugin we ship through its installed executable, as a
runtime drives it, in real namespaces (issue 11).

Each hypothesis example is a batch of generated inputs (tests/fuzz_inputs.py)
run by parallel workers, each on a private node (tests/fuzz_site.py).  For
every input: ADD (or whatever command it names), CHECK now and then, and
the runtime's DEL (with the ADD's result as prevResult, sometimes after the
container's netns is gone), and for each of these:

* stdout is JSON: a well-formed result in the requested version on success,
  the spec's error object on failure, with a spec code or one of ours
  (999, "a bug", fails the test), 6 when stdin cannot be decoded;
* no traceback on stderr or in the agent's log;
* a failed ADD leaves nothing, and after the DEL nothing is left either:
  links, qdiscs, nft elements, container sysctls and link attributes,
  records, address files, temporary files (one snapshot comparison);
* the DEL after a successful ADD succeeds;
* an ADD that cannot succeed does not: the overlay plugin's with no
  usable node state, netpolicy's with no policy controller to ask.

Chained plugins get the prevResult of a real bridge attachment on their
node (sometimes edited, replaced or missing).  Each node's agent runs the
network-policy duty (the netpolicy plugin's controller, its registrations
and nft elements in the snapshot) and the node holds the overlay's node
state file as the overlay duty writes it; an overlay input may replace it
for its run (none, a clean leave's, damaged, edited).  Deterministic: a fixed seed
(PYCNI_FUZZ_SEED, printed); PYCNI_FUZZ_SCALE multiplies the number of
examples (`tools/fuzz` runs the long version).
"""
import concurrent.futures
import json
import os
import shutil
import time
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

import fuzz_inputs as fi
from cni_output import output_problems
from fuzz_site import NETWORK, Site, report_line
from ipam.config import DEFAULT_DATA_DIR

SEED = int(os.environ.get("PYCNI_FUZZ_SEED", "1123"))
SCALE = float(os.environ.get("PYCNI_FUZZ_SCALE", "1"))
WORKERS = int(os.environ.get("PYCNI_FUZZ_WORKERS", "4"))
PER_WORKER = 2   # inputs per worker per example
# examples per plugin: WORKERS * PER_WORKER inputs each; 2,464 inputs in all by default
EXAMPLES = {"bridge": 40, "host-local": 32, "loopback": 24, "portmap": 32, "firewall": 28, "tuning": 32,
            "bandwidth": 32, "dnsname": 32, "overlay": 28, "netpolicy": 28}
TOTALS = {"inputs": 0, "execs": 0, "seconds": 0.0}
ADDED = {}   # plugin -> inputs whose ADD succeeded: how deep the inputs reach


@pytest.fixture(scope="module")
def sites(bin_dir, tmp_path_factory, pytestconfig):
    """One node per worker, its agent enforcing fi.POLICIES, the overlay's
    node state written, the pods' label files in place."""
    policies = tmp_path_factory.mktemp("fuzz-policies") / "policies.json"
    policies.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": fi.POLICIES}))
    made = []
    default_data = os.path.join(DEFAULT_DATA_DIR, NETWORK)   # inputs without a dataDir reserve there
    existed = os.path.exists(default_data)
    try:
        for i in range(WORKERS):
            made.append(Site(tmp_path_factory.mktemp(f"fuzz{i}"), bin_dir, f"10.{240 + i}.7.0/24", overlay_node=True,
                             policy_dir=policies))
            fi.write_label_files(fi.labels_dir(made[-1]))
        yield made
    finally:
        for site in made:
            site.close()
        if not existed:
            shutil.rmtree(default_data, ignore_errors=True)
        report_line(pytestconfig, f"\nfuzz: seed {SEED}, scale {SCALE}: {TOTALS['inputs']} plugin inputs, "
                                  f"{TOTALS['execs']} plugin runs in {TOTALS['seconds']:.1f} s; ADD succeeded for "
                                  + ", ".join(f"{plugin} {n}" for plugin, n in sorted(ADDED.items())))


def _reservations(data_dir: str) -> list[str]:
    """host-local's address files in ``data_dir`` (not its lock and cursors)."""
    try:
        return [f for f in os.listdir(data_dir) if f != "lock" and not f.startswith("last_reserved_ip")]
    except FileNotFoundError:
        return []


def problems_of(out, command, version, undecodable: bool = False, label: str = "") -> list[str]:
    return [f"{label or command}: {p}" for p in output_problems(out.rc, out.stdout, out.stderr, command, version,
                                                                 undecodable)]


def diff(before: dict, after: dict) -> list[str]:
    return [f"{key}: before {before[key]!r}, after {after[key]!r}" for key in before if before[key] != after[key]]


# --- one input, as a runtime goes through it --------------------------------------------------
class Worker:
    """Runs inputs on one site; for chained plugins it keeps a bridge
    attachment whose result is their prevResult."""

    def __init__(self, site: Site):
        self.site = site
        self.attachment = None
        self.log_seen = 0
        self.execs = self.added = 0

    def exec(self, plugin, env, stdin):
        self.execs += 1
        return self.site.exec(plugin, env, stdin)

    def bridge(self, command, netns_path, prev=None):
        conf = self.site.bridge_config(**({"prevResult": prev} if prev else {}))
        env = self.site.environ(command, container_id=fi.CONTAINER_ID, netns_path=netns_path, agent=False)
        out = self.exec("bridge", env, json.dumps(conf).encode())
        assert out.rc == 0, f"bridge {command} of the chain's attachment failed: {out.stdout} {out.stderr}"
        return json.loads(out.stdout) if out.stdout.strip() else None

    def attach(self):
        if self.attachment is None:
            self.attachment = self.bridge("ADD", self.site.pod_path)
        return self.attachment

    def detach(self, netns_path=None):
        if self.attachment is not None:
            self.bridge("DEL", self.site.pod_path if netns_path is None else netns_path, self.attachment)
            self.attachment = None

    def run(self, inp: fi.Input) -> list[str]:
        if inp.node_state == ("agent",):
            return self.run_on_node(inp)
        self.site.put_node_state(*fi.node_state_files(inp, self.site))
        try:
            return self.run_on_node(inp)
        finally:
            self.site.restore_node_state()

    def run_on_node(self, inp: fi.Input) -> list[str]:
        site = self.site
        chained = inp.plugin in fi.CHAINED
        real_prev = self.attach() if chained else None
        before = site.observe()
        doc = fi.config_document(inp, site, real_prev)
        stdin, undecodable = fi.serialize(doc, inp.raw)
        env = fi.environment(inp, site)
        command = env.get("CNI_COMMAND")
        version = fi.effective_version(stdin)
        out = self.exec(inp.plugin, env, stdin)
        problems = problems_of(out, command, version, undecodable)
        added = command == "ADD" and out.rc == 0
        doomed = fi.doomed(inp, doc, site)
        if added and doomed:
            problems.append(f"ADD succeeded although {doomed}: {out.stdout!r}")
        if command == "ADD" and not added:
            problems += [f"left by the failed ADD: {d}" for d in diff(before, site.observe())]
        if command == "ADD" and inp.again:  # a runtime retrying, with the config as it is now
            doc = fi.config_document(replace(inp, edits=()), site, real_prev)
            stdin, undecodable = fi.serialize(doc, "")
            version = fi.effective_version(stdin)
            again = self.exec(inp.plugin, env, stdin)
            problems += problems_of(again, "ADD", version, label="ADD again")
            if again.rc == 0 and fi.doomed(inp, doc, site):
                problems.append(f"ADD again succeeded although {fi.doomed(inp, doc, site)}")
            added, out = (True, again) if again.rc == 0 else (added, out)
        del_stdin = stdin
        if added and version in ("0.4.0", "1.0.0", "1.1.0"):
            del_stdin = json.dumps({**json.loads(stdin), "prevResult": json.loads(out.stdout)}).encode()
            if inp.check:
                problems += problems_of(self.exec(inp.plugin, {**env, "CNI_COMMAND": "CHECK"}, del_stdin), "CHECK",
                                        version)
        netns_path = None
        if inp.gone:
            gone = site.container_gone()
            netns_path = gone if inp.gone == "missing" else ""
        out = self.exec(inp.plugin, fi.environment(inp, site, command="DEL", netns=netns_path), del_stdin)
        problems += problems_of(out, "DEL", version, undecodable)
        self.added += added
        if added and out.rc != 0:
            problems.append(f"DEL after a successful ADD failed: {out.stdout!r}")
        if inp.gone and chained:  # the rest of the chain's DEL: the attachment went with the netns
            self.detach(netns_path)
            before = site.pristine
        problems += [f"left after DEL: {d}" for d in diff(before, site.observe())]
        return problems

    def agent_problems(self) -> list[str]:
        log = self.site.agent_log()
        new, self.log_seen = log[self.log_seen:], len(log)
        problems = [f"agent log: {new[new.index('Traceback'):][:2000]}"] if "Traceback" in new else []
        if self.site.agent is not None and self.site.agent.proc.poll() is not None:
            problems.append("the agent died")
        return problems

    def reset(self) -> None:
        self.site.reset()
        self.attachment, self.log_seen = None, 0


def run_batch(workers: list[Worker], batch: list[fi.Input]) -> None:
    def work(i):
        worker, failures = workers[i], []
        for inp in batch[i::len(workers)]:
            try:
                problems = worker.run(inp)
            except Exception as e:  # noqa: BLE001 - the harness's own trouble is a failure too
                problems = [f"{type(e).__name__}: {e}"]
            problems += worker.agent_problems()
            if problems:
                failures.append((inp, problems))
                worker.reset()
        return failures

    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(len(workers)) as pool:
        failures = [f for found in pool.map(work, range(len(workers))) for f in found]
    TOTALS["inputs"] += len(batch)
    TOTALS["seconds"] += time.monotonic() - started
    if failures:
        inp, problems = failures[0]
        raise AssertionError(f"{len(failures)} input(s) failed; the first: {inp}\n" + "\n".join(problems))


@pytest.mark.parametrize("plugin", sorted(EXAMPLES))
def test_fuzz_plugin(plugin, sites):
    workers = [Worker(site) for site in sites]
    examples = max(1, round(EXAMPLES[plugin] * SCALE))
    ran = []

    @seed(SEED)
    @settings(max_examples=examples, deadline=None, database=None, print_blob=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(fi.plugin_input(plugin), min_size=WORKERS * PER_WORKER, max_size=WORKERS * PER_WORKER))
    def fuzz(batch):
        ran.append(len(batch))
        run_batch(workers, batch)

    try:
        fuzz()
        for worker in workers:  # the chain's attachment goes, and with it everything
            worker.detach()
            assert worker.site.observe() == worker.site.pristine
    finally:
        TOTALS["execs"] += sum(w.execs for w in workers)
        ADDED[plugin] = sum(w.added for w in workers)
        for worker in workers:
            if worker.attachment is not None:
                worker.reset()
    assert sum(ran) >= examples * WORKERS * PER_WORKER


def test_nothing_reserved_in_the_default_data_dir(sites):
    """Inputs without a dataDir share host-local's default one, outside any
    site's snapshot: after every plugin's run it must hold no reservation."""
    assert _reservations(os.path.join(DEFAULT_DATA_DIR, NETWORK)) == []   # last in the file: after them all
