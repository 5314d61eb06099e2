"""Queries per second of our dnsname resolver against dnsmasq (what the
reference dnsname runs) and aardvark-dns 1.4 (podman's newer resolver),
all serving the same container names, measured with dnsperf in one run.

Everything lives in a private network namespace made for the run (the
script re-executes itself inside it): its loopback holds one listen
address per server, the client's address and a local upstream resolver
(a dnsmasq owning ``example.test``) that every server forwards unknown
names to through its own default mechanism (the namespace's
/etc/resolv.conf), so no packet leaves it.

Each server is first asked a sample (short and full names, random letter
case, a forwarded name) and what it gets wrong is printed with its
figures.  Then every round runs every mix against every server, the
servers' order rotated by one per round; the figures are medians over the
rounds with min and max, ratios are taken per round against the dnsmasq
run of the same round, and the CPU time of each server (its /proc stat)
and of dnsperf (its rusage) is reported per answered query.  The mixes
(MIXES says the same in the output):

  repeated   N names, each in short and full form, shuffled, replayed over
             and over: after the first pass, any answer cache hits.
  distinct   the same names, every query with its own random letter case,
             from a file longer than any run: no two queries are the same
             bytes.  Names are case-insensitive, so the answers are the same.
  forwarded  the repeated mix with 10% unknown names (each one different),
             forwarded to the local upstream.
  nxdomain   every query a different unknown name under the domain: for
             pycni, the full parse-lookup-build path every time.

aardvark-dns is also measured at 10, 100 and 1,000 names with short and
full names apart: 1.4 answers a full name (name.domain) by scanning every
name of the network, so its cost grows with the network.
"""
import argparse
import itertools
import json
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

AARDVARK = "/usr/lib/podman/aardvark-dns"
DOMAIN = "dns.podman"
UPSTREAM_DOMAIN = "example.test"
UPSTREAM_ANSWER = "192.0.2.1"     # documentation address: data in answers, never a destination
UPSTREAM = "10.90.0.9"
CLIENT = "10.90.1.1"
SUBNET = "10.91"                  # containers 10.91.<i/250>.<i%250+2>
WORD = "webfrontend"              # names are WORD<i>: 11 letters to vary in case even in short form
SCALING = (10, 100, 1000)         # aardvark-dns network sizes
QPS_CEILING = 400_000             # more than any server here answers: sizes the files that must not repeat
TICK = os.sysconf("SC_CLK_TCK")
LOAD = os.getloadavg()            # the machine's load as the benchmark starts: others' work skews it


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def container_ip(i: int) -> str:
    return f"{SUBNET}.{i // 250}.{i % 250 + 2}"


def name(i: int, full: bool) -> str:
    return f"{WORD}{i}.{DOMAIN}" if full else f"{WORD}{i}"


def read_pid(path: str, seconds: float = 5.0) -> int:
    deadline = time.monotonic() + seconds
    while True:
        try:
            with open(path) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


# --- the servers ---------------------------------------------------------------------
class Server:
    def __init__(self, label: str, addr: str, names: int, note: str = ""):
        self.label, self.addr, self.names, self.note = label, addr, names, note
        self.pid = None


