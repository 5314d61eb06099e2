"""Network policy at scale, on this machine, in one run:

1. compile and apply 1,000 policies (3,000 rules) over 5,000 endpoints:
   the incremental compiler's bulk load and one transaction into an empty
   network namespace (reading the 6,050 objects from a JSON list is shown
   apart); target under 2 s;
2. one pod ADD with those loaded: bridge alone against bridge + netpolicy,
   interleaved, through the node agent (`pycni agent`) with the policy
   controller serving the plugin (tests/netpolicy_controller.py, as the
   agent will run it); the new pods are labelled like pods already there
   (a deployment scaling up), and once more naming their "http" port with
   a number no pod has (new profiles for them and for the pods whose
   egress goes to "http": chains, so libnftables); bridge alone with no
   policy table loaded shows what our table costs other libnftables
   users.  Target: netpolicy adds under 20 ms to an ADD;
3. the controller's resident memory with them loaded (now and at peak);
4. TCP throughput (iperf3) between two pods on a bridge, both isolated by
   policies, with 10,000 policy rules loaded, against a twin node with no
   policy, interleaved; target at least 0.95.

Every figure is a median with min and max; ratios last.  Everything runs
in network namespaces made here and removed at the end, with private
state directories.
"""
import argparse
import hashlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from conftest import stop_process  # noqa: E402
from go import build_driver  # noqa: E402
from policy_worlds import large_world  # noqa: E402

from pycni.install import install  # noqa: E402

PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
CONTROLLER = os.path.join(ROOT, "tests", "netpolicy_controller.py")
PYCNI = os.path.join(os.path.dirname(sys.executable), "pycni")
TARGETS = {"compile+apply": 2.0, "added": 0.020, "throughput": 0.95}


def sh(*cmd, check=True, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, **kw)


def spread(samples) -> tuple[float, float, float]:
    return statistics.median(samples), min(samples), max(samples)


def write_objects(directory, objects):
    """As `kubectl get -o json` writes them: one List."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "objects.json"), "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": objects}, f)


class Bench:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.uid = uuid.uuid4().hex[:6]
        self.netns: list[str] = []
        self.procs: list[subprocess.Popen] = []
        self.bin = os.path.join(work, "bin")
        install(self.bin)
        self.driver = build_driver.build(work) if shutil.which("go") else None

    # --- namespaces and processes, all undone by close() -----------------------------
    def new_netns(self, prefix):
        name = f"{prefix}{self.uid}{len(self.netns)}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        self.netns.append(name)
        return name

    def start(self, netns, *cmd, ready=None):
        proc = subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", *cmd], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.procs.append(proc)
        if ready is not None:
            line = proc.stdout.readline()
            if ready not in line:
                raise RuntimeError(f"{cmd[0]} did not start: {line!r}")
        return proc

    def stop(self, proc):
        stop_process(proc, 30)
        self.procs.remove(proc)

    def close(self):
        for proc in list(self.procs):
            self.stop(proc)
        for name in reversed(self.netns):
            sh("ip", "netns", "delete", name, check=False)

    # --- 1. compile and apply -------------------------------------------------------------
    def compile_apply(self):
        directory = os.path.join(self.work, "world")
        write_objects(directory, [o for part in large_world(self.args.policies, self.args.pods) for o in part])
        code = f"""
import json, sys, time
sys.path[:0] = [{ROOT!r}]
from netpolicy.sources import DirectorySource
from netpolicy.incremental import IncrementalCompiler
from netpolicy.enforcer import Enforcer
from netpolicy.nft import Kernel
from netpolicy.compiler import TABLE
start = time.perf_counter()
inputs = DirectorySource({directory!r}).list()
parse = time.perf_counter() - start
times, cpu = [], []
for _ in range({self.args.repeat}):
    start, start_cpu = time.perf_counter(), time.process_time()
    compiler = IncrementalCompiler("node-1")
    compiler.load(inputs)
    commands = Enforcer().sync(compiler.tables())
    times.append(time.perf_counter() - start)
    cpu.append(time.process_time() - start_cpu)
    Kernel().apply([{{"delete": {{"table": {{"family": f, "name": TABLE}}}}}} for f in ("inet", "bridge")])
