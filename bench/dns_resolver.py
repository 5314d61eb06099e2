"""Queries per second of our dnsname resolver against dnsmasq (what the
reference dnsname runs) and aardvark-dns (podman's newer resolver), all
answering the same container names, measured with dnsperf in one run.

Everything lives in a private network namespace made for the run (the
script re-executes itself inside it): its loopback holds one listen address
per server and the client's address, so no packet leaves it.  Each
server is checked to answer a sample of names correctly before it is
measured; then dnsperf runs the same query file against each in turn
(``--rounds`` times, interleaved, best round kept) and the figures and the
ratios are printed.  Targets: ours >= dnsmasq and >= 1.5x aardvark-dns,
no lost queries.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

AARDVARK = "/usr/lib/podman/aardvark-dns"
DOMAIN = "dns.podman"
NETWORK = "benchnet"
SUBNET = "10.91"          # containers 10.91.<i/250>.<i%250+2>
ADDRS = {"pycni": "10.90.0.1", "dnsmasq": "10.90.0.2", "aardvark-dns": "10.90.0.3"}
CLIENT = "10.90.1.1"


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def container_ip(i: int) -> str:
    return f"{SUBNET}.{i // 250}.{i % 250 + 2}"


class Servers:
    def __init__(self, work: str, names: int):
        self.work = work
        self.names = names
        self.procs = []
        self.pidfiles = []

    def start_all(self):
        sh("ip", "link", "set", "lo", "up")
        for addr in list(ADDRS.values()) + [CLIENT]:
            sh("ip", "addr", "add", f"{addr}/32", "dev", "lo")
        self.start_pycni()
        self.start_dnsmasq()
        self.start_aardvark()

    def start_pycni(self):
        from cni_plugins.dnsname import control, layout
        from cni_plugins.kernel.netns import current_inode

        base = layout.base_dir(os.path.join(self.work, "pycni-run"))
        ino = current_inode()
        netdir = os.path.join(base, NETWORK)
        os.makedirs(netdir)
        with open(os.path.join(netdir, "network.json"), "w") as f:
            json.dump({"domain": DOMAIN, "gateways": [ADDRS["pycni"]], "upstreams": [], "netns": ino}, f)
        for i in range(self.names):
            with open(os.path.join(netdir, f"c{i:08d}-eth0.json"), "w") as f:
                json.dump({"containerID": f"c{i:08d}", "ifname": "eth0", "name": f"c{i}",
                           "aliases": [f"web{i}"], "ips": [f"{container_ip(i)}/16"]}, f)
        with layout.Lock(base):  # the plugin's own start path
            control.notify(base, ino, start=True)
        self.pidfiles.append(layout.resolver_files(base, ino)["pid"])

    def start_dnsmasq(self):
        hosts = os.path.join(self.work, "addnhosts")
        with open(hosts, "w") as f:
            for i in range(self.names):
                f.write(f"{container_ip(i)}\tc{i}\tweb{i}\n")
        pid = os.path.join(self.work, "dnsmasq.pid")
        conf = os.path.join(self.work, "dnsmasq.conf")
        with open(conf, "w") as f:  # the reference dnsname's template, on our address
            f.write(f"strict-order\nlocal=/{DOMAIN}/\ndomain={DOMAIN}\nexpand-hosts\npid-file={pid}\n"
                    f"except-interface=lo\nbind-interfaces\nlisten-address={ADDRS['dnsmasq']}\n"
                    f"no-hosts\nno-resolv\naddn-hosts={hosts}\n")
        sh("dnsmasq", f"--conf-file={conf}", "--user=root")
        self.pidfiles.append(pid)

    def start_aardvark(self):
        d = os.path.join(self.work, "aardvark")
        os.makedirs(d)
        with open(os.path.join(d, NETWORK), "w") as f:
            f.write(f"{ADDRS['aardvark-dns']}\n")
            # the client must be a container of the network: aardvark answers by requester
            f.write(f"{uuid.uuid4().hex * 2} {CLIENT}  benchclient\n")
            for i in range(self.names):
                f.write(f"{uuid.uuid4().hex * 2} {container_ip(i)}  c{i},web{i}\n")
        env = dict(os.environ, RUST_LOG="error")
        subprocess.run([AARDVARK, "--config", d, "-p", "53", "-f", "." + DOMAIN, "run"], check=True, env=env,
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.pidfiles.append(os.path.join(d, "aardvark.pid"))

    def stop_all(self):
        for path in self.pidfiles:
            try:
                with open(path) as f:
                    pid = int(f.read().strip())
                os.kill(pid, signal.SIGTERM)
                for _ in range(50):
                    os.kill(pid, 0)
                    time.sleep(0.05)
                os.kill(pid, signal.SIGKILL)
            except (OSError, ValueError):
                pass


def check_answers(server: str, names: int) -> None:
    for i in (0, names // 2, names - 1):
        for qname in (f"c{i}", f"web{i}.{DOMAIN}"):
            out = sh("dig", "+short", "+time=2", "+tries=1", "-b", CLIENT, f"@{server}", qname, "A").stdout.split()
            if out != [container_ip(i)]:
                raise SystemExit(f"{server} answers {qname} with {out}, not {container_ip(i)}")


def dnsperf(server: str, qfile: str, seconds: int, outstanding: int) -> dict:
    out = sh("dnsperf", "-s", server, "-a", CLIENT, "-d", qfile, "-l", str(seconds),
             "-q", str(outstanding), "-t", "2").stdout

    def grab(pattern, cast=float):
        m = re.search(pattern, out)
        return cast(m.group(1)) if m else None

    return {"qps": grab(r"Queries per second:\s+([\d.]+)"),
            "sent": grab(r"Queries sent:\s+(\d+)", int),
            "lost": grab(r"Queries lost:\s+(\d+)", int),
            "latency_ms": (grab(r"Average Latency \(s\):\s+([\d.]+)") or 0) * 1000,
            "noerror": grab(r"NOERROR (\d+)", int)}


def inside(args) -> int:
    work = tempfile.mkdtemp(prefix="pycni-dnsbench-")
    servers = Servers(work, args.names)
    try:
        servers.start_all()
        for addr in ADDRS.values():
            check_answers(addr, args.names)
        qfile = os.path.join(work, "queries")
        with open(qfile, "w") as f:
            for i in range(args.names):
                f.write(f"c{i} A\nweb{i}.{DOMAIN} A\n")
        best = {}
        for r in range(args.rounds):
            for name, addr in ADDRS.items():
                fig = dnsperf(addr, qfile, args.seconds, args.outstanding)
                print(f"round {r + 1} {name:13s} {fig['qps']:>10.0f} qps  lost {fig['lost']}  "
                      f"avg latency {fig['latency_ms']:.3f} ms", flush=True)
                if name not in best or fig["qps"] > best[name]["qps"]:
                    best[name] = {**fig, "lost_total": best.get(name, {}).get("lost_total", 0) + fig["lost"]}
                else:
                    best[name]["lost_total"] += fig["lost"]
        print()
        print(f"dns resolver, {args.names} containers ({2 * args.names} names), dnsperf {args.seconds} s x "
              f"{args.rounds}, {args.outstanding} outstanding (best round; lost = all rounds)")
        for name, fig in best.items():
            print(f"  {name:13s} {fig['qps']:>10.0f} qps   lost {fig['lost_total']}")
        ours = best["pycni"]["qps"]
        r_dnsmasq = ours / best["dnsmasq"]["qps"]
        r_aardvark = ours / best["aardvark-dns"]["qps"]
        print(f"  ratio pycni/dnsmasq      {r_dnsmasq:.2f}  (target >= 1.0)")
        print(f"  ratio pycni/aardvark-dns {r_aardvark:.2f}  (target >= 1.5)")
        ok = r_dnsmasq >= 1.0 and r_aardvark >= 1.5 and best["pycni"]["lost_total"] == 0
        print(f"  targets {'met' if ok else 'NOT met'}")
        return 0
    finally:
        servers.stop_all()
        shutil.rmtree(work, ignore_errors=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--names", type=int, default=500, help="containers (each has a name and an alias)")
    ap.add_argument("--outstanding", type=int, default=100, help="dnsperf -q")
    ap.add_argument("--inside", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inside:
        return inside(args)
    for tool in ("dnsperf", "dnsmasq", "dig"):
        if shutil.which(tool) is None:
            print(f"dns_resolver: {tool} is missing (tools/bootstrap installs it)", file=sys.stderr)
            return 1
    if not os.access(AARDVARK, os.X_OK):
        print(f"dns_resolver: {AARDVARK} is missing (Debian aardvark-dns)", file=sys.stderr)
        return 1
    node = "pbdns" + uuid.uuid4().hex[:6]
    sh("ip", "netns", "add", node)
    try:
        cmd = ["ip", "netns", "exec", node, sys.executable, os.path.abspath(__file__), "--inside",
               *(argv if argv is not None else sys.argv[1:])]
        return subprocess.run(cmd).returncode
    finally:
        sh("ip", "netns", "delete", node, check=False)


if __name__ == "__main__":
    sys.exit(main())