class Servers:
    def __init__(self, work: str, names: int):
        self.work = work
        self.names = names
        self.pids = []
        self.main = [
            Server("pycni", "10.90.0.1", names, "our resolver, as the dnsname plugin starts it"),
            Server("dnsmasq", "10.90.0.3", names, "what the reference dnsname runs, with its config"),
            Server("aardvark-dns", "10.90.0.4", names, "podman's resolver, 1.4"),
        ]
        self.aardvark_sizes = {n: Server(f"aardvark-dns, {n} names", f"10.90.0.{10 + k}", n)
                               for k, n in enumerate(SCALING) if n != names}
        self.aardvark_sizes[names] = self.main[2]

    def start_all(self):
        sh("ip", "link", "set", "lo", "up")
        addrs = [s.addr for s in self.main] + [s.addr for s in self.aardvark_sizes.values()] + [UPSTREAM, CLIENT]
        for addr in dict.fromkeys(addrs):
            sh("ip", "addr", "add", f"{addr}/32", "dev", "lo")
        self.start_upstream()
        pycni, dnsmasq, _ = self.main
        pycni.pid = self.start_pycni(pycni.addr)
        dnsmasq.pid = self.start_dnsmasq(dnsmasq.addr)
        for server in self.aardvark_sizes.values():
            server.pid = self.start_aardvark(server.addr, server.names)

    def start_upstream(self):
        pid = os.path.join(self.work, "upstream.pid")
        sh("dnsmasq", "--no-resolv", "--no-hosts", f"--listen-address={UPSTREAM}", "--bind-interfaces",
           "--except-interface=none", f"--address=/{UPSTREAM_DOMAIN}/{UPSTREAM_ANSWER}", f"--pid-file={pid}",
           "--user=root", "--cache-size=0")
        self.pids.append(read_pid(pid))

    def start_pycni(self, addr: str) -> int:
        from cni_plugins.dnsname import control, layout
        from cni_plugins.kernel.netns import current_inode

        base = layout.base_dir(os.path.join(self.work, "pycni"))
        ino = current_inode()
        netdir = os.path.join(base, "benchnet")
        os.makedirs(netdir)
        with open(os.path.join(netdir, "network.json"), "w") as f:
            json.dump({"domain": DOMAIN, "gateways": [addr], "upstreams": [], "netns": ino}, f)
        for i in range(self.names):
            with open(os.path.join(netdir, f"c{i:08d}-eth0.json"), "w") as f:
                json.dump({"containerID": f"c{i:08d}", "ifname": "eth0", "name": name(i, False),
                           "aliases": [], "ips": [f"{container_ip(i)}/16"]}, f)
        with layout.Lock(base):  # the plugin's own start path
            started = time.monotonic()
            control.notify(base, ino, start=True)
            self.start_seconds = time.monotonic() - started
            started = time.monotonic()
            control.notify(base, ino, start=False)
            self.reload_seconds = time.monotonic() - started
        pid = read_pid(layout.resolver_files(base, ino)["pid"])
        self.pids.append(pid)
        return pid

    def start_dnsmasq(self, addr: str) -> int:
        hosts = os.path.join(self.work, "addnhosts")
        with open(hosts, "w") as f:
            for i in range(self.names):
                f.write(f"{container_ip(i)}\t{name(i, False)}\n")
        pid = os.path.join(self.work, "dnsmasq.pid")
        conf = os.path.join(self.work, "dnsmasq.conf")
        with open(conf, "w") as f:  # the reference dnsname's template, on our address
            f.write(f"strict-order\nlocal=/{DOMAIN}/\ndomain={DOMAIN}\nexpand-hosts\npid-file={pid}\n"
                    f"except-interface=lo\nbind-interfaces\nlisten-address={addr}\n"
                    f"no-hosts\naddn-hosts={hosts}\n")
        sh("dnsmasq", f"--conf-file={conf}", "--user=root")
        pid = read_pid(pid)
        self.pids.append(pid)
        return pid

    def start_aardvark(self, addr: str, names: int) -> int:
        d = os.path.join(self.work, f"aardvark-{names}")
        os.makedirs(d)
        with open(os.path.join(d, "benchnet"), "w") as f:
            f.write(f"{addr}\n")
            # the client must be a container of the network: aardvark answers by requester
            f.write(f"{uuid.uuid4().hex * 2} {CLIENT}  benchclient\n")
            for i in range(names):
                f.write(f"{uuid.uuid4().hex * 2} {container_ip(i)}  {name(i, False)}\n")
        env = dict(os.environ, RUST_LOG="error")
        subprocess.run([AARDVARK, "--config", d, "-p", "53", "-f", "." + DOMAIN, "run"], check=True, env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = read_pid(os.path.join(d, "aardvark.pid"))
        self.pids.append(pid)
        return pid

    def stop_all(self):
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass


# --- correctness before speed --------------------------------------------------------
def random_case(text: str, rng) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in text)