print(json.dumps({{"parse": parse, "times": times, "cpu": cpu, "commands": len(commands)}}))
"""
        node = self.new_netns("pbnp")
        out = json.loads(sh("nsenter", f"--net=/run/netns/{node}", sys.executable, "-c", code).stdout)
        return {"compile+apply": spread(out["times"]), "compile+apply cpu": spread(out["cpu"]),
                "parse": spread([out["parse"]]), "commands": out["commands"]}

    # --- 2. ADD latency ----------------------------------------------------------------------
    def conflist(self, name, bridge, subnet, netpolicy, socket_name=None):
        plugins = [{"type": "bridge", "bridge": bridge, "isGateway": True, "ipMasq": True,
                    "ipam": {"type": "host-local", "dataDir": os.path.join(self.work, "ipam"),
                             "ranges": [[{"subnet": subnet}]]}}]
        if netpolicy:
            plugins.append({"type": "netpolicy", "socket": socket_name, "namespace": "ns7",
                            "labelsDir": os.path.join(self.work, "labels")})
        path = os.path.join(self.work, f"{name}.conflist")
        with open(path, "w") as f:
            json.dump({"cniVersion": "1.0.0", "name": name, "plugins": plugins}, f)
        return path

    def cni(self, node, op, conf, pod, cid, env):
        if self.driver:
            cmd = [self.driver, op, "--conf", conf, "--netns", f"/run/netns/{pod}", "--id", cid,
                   "--ifname", "eth0", "--cni-path", self.bin, "--cache-dir", os.path.join(self.work, "cache")]
        else:
            cmd = [PYCNI, op, os.path.basename(conf)[:-len(".conflist")], f"/run/netns/{pod}"]
            env = dict(env, NETCONFPATH=self.work, CNI_PATH=self.bin, CNI_CACHE_DIR=os.path.join(self.work, "cache"),
                       CNI_CONTAINERID=cid)
        start = time.perf_counter()
        proc = subprocess.run(["nsenter", f"--net=/run/netns/{node}", *cmd], env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            raise RuntimeError(f"{op} {os.path.basename(conf)} failed: {proc.stdout}{proc.stderr}")
        return elapsed

    def container_id(self, pod):
        # our CLI names containers as cnitool does; the Go driver takes ours
        path = f"/run/netns/{pod}"
        return f"c{uuid.uuid4().hex[:12]}" if self.driver else "cnitool-" + hashlib.sha512(path.encode()).hexdigest()[:20]

    def label_file(self, cid, labels, http):
        """The pod's labels and named ports (the plugin's pod name is the
        container ID: the Go driver passes no K8S_POD_NAME)."""
        directory = os.path.join(self.work, "labels", "ns7")
        os.makedirs(directory, exist_ok=True)
        with open(os.path.join(directory, f"{cid}.json"), "w") as f:
            json.dump({"labels": labels, "ports": [{"name": "http", "containerPort": http}]}, f)

    def wait_for_socket(self, node, name, deadline=30.0):
        probe = f"import socket; socket.socket(socket.AF_UNIX).connect('\\0{name}')"
        end = time.monotonic() + deadline
        while sh("nsenter", f"--net=/run/netns/{node}", sys.executable, "-c", probe, check=False).returncode:
            if time.monotonic() > end:
                raise RuntimeError(f"nothing listens on @{name}")
            time.sleep(0.1)

    def add_latency(self):
        node = self.new_netns("pbnpn")
        agent_socket, policy_socket = f"pycni-bench-{self.uid}", f"pycni-policy-bench-{self.uid}"
        env = {"PATH": PATH, "PYCNI_STATE_DIR": os.path.join(self.work, "state"),
               "PYCNI_RUN_DIR": os.path.join(self.work, "run"), "PYCNI_AGENT_SOCKET": agent_socket}
        self.start(node, PYCNI, "agent", "--socket", agent_socket)
        self.wait_for_socket(node, agent_socket)
        bridge_only = self.conflist("pbnpbr", f"pbnp{self.uid}a", "10.251.0.0/16", False)
        chained = self.conflist("pbnpnp", f"pbnp{self.uid}b", "10.252.0.0/16", True, policy_socket)
        namespaces, pods, policies = large_world(self.args.policies, self.args.pods)
        like = next(p for p in pods if p["metadata"]["namespace"] == "ns7")["metadata"]["labels"]
        figures, samples = {}, {"bridge, no policy loaded": [], "bridge": [], "bridge+netpolicy": [],
                                "bridge+netpolicy, new port number": [], "bridge del": [],
                                "bridge+netpolicy del": []}

        def once(conf, http=None):
            pod = self.new_netns("pbnpp")
            cid = self.container_id(pod)
            if http is not None:
                self.label_file(cid, like, http)
            add = self.cni(node, "add", conf, pod, cid, env)
            dele = self.cni(node, "del", conf, pod, cid, env)
            sh("ip", "netns", "delete", pod)
            self.netns.remove(pod)
            return add, dele

        for i in range(self.args.iterations + 1):   # round 0 warms up and is dropped
            add, _ = once(bridge_only)
            if i:
                samples["bridge, no policy loaded"].append(add)
        directory = os.path.join(self.work, "policies")
        write_objects(directory, namespaces + pods + policies)
        start = time.perf_counter()
        controller = self.start(node, sys.executable, CONTROLLER, "--node", "node-1", "--state-dir",
                                os.path.join(self.work, "agent-state"), "--policy-dir", directory,
                                "--socket", policy_socket, ready="ready")
        figures["controller start"] = spread([time.perf_counter() - start])
        for i in range(self.args.iterations + 1):
            results = {"bridge": once(bridge_only),
                       "bridge+netpolicy": once(chained, 8080),
                       "bridge+netpolicy, new port number": once(chained, 20000 + i)}
            if i:
                for name, (add, dele) in results.items():
                    samples[name].append(add)
                samples["bridge del"].append(results["bridge"][1])
                samples["bridge+netpolicy del"].append(results["bridge+netpolicy"][1])
        figures.update({f"ADD {k}" if "del" not in k else f"DEL {k[:-4]}": spread(v) for k, v in samples.items()})
        figures["added"] = spread([b - a for a, b in zip(samples["bridge"], samples["bridge+netpolicy"])])
        status = open(f"/proc/{self.controller_pid(controller)}/status").read()
        figures["memory"] = {k: int(line.split()[1]) / 1024 for line in status.splitlines()
                             for k in ("VmRSS", "VmHWM") if line.startswith(k + ":")}
        self.stop(controller)
        return figures

    @staticmethod
    def controller_pid(proc):
        """The python under nsenter (nsenter execs it: the same pid)."""
        return proc.pid

    # --- 4. throughput ----------------------------------------------------------------------
    def throughput(self):
        nodes = {}
        for loaded in (False, True):
            node = self.new_netns("pbnpt")
            conf = self.conflist(f"pbnpt{int(loaded)}", f"pbnpt{self.uid}{int(loaded)}",
                                 f"10.25{3 + loaded}.0.0/16", False)
            env = {"PATH": PATH, "PYCNI_STATE_DIR": os.path.join(self.work, f"tstate{loaded}"),
                   "PYCNI_NO_AGENT": "1"}
            pods = [self.new_netns("pbnptp") for _ in range(2)]
            addresses = []
            for j, pod in enumerate(pods):
                self.cni(node, "add", conf, pod, f"t{int(loaded)}{j}", env)
                addresses.append(sh("ip", "-n", pod, "-j", "addr", "show", "eth0").stdout)
            addresses = [json.loads(a)[0]["addr_info"][0]["local"] for a in addresses]
            if loaded:
                self.load_rules(node, addresses)
            nodes[loaded] = (pods, addresses)
        samples = {False: [], True: []}
        for _ in range(self.args.throughput_runs):
            for loaded, (pods, addresses) in nodes.items():
                samples[loaded].append(self.iperf(pods, addresses[0]))
        return {"throughput none": spread(samples[False]), "throughput 10k rules": spread(samples[True])}

    def load_rules(self, node, addresses):
        """Policies with 10,000 rules over the world's pods, and the two
        bench pods isolated by them, with the iperf port allowed."""
        n = -(-self.args.throughput_rules // 3)
        namespaces, pods, policies = large_world(n, self.args.pods)
        for i, address in enumerate(addresses):
            pods.append({"apiVersion": "v1", "kind": "Pod", "metadata": {
                "name": f"iperf{i}", "namespace": "ns0", "labels": {"app": "iperf"}},
                "spec": {"nodeName": "node-1"}, "status": {"podIPs": [{"ip": address}]}})
        policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": "iperf", "namespace": "ns0"},
                         "spec": {"podSelector": {"matchLabels": {"app": "iperf"}},
                                  "policyTypes": ["Ingress", "Egress"],
                                  "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "iperf"}}}],
                                               "ports": [{"port": 5201}]}],
                                  "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "iperf"}}}],
                                              "ports": [{"port": 5201}]}]}})
        directory = os.path.join(self.work, "rules10k")
        write_objects(directory, namespaces + pods + policies)
        sh("nsenter", f"--net=/run/netns/{node}", PYCNI, "policy", "apply", "-f", directory, "--node", "node-1",
           "--state-dir", os.path.join(self.work, "none"))

    def iperf(self, pods, server_address):
        server = self.start(pods[0], "iperf3", "-s", "-1", "-p", "5201")
        time.sleep(0.3)
        out = sh("nsenter", f"--net=/run/netns/{pods[1]}", "iperf3", "-c", server_address, "-p", "5201",
                 "-t", str(self.args.seconds), "-J").stdout
        server.wait(10)
        self.procs.remove(server)
        return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def report(figures, client, args):
    print(f"\nnetwork policy at scale: {os.uname().nodename} ({os.cpu_count()} cores, kernel {os.uname().release}), "
          f"ADD client: {client}")
    print(f"{'figure':<48}{'median':>10}{'min':>10}{'max':>10}")
    objects = args.policies + args.pods + 50
    rows = [("compile+apply", f"compile+apply {args.policies:,} policies / {args.pods:,} pods (s)"),
            ("compile+apply cpu", "  (its CPU time, s)"),
            ("parse", f"  (reading their {objects:,} objects from JSON, s)"),
            ("controller start", "controller start with them (s)")]
    rows += [(k, f"{k} (ms)") for k in figures if k.startswith(("ADD ", "DEL "))]
    rows += [("added", "netpolicy added to an ADD (ms)"),
             ("throughput none", "TCP between two pods, no policy (Gbit/s)"),
             ("throughput 10k rules", f"TCP between two pods, {args.throughput_rules:,} rules (Gbit/s)")]
    for key, label in rows:
        median, low, high = figures[key]
        scale = 1000 if "(ms)" in label else 1
        print(f"{label:<48}{median * scale:>10.3f}{low * scale:>10.3f}{high * scale:>10.3f}")
    memory = figures["memory"]
    print(f"{'controller resident memory, now / peak (MB)':<48}{memory['VmRSS']:>10.1f}{memory['VmHWM']:>10.1f}")
    print(f"{'commands in the first transaction':<48}{figures['commands']:>10}")
    ratio = figures["throughput 10k rules"][0] / figures["throughput none"][0]
    checks = [("compile+apply", figures["compile+apply"][0], "<", TARGETS["compile+apply"], "s"),
              ("netpolicy added to an ADD", figures["added"][0] * 1000, "<", TARGETS["added"] * 1000, "ms"),
              (f"throughput with {args.throughput_rules:,} rules / none", ratio, ">=", TARGETS["throughput"], "")]
    print("\nagainst the targets (medians)")
    failed = False
    for name, value, op, target, unit in checks:
        ok = value < target if op == "<" else value >= target
        failed |= not ok
        print(f"  {name:<42}{value:>8.3f} {unit:<3} target {op} {target} {unit}  {'met' if ok else 'MISSED'}")
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--policies", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5, help="compile+apply runs")
    parser.add_argument("--iterations", type=int, default=15, help="ADDs of each kind")
    parser.add_argument("--throughput-rules", type=int, default=10000)
    parser.add_argument("--throughput-runs", type=int, default=5)
    parser.add_argument("--seconds", type=int, default=4, help="per iperf3 run")
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="pycni-bench-netpolicy-")
    bench = Bench(args, work)
    try:
        figures = bench.compile_apply()
        figures.update(bench.add_latency())
        figures.update(bench.throughput())
    finally:
        bench.close()
        shutil.rmtree(work, ignore_errors=True)
    return 1 if report(figures, "Go libcni" if bench.driver else "pycni", args) else 0


if __name__ == "__main__":
    sys.exit(main())