def check_answers(server: Server, rng) -> list[str]:
    """What the server gets wrong in a sample; empty when all is right."""
    wrong = []
    for i in (0, server.names // 2, server.names - 1):
        for full in (False, True):
            for qname in (name(i, full), random_case(name(i, full), rng)):
                out = sh("dig", "+time=2", "+tries=1", "+noall", "+answer", "+question", "-b", CLIENT,
                         f"@{server.addr}", qname, "A", check=False).stdout
                answers = re.findall(r"^(\S+)\s+\d+\s+IN\s+A\s+(\S+)$", out, re.M)
                if [a for _, a in answers] != [container_ip(i)] or f";{qname}." not in out:
                    wrong.append(f"{qname} A -> {answers or 'no answer'}")
    out = sh("dig", "+short", "+time=2", "+tries=1", "-b", CLIENT, f"@{server.addr}",
             f"x1.{UPSTREAM_DOMAIN}", "A", check=False).stdout.split()
    if out != [UPSTREAM_ANSWER]:
        wrong.append(f"x1.{UPSTREAM_DOMAIN} A (forwarded) -> {out}")
    return wrong


# --- query files ---------------------------------------------------------------------
def letters_case(text: str, mask: int) -> str:
    """``text`` with its k-th letter upper-cased where bit k of ``mask`` is set."""
    out, k = [], 0
    for c in text:
        if c.isalpha():
            c = c.upper() if mask >> k & 1 else c
            k += 1
        out.append(c)
    return "".join(out)


def write_queries(work: str, names: int, seconds: int, rng) -> dict[str, tuple[str, int]]:
    """The query files, each (path, lines).  The files of the mixes whose
    queries must not repeat hold more lines than any run can send."""
    files = {}

    def write(key, lines):
        path = os.path.join(work, key)
        count = 0
        with open(path, "w") as f:
            for line in lines:
                f.write(line)
                count += 1
        files[key] = (path, count)

    pairs = [(i, full) for i in range(names) for full in (False, True)]
    rng.shuffle(pairs)
    write("repeated", (f"{name(i, full)} A\n" for i, full in pairs))

    def distinct():
        # pass t gives every (name, form) the case pattern t * odd mod 2^letters: a bijection,
        # so no line repeats while t < 2^letters (letters of the short form)
        for t in range(min(2 ** sum(c.isalpha() for c in WORD), QPS_CEILING * seconds // len(pairs) + 1)):
            rng.shuffle(pairs)
            mask = t * 0x9E3779B1
            yield from (f"{letters_case(name(i, full), mask)} A\n" for i, full in pairs)

    write("distinct", distinct())

    def forwarded():
        known = itertools.cycle(pairs)
        for k in range(QPS_CEILING * seconds // 10):  # every tenth line a different unknown name
            yield from (f"{name(*next(known))} A\n" for _ in range(9))
            yield f"u{k}.{UPSTREAM_DOMAIN} A\n"

    write("forwarded", forwarded())
    write("nxdomain", (f"n{k}-{WORD}.{DOMAIN} A\n" for k in range(QPS_CEILING * seconds)))
    for size in SCALING:
        for full in (False, True):
            write(f"aardvark-{size}-{'full' if full else 'short'}", (f"{name(i, full)} A\n" for i in range(size)))
    return files


# --- measuring -----------------------------------------------------------------------
def run_dnsperf(server: Server, qfile: str, args) -> dict:
    """dnsperf once, with the CPU seconds of the server (from /proc) and of dnsperf (rusage)."""
    before = cpu_seconds(server.pid)
    proc = subprocess.Popen(["dnsperf", "-s", server.addr, "-a", CLIENT, "-d", qfile, "-l", str(args.seconds),
                             "-c", str(args.clients), "-q", str(args.outstanding), "-t", "2"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out = proc.stdout.read().decode()
    err = proc.stderr.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    server_cpu = cpu_seconds(server.pid) - before
    if proc.returncode:
        raise SystemExit(f"dnsperf against {server.label} failed: {err.strip() or out[-500:]}")

    def grab(pattern, cast=float, default=0):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else default

    completed = grab(r"Queries completed:\s+(\d+)", int)
    sent = grab(r"Queries sent:\s+(\d+)", int)
    rcodes = re.findall(r"(\w+) (\d+) \([\d.]+%\)", grab(r"Response codes:\s+(.*)", str, ""))
    return {"qps": grab(r"Queries per second:\s+([\d.]+)"),
            "sent": sent,
            "lost": grab(r"Queries lost:\s+(\d+)", int),
            "rcodes": {k: int(v) for k, v in rcodes},
            "server_us": 1e6 * server_cpu / max(completed, 1),
            "client_us": 1e6 * (usage.ru_utime + usage.ru_stime) / max(completed, 1)}


MIXES = {  # name: (what it means, the response code every answer must have)
    "repeated": ("{n} names, each in short and full form ({q} questions), shuffled and replayed: "
                 "after the first pass, an answer cache could serve every query", "NOERROR"),
    "distinct": ("the same names, each query with its own random letter case, never repeated in a run: "
                 "no two queries are the same bytes, so no cache of query bytes can serve one "
                 "(pycni folds case into its keys, dnsmasq and aardvark into their name tables)", "NOERROR"),
    "forwarded": ("the repeated mix with every tenth query an unknown name (each a different one), "
                  "forwarded to the local upstream", "NOERROR"),
    "nxdomain": ("every query a different unknown name under the domain (NXDOMAIN): nothing is ready "
                 "or cached, so pycni parses, looks up and builds every answer in Python", "NXDOMAIN"),
}
TARGET_MIXES = ("repeated", "distinct")


def spread(values, fmt="{:,.0f}") -> str:
    return f"{fmt.format(statistics.median(values))} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def measure(servers: Servers, files: dict, args) -> tuple[dict, dict]:
    """Every mix against every server, ``args.rounds`` times, the servers'
    order rotated by one each round; then aardvark-dns by network size."""
    runs = {(mix, s.label): [] for mix in MIXES for s in servers.main}
    for r in range(args.rounds):
        order = servers.main[r % len(servers.main):] + servers.main[:r % len(servers.main)]
        for mix in MIXES:
            for server in order:
                fig = run_dnsperf(server, files[mix][0], args)
                runs[mix, server.label].append(fig)
                print(f"  round {r + 1} {mix:9s} {server.label:24s} {fig['qps']:>9,.0f} qps  lost {fig['lost']}",
                      flush=True)
    scaling = {}
    for r in range(args.rounds):
        for size in SCALING if r % 2 == 0 else SCALING[::-1]:
            for form in ("short", "full"):
                fig = run_dnsperf(servers.aardvark_sizes[size], files[f"aardvark-{size}-{form}"][0], args)
                scaling.setdefault((size, form), []).append(fig)
    return runs, scaling


def report(servers: Servers, runs: dict, scaling: dict, files: dict, wrong: dict, args) -> bool:
    dnsmasq = "dnsmasq"
    print(f"\ndns resolver: {args.names} names; dnsperf -c {args.clients} -q {args.outstanding} for "
          f"{args.seconds} s per run, {args.rounds} rounds with the servers' order rotated; "
          "median (min-max) over the rounds; ratios per round against dnsmasq's run of the same round; "
          "CPU in microseconds per answered query, server (its /proc stat) and dnsperf (rusage); "
          f"{os.cpu_count()} CPUs, load average {LOAD[0]:.1f} before, {os.getloadavg()[0]:.1f} after")
    for s in servers.main:
        verdict = "right" if not wrong[s.label] else "WRONG: " + "; ".join(wrong[s.label][:3])
        print(f"  {s.label:13s} {s.note}; sample answers (short, full, random case, forwarded) {verdict}")
    ratio = {}
    for mix, (meaning, rcode) in MIXES.items():
        print(f"\nmix {mix}: {meaning.format(n=args.names, q=2 * args.names)}; every answer should be {rcode}")
        if mix != "repeated":
            most = max(f["sent"] for s in servers.main for f in runs[mix, s.label])
            lines = files[mix][1]
            print(f"  query file of {lines:,} lines, the most any run sent {most:,}: "
                  + ("no query repeated" if most <= lines else "REPLAYED, queries repeated"))
        print(f"  {'server':24s} {'queries/s':>27s} {'vs dnsmasq':>19s} {'lost':>6s} {'server us/q':>12s} "
              f"{'client us/q':>12s}  response codes")
        for s in servers.main:
            figs = runs[mix, s.label]
            ratios = [f["qps"] / d["qps"] for f, d in zip(figs, runs[mix, dnsmasq]) if d["qps"]]
            ratio[mix, s.label] = statistics.median(ratios)
            rcodes = {}
            for f in figs:
                for k, v in f["rcodes"].items():
                    rcodes[k] = rcodes.get(k, 0) + v
            total = sum(rcodes.values()) or 1
            codes = ", ".join(f"{k} {100 * v / total:.1f}%" for k, v in sorted(rcodes.items(), key=lambda kv: -kv[1]))
            print(f"  {s.label:24s} {spread([f['qps'] for f in figs]):>27s} "
                  f"{spread(ratios, '{:.2f}x'):>19s} {sum(f['lost'] for f in figs):>6d} "
                  f"{statistics.median(f['server_us'] for f in figs):>12.2f} "
                  f"{statistics.median(f['client_us'] for f in figs):>12.2f}  {codes}")
    print("\naardvark-dns 1.4 by network size, queries/s median (min-max): a short name is one hash lookup; "
          "a full name (name.domain) is its slow path, found by scanning every name of the network")
    print(f"  {'names':>6s} {'short names':>27s} {'full names':>27s}")
    for size in SCALING:
        print(f"  {size:>6d} {spread([f['qps'] for f in scaling[size, 'short']]):>27s} "
              f"{spread([f['qps'] for f in scaling[size, 'full']]):>27s}")
    print()
    print(f"  pycni start with {args.names} names {1000 * servers.start_seconds:.0f} ms, reload "
          f"{1000 * servers.reload_seconds:.0f} ms (the plugin waits for it on every ADD and DEL)")
    ok = True
    for mix in TARGET_MIXES:
        met = ratio[mix, "pycni"] >= 1.0
        ok &= met
        print(f"  pycni / dnsmasq, {mix:9s} (median of rounds, target >= 1.0)  {ratio[mix, 'pycni']:5.2f}  "
              f"{'met' if met else 'NOT met'}")
    cpu = {mix: statistics.median(f["server_us"] for f in runs[mix, "pycni"])
           / statistics.median(f["server_us"] for f in runs[mix, dnsmasq]) for mix in MIXES}
    print("  server CPU per answer, pycni / dnsmasq (less is better; steadier than queries/s on a busy machine): "
          + ", ".join(f"{mix} {value:.2f}" for mix, value in cpu.items()))
    vs_aardvark = ratio["repeated", "pycni"] / ratio["repeated", "aardvark-dns"]
    ok &= vs_aardvark >= 1.5
    print(f"  pycni / aardvark-dns, repeated (target >= 1.5)  {vs_aardvark:5.1f}  {'met' if vs_aardvark >= 1.5 else 'NOT met'}")
    lost = sum(f["lost"] for mix in MIXES for f in runs[mix, "pycni"])
    wrong = sum(v for mix, (_, rcode) in MIXES.items() for f in runs[mix, "pycni"]
                for k, v in f["rcodes"].items() if k != rcode)
    print(f"  pycni: queries lost {lost}, answers with another response code than the mix's {wrong} (target 0, 0)")
    return ok and lost == 0 and wrong == 0


def inside(args) -> int:
    work = tempfile.mkdtemp(prefix="pycni-dnsbench-")
    servers = Servers(work, args.names)
    rng = random.Random(args.seed)
    try:
        servers.start_all()
        files = write_queries(work, args.names, args.seconds, rng)
        wrong = {server.label: check_answers(server, rng) for server in servers.main}
        if wrong["pycni"]:
            print(f"pycni answers wrongly: {'; '.join(wrong['pycni'])}")
            return 1
        runs, scaling = measure(servers, files, args)
        return 0 if report(servers, runs, scaling, files, wrong, args) else 1
    finally:
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=5, help="dnsperf -l, per run")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", type=int, default=1000, help="containers, one name each")
    ap.add_argument("--clients", type=int, default=4, help="dnsperf -c")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside:
        return inside(args)
    if args.rounds < 3 or args.names < max(SCALING):
        ap.error(f"at least 3 rounds and {max(SCALING)} names")
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if shutil.which(tool) is None:
            print(f"dns_resolver: {tool} is missing (tools/bootstrap installs it)", file=sys.stderr)
            return 1
    if not os.access(AARDVARK, os.X_OK):
        print(f"dns_resolver: {AARDVARK} is missing (Debian aardvark-dns)", file=sys.stderr)
        return 1
    node = "pbdns" + uuid.uuid4().hex[:6]
    etc = f"/etc/netns/{node}"  # `ip netns exec` mounts its resolv.conf: the servers' upstream
    os.makedirs(etc)
    try:
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            f.write(f"nameserver {UPSTREAM}\n")
        sh("ip", "netns", "add", node)
        cmd = ["ip", "netns", "exec", node, sys.executable, os.path.abspath(__file__), "--inside",
               *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd).returncode
    finally:
        sh("ip", "netns", "delete", node, check=False)
        shutil.rmtree(etc, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
