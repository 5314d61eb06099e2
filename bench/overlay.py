"""The VXLAN overlay (overlay/): pod-to-pod TCP throughput against a bare
VXLAN device pair and the underlay, and convergence time when a host
joins 20 or 50 running ones, with each agent's resident memory.

Everything runs in namespaces made for the run (the tests' lab hosts,
tests/overlay_env.py): hosts are namespaces with eth0 on a switch (a bridge
in a namespace of its own), each runs `python -m overlay` as its own
process.  For throughput, each pod is attached by the overlay CNI plugin
executed in its host's namespace, as a runtime attaches one: bridge cni0,
host-local, and the plugin's masquerade table, so every path through a host
(the anchors' too) passes conntrack as it does on a node with pods.  For
convergence, where only reachability is timed, a pod is made by hand with
the same objects (veth into cni0, an address of the host's subnet, the MTU
of its state file).  Teardown kills the agents (their state lives only in
the namespaces and the temporary directory) and deletes every namespace,
also on failure and on Ctrl-C or SIGTERM.

Throughput (iperf3, one TCP stream, same options for every path, client and
server on one core at nice -20, variants rotated between rounds):
  underlay       host A -> host B over the switch
  bare VXLAN     host A -> host B, a VXLAN device pair with the overlay's
                 port and MTU, addresses on the devices (the anchor)
  overlay        pod on A -> pod on B through the overlay's VXLAN device
  underlay 2     host C -> host D (a second pair on a switch of its own)
  directRouting  pod on C -> pod on D, both agents with directRouting: true
Targets: overlay >= 0.95 x bare VXLAN, directRouting >= 0.95 x underlay 2.

Convergence (file store, and etcd: one member in a namespace of its own on
the switch, as hosts cannot reach the machine's loopback): N hosts run,
each with a pod; a new host's agent starts; the figure is the time until
the pod of every other host has an answer to an ICMP echo sent to the new
host's pod (each pod sends one every 10 ms from a raw socket the benchmark
opened in it).  Also recorded per join, for where the time goes: the new
agent's "acquired" log line, its state file (own dataplane done), each
other host's route to the new subnet (netlink events), and the CPU time the
new agent and the running ones used and waited for (schedstat).  The new
host joins, is measured, leaves cleanly (every other host drops its route),
and joins again; the agents are let idle between joins.  Targets: median
under 1 s, worst under 2 s.

Each part ends with the machine's CPU time against this benchmark's own:
what else ran on the same two cores meanwhile.
"""
import argparse
import datetime
import json
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, ROOT)

from overlay_env import EtcdCluster, Host, Lab, netns_exec, ping, wait_for  # noqa: E402

from cni_plugins.kernel import netns  # noqa: E402
from overlay.kernel.route import PROTO  # noqa: E402

VNI = 42
PORT = 4789
IPERF_PORT = 5201
CPU = 1                      # iperf3 client and server, both
NICE = ("nice", "-n", "-20")  # other processes hardly take that core from them
CLK_TCK = os.sysconf("SC_CLK_TCK")
CONTENDED = 0.2  # share of the machine's CPU taken by others that makes a part's figures suspect


def sh(*cmd, check=True):
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


class CpuAccount:
    """CPU time of the whole machine against this benchmark's own (itself
    and every child it waited for: agents, iperf3, etcd) over one part:
    what else ran on the same cores while we measured."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]  # user nice system idle iowait irq softirq steal
        ours = sum(getattr(resource.getrusage(who), field) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                   for field in ("ru_utime", "ru_stime"))
        return time.monotonic(), (sum(ticks) - ticks[3] - ticks[4] - ticks[7]) / CLK_TCK, ticks[7] / CLK_TCK, ours

    def line(self) -> str:
        (t0, busy0, steal0, ours0), (t1, busy1, steal1, ours1) = self.start, self._sample()
        available = (t1 - t0) * os.cpu_count()
        ours, busy = ours1 - ours0, busy1 - busy0
        others = max(0.0, busy - ours)
        line = (f"cpu over {t1 - t0:.0f} s: {available:.0f} cpu-s on {os.cpu_count()} cores, busy {busy:.0f} "
                f"({ours:.0f} this benchmark, {others:.0f} other processes and kernel threads), "
                f"stolen by the hypervisor {steal1 - steal0:.0f}")
        if others + steal1 - steal0 > CONTENDED * available:
            line += (f"\n  WARNING: others had {100 * (others + steal1 - steal0) / available:.0f}% of the machine: "
                     "the times above measure that contention as much as the overlay")
        return line


def spread(values) -> str:
    return f"median {statistics.median(values):.3f} (min {min(values):.3f}, max {max(values):.3f})"


class BenchLab(Lab):
    """The tests' lab, with our own host names and a teardown that kills
    every agent at once: a clean leave of 50 agents together would make
    each of the others reconcile once per leaver, for nothing, since the
    namespaces and the store directory go anyway."""

    def add_host(self, n: int) -> Host:
        host = Host(self, f"pbov{n}-", f"{self.prefix}.{n}")
        self.hosts.append(host)
        return host

    def agents(self):
        return [h.controller.proc for h in self.hosts if h.controller and h.controller.proc.poll() is None]

    def destroy(self):
        procs = self.agents()
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait()
        self.switch.destroy()


def start_hosts(lab: BenchLab, numbers, bin_dir=None) -> list[Host]:
    """Hosts started together, each with a pod once its agent is ready:
    attached by the overlay CNI plugin in ``bin_dir``, else made by hand."""
    hosts = [lab.add_host(n) for n in numbers]
    for host in hosts:
        host.start(wait=False)
    for host in hosts:
        host.wait_ready()
        if bin_dir:
            host.attach_pod(bin_dir)
        else:
            host.add_pod()
    return hosts


def schedstat(procs) -> tuple[float, float]:
    """Seconds the processes ran on a CPU and waited runnable for one, in
    total (/proc/PID/schedstat, nanoseconds)."""
    ran = waited = 0
    for proc in procs:
        try:
            with open(f"/proc/{proc.pid}/schedstat") as f:
                fields = f.read().split()
        except OSError:
            continue
        ran, waited = ran + int(fields[0]), waited + int(fields[1])
    return ran / 1e9, waited / 1e9


def settle(procs, timeout=30.0):
    """Wait until the agents are idle (less than 5 ms of CPU between them
    over 0.3 s), so that one join is not measured while the others still
    digest the previous one."""
    deadline = time.monotonic() + timeout
    before = schedstat(procs)[0]
    while time.monotonic() < deadline:
        time.sleep(0.3)
        after = schedstat(procs)[0]
        if after - before < 0.005:
            return
        before = after


# --- throughput -----------------------------------------------------------------------
class Throughput:
    def __init__(self, work: Path, args):
        self.work, self.args = work, args
        self.labs: list[BenchLab] = []
        self.servers: list[subprocess.Popen] = []

    def _lab(self, name, prefix, cidr, **extra):
        path = self.work / name
        path.mkdir()
        lab = BenchLab(path, {"clusterCIDR": cidr, "vni": VNI, "port": PORT, "store": "file",
                              "storePath": str(path / "leases"), **extra}, prefix)
        self.labs.append(lab)
        return lab

    def setup(self):
        from pycni.install import install

        bin_dir = str(self.work / "bin")
        install(bin_dir)
        a, b = start_hosts(self._lab("vxlan", "10.247.1", "10.245.0.0/16"), (1, 2), bin_dir)
        c, d = start_hosts(self._lab("direct", "10.247.2", "10.246.0.0/16", directRouting=True), (1, 2), bin_dir)
        mtu = a.state()["mtu"]
        bare = {}
        for n, (host, peer) in enumerate(((a, b), (b, a)), 1):
            # The overlay's port, MTU and learning off; VNI + 1, as the kernel
            # takes only one device per VNI and port.
            sh("ip", "-n", host.ns, "link", "add", "pbvx0", "mtu", str(mtu), "type", "vxlan", "id", str(VNI + 1),
               "dstport", str(PORT), "local", host.address, "remote", peer.address, "dev", "eth0", "nolearning")
            sh("ip", "-n", host.ns, "addr", "add", f"10.247.9.{n}/24", "dev", "pbvx0")
            sh("ip", "-n", host.ns, "link", "set", "pbvx0", "up")
            bare[host.ns] = f"10.247.9.{n}"
        for ns in (b.ns, b.pod, d.ns, d.pod):
            self._server(ns)
        # name: (client namespace, server address, (namespace, device) whose MTU the path has)
        self.variants = {
            "underlay": (a.ns, b.address, (a.ns, "eth0")),
            "bare VXLAN": (a.ns, bare[b.ns], (a.ns, "pbvx0")),
            "overlay": (a.pod, b.pod_address(), (a.pod, "eth0")),
            "underlay 2": (c.ns, d.address, (c.ns, "eth0")),
            "directRouting": (c.pod, d.pod_address(), (c.pod, "eth0")),
        }
        for name, (client, address, _) in self.variants.items():
            wait_for(lambda: ping(client, address), what=f"{name} path")
        self.offloads = {
            "host eth0 (veth)": (a.ns, "eth0"), "overlay VXLAN": (a.ns, f"pycni.{VNI}"), "bare VXLAN": (a.ns, "pbvx0"),
            "host cni0 (bridge)": (a.ns, "cni0"), "pod eth0 (veth)": (a.pod, "eth0")}

    def _server(self, ns):
        proc = subprocess.Popen(netns_exec(ns, *NICE, "iperf3", "-s", "-p", str(IPERF_PORT), "--forceflush"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.servers.append(proc)
        said, fd = b"", proc.stdout.fileno()
        deadline = time.monotonic() + 10
        while b"listening" not in said:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise RuntimeError(f"iperf3 server in {ns} did not start: {said.decode()}")
            chunk = os.read(fd, 4096)
            if not chunk:
                raise RuntimeError(f"iperf3 server in {ns} exited: {said.decode()}")
            said += chunk

    def iperf(self, client, address) -> dict:
        out = sh(*netns_exec(client, *NICE, "iperf3", "-c", address, "-p", str(IPERF_PORT),
                             "-t", str(self.args.seconds), "-O", "1", "-J", "-A", f"{CPU},{CPU}"), check=False)
        result = json.loads(out.stdout)
        if "error" in result:
            raise RuntimeError(f"iperf3 {client} -> {address}: {result['error']}")
        end = result["end"]
        return {"gbps": end["sum_received"]["bits_per_second"] / 1e9, "retransmits": end["sum_sent"]["retransmits"],
                "mss": result["start"]["tcp_mss_default"],
                "cpu": (end["cpu_utilization_percent"]["host_total"], end["cpu_utilization_percent"]["remote_total"])}

    def measure(self) -> dict:
        names = list(self.variants)
        runs = {name: [] for name in names}
        for r in range(self.args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]
            for name in order:
                client, address, _ = self.variants[name]
                fig = self.iperf(client, address)
                runs[name].append(fig)
                print(f"  round {r + 1} {name:<14} {fig['gbps']:7.2f} Gbit/s  retransmits {fig['retransmits']:<5} "
                      f"cpu client {fig['cpu'][0]:5.1f}% server {fig['cpu'][1]:5.1f}%", flush=True)
        return runs

    def mtus(self) -> dict:
        found = {}
        for name, (_, _, (ns, dev)) in self.variants.items():
            found[name] = json.loads(sh("ip", "-n", ns, "-j", "link", "show", "dev", dev).stdout)[0]["mtu"]
        return found

    def offload_table(self) -> dict:
        from pyroute2.ethtool import Ethtool

        wanted = {"tso": "tx-tcp-segmentation", "gso": "tx-generic-segmentation", "gro": "rx-gro",
                  "udp_tnl-tso": "tx-udp_tnl-segmentation", "udp_tnl-csum-tso": "tx-udp_tnl-csum-segmentation"}
        table = {}
        for label, (ns, dev) in self.offloads.items():
            fd = netns.open_netns(f"/run/netns/{ns}")
            try:
                with netns.entered(fd):
                    ethtool = Ethtool()
                    try:
                        features = ethtool.get_features(dev).features
                    finally:
                        ethtool.close()
            finally:
                os.close(fd)
            table[label] = {short: features[long].enable for short, long in wanted.items() if long in features}
        return table

    def teardown(self):
        for proc in self.servers:
            proc.kill()
            proc.wait()
        for lab in self.labs:
            lab.destroy()


THROUGHPUT_TARGETS = {("overlay", "bare VXLAN"): 0.95, ("directRouting", "underlay 2"): 0.95}
THROUGHPUT_RATIOS = [("overlay", "bare VXLAN"), ("overlay", "underlay"), ("directRouting", "underlay 2"),
                     ("bare VXLAN", "underlay")]


def report_throughput(runs, mtus, offloads, args) -> list:
    print(f"\npod-to-pod TCP throughput, iperf3 -t {args.seconds} -O 1, one stream, client and server on CPU "
          f"{CPU}, {args.rounds} rounds, Gbit/s")
    print(f"  {'path':<14}{'MTU':>5}{'MSS':>6}   {'Gbit/s':<40}{'retransmits':>12}{'cpu client/server %':>22}")
    for name, figs in runs.items():
        cpu = [f["cpu"] for f in figs]
        print(f"  {name:<14}{mtus[name]:>5}{figs[0]['mss']:>6}   {spread([f['gbps'] for f in figs]):<40}"
              f"{sum(f['retransmits'] for f in figs):>12}"
              f"{statistics.median(c[0] for c in cpu):>13.0f} / {statistics.median(c[1] for c in cpu):.0f}")
    print("  offloads (on = enabled):")
    for label, features in offloads.items():
        print(f"    {label:<20}" + "  ".join(f"{k} {'on' if v else 'off'}" for k, v in features.items()))
    ratios = []
    for num, den in THROUGHPUT_RATIOS:
        a = [f["gbps"] for f in runs[num]]
        b = [f["gbps"] for f in runs[den]]
        paired = [x / y for x, y in zip(a, b)]
        ratios.append((f"{num} / {den}", statistics.median(a) / statistics.median(b), paired,
                       THROUGHPUT_TARGETS.get((num, den))))
    notes = [
        "every path is veth pairs and bridges inside one machine, and client and server run on one core "
        f"(CPU {CPU}, nice -20, so that other processes hardly take it from them): the sender's, both "
        "hosts' and the receiver's kernel work all happen on that core, so a figure is that core's "
        "throughput through the path, the inverse of the path's CPU cost per byte, not a NIC's bandwidth; "
        "on two cores, client and server apart reorder segments between the cores' backlogs (thousands "
        "of retransmits) and measure the scheduler instead; other work on the machine still slows that core "
        "(shared caches and memory; real-time priority instead of nice made no difference), see the cpu line",
        "GSO/GRO: TCP hands 64 KiB segments down every path and veth passes them on unsegmented, also "
        "encapsulated (udp_tnl segmentation on veth), so the MTU sets the MSS but hardly the packet count",
        f"the bare VXLAN pair uses VNI {VNI + 1} (the overlay's is {VNI}; the kernel takes one device per VNI and "
        "port): its packets pass the overlay's nftables guard too, which is per namespace",
        f"directRouting pods keep the overlay MTU ({mtus['directRouting']}) from the state file, the underlay "
        f"has {mtus['underlay 2']}",
    ]
    for note in notes:
        print(f"  note: {note}")
    return ratios


# --- convergence ----------------------------------------------------------------------------
ICMP_ECHO, ICMP_ECHO_REPLY = 8, 0
RTM_NEWROUTE, RTM_DELROUTE = 24, 25
RTMGRP_IPV4_ROUTE = 0x40
RTA_DST = 1
POLL_INTERVAL = 0.01
JOIN_TIMEOUT = 15.0


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    total = (total >> 16) + (total & 0xFFFF)
    total += total >> 16
    return ~total & 0xFFFF


def echo_request(ident: int, seq: int) -> bytes:
    header = struct.pack("!BBHHH", ICMP_ECHO, 0, 0, ident, seq)
    payload = b"pycni-overlay-bench"
    return struct.pack("!BBHHH", ICMP_ECHO, 0, checksum(header + payload), ident, seq) + payload


def in_netns(name, make):
    fd = netns.open_netns(f"/run/netns/{name}")
    try:
        with netns.entered(fd):
            return make()
    finally:
        os.close(fd)


class Probe:
    """An existing host as the benchmark sees it: a raw ICMP socket in its
    pod and a netlink socket on its route events, both opened in their
    namespaces once."""

    def __init__(self, host: Host, ident: int):
        self.host, self.ident = host, ident & 0xFFFF
        self.icmp = in_netns(host.pod, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP))
        self.routes = in_netns(host.ns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                                              socket.NETLINK_ROUTE))
        self.routes.bind((0, RTMGRP_IPV4_ROUTE))
        for sock in (self.icmp, self.routes):
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.seq = 0

    def send(self, address: str) -> None:
        self.seq = (self.seq + 1) & 0xFFFF
        try:
            self.icmp.sendto(echo_request(self.ident, self.seq), (address, 0))
        except OSError:
            pass  # no route yet in the pod's host: the host answers "unreachable" or nothing

    def replied(self, address: str) -> bool:
        """Drain the ICMP socket; True when an echo reply from ``address`` came."""
        got = False
        while True:
            try:
                data, (source, _) = self.icmp.recvfrom(2048)
            except BlockingIOError:
                return got
            offset = (data[0] & 0x0F) * 4
            kind, _, _, ident, _ = struct.unpack_from("!BBHHH", data, offset)
            got |= kind == ICMP_ECHO_REPLY and ident == self.ident and source == address

    def route_events(self, subnet: str) -> list[int]:
        """Drain the netlink socket: the message types (new/del) of our
        routes to ``subnet``."""
        found = []
        while True:
            try:
                data = self.routes.recv(1 << 16)
            except BlockingIOError:
                return found
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("IH", data, offset)
                if kind in (RTM_NEWROUTE, RTM_DELROUTE) and _route_dst(data, offset, length) == (subnet, PROTO):
                    found.append(kind)
                offset += (length + 3) & ~3

    def close(self):
        self.icmp.close()
        self.routes.close()


def _route_dst(data: bytes, offset: int, length: int):
    family, dst_len, _, _, _, protocol = struct.unpack_from("BBBBBB", data, offset + 16)
    if family != socket.AF_INET:
        return None
    attr, end = offset + 16 + 12, offset + length
    while attr + 4 <= end:
        rta_len, rta_type = struct.unpack_from("HH", data, attr)
        if rta_len < 4:
            break
        if rta_type == RTA_DST:
            return f"{socket.inet_ntoa(data[attr + 4:attr + 8])}/{dst_len}", protocol
        attr += (rta_len + 3) & ~3
    return None


class Convergence:
    def __init__(self, work: Path, store: str, args):
        self.work, self.store, self.args = work / store, store, args
        self.work.mkdir()
        self.etcd = None
        self.lab = BenchLab(self.work, {}, "10.248.0" if store == "file" else "10.248.1")
        self.probes: list[Probe] = []
        self.joiner: Host | None = None

    def setup(self):
        settings = {"clusterCIDR": "10.244.0.0/16", "vni": VNI, "port": PORT, "store": self.store}
        if self.store == "etcd":
            address = f"{self.lab.prefix}.250"
            store_ns = self.lab.switch.plug("pbovetcd", address)
            self.etcd = EtcdCluster(self.work, netns=store_ns, host=address)
            settings["etcdEndpoints"] = self.etcd.endpoints
        else:
            settings["storePath"] = str(self.work / "leases")
        self.lab.settings = settings

    def grow(self, count: int):
        """Run ``count`` hosts besides the joiner, each with a pod and a
        probe.  The joiner is up meanwhile (its first start picks its
        subnet and its pod is made then), so that no new host takes its
        subnet; every host reaching its pod checks the lab before it leaves."""
        if self.joiner is None:
            self.joiner = self.lab.add_host(200)
            self.joiner.start()
            self.joiner.add_pod()
            self.subnet, self.address = self.joiner.state()["subnet"], self.joiner.pod_address()
        else:
            self.joiner.start()
            self._same_subnet()
        running = len(self.probes)
        new = start_hosts(self.lab, range(running + 1, count + 1))
        self.probes += [Probe(host, n) for n, host in enumerate(new, running + 1)]
        self.reached(time.monotonic() + JOIN_TIMEOUT, f"{count} hosts")
        self.leave()

    def agents(self):
        return [p.host.controller.proc for p in self.probes]

    def reached(self, deadline, what) -> dict:
        """Ping the joiner's pod from every probe until each has an answer;
        {probe: seconds} (monotonic) for replies and for routes appearing."""
        address = self.address
        reached, routed = {}, {}
        by_fd = {}
        for probe in self.probes:
            by_fd[probe.icmp.fileno()] = by_fd[probe.routes.fileno()] = probe
        next_send = 0.0
        while len(reached) < len(self.probes):
            now = time.monotonic()
            if now > deadline:
                missing = [p.host.name for p in self.probes if p not in reached]
                raise RuntimeError(f"{what}: {len(missing)} hosts never reached the new host's pod: {missing[:5]}")
            if now >= next_send:
                for probe in self.probes:
                    if probe not in reached:
                        probe.send(address)
                next_send = now + POLL_INTERVAL
            ready, _, _ = select.select(list(by_fd), [], [], max(0.0, next_send - time.monotonic()))
            now = time.monotonic()
            for fd in ready:
                probe = by_fd[fd]
                if fd == probe.routes.fileno():
                    if RTM_NEWROUTE in probe.route_events(self.subnet):
                        routed.setdefault(probe, now)
                elif probe.replied(address) and probe not in reached:
                    reached[probe] = now
        return {"reached": reached, "routed": routed}

    def leave(self):
        """The joiner leaves cleanly; wait until every host dropped its
        route, then until the agents are idle again."""
        for probe in self.probes:
            probe.route_events(self.subnet)  # drop what is queued
        code = self.joiner.controller.stop()
        if code != 0:
            raise RuntimeError(f"the joining agent exited with {code}: {self.joiner.controller.log_text()[-2000:]}")
        pending = set(self.probes)
        deadline = time.monotonic() + JOIN_TIMEOUT
        while pending and time.monotonic() < deadline:
            ready, _, _ = select.select([p.routes for p in pending], [], [], 0.5)
            for sock in ready:
                probe = next(p for p in pending if p.routes is sock)
                if RTM_DELROUTE in probe.route_events(self.subnet):
                    pending.discard(probe)
        if pending:
            raise RuntimeError(f"{len(pending)} hosts kept their route to the joiner after it left")
        settle(self.agents())

    def join(self) -> dict:
        for probe in self.probes:
            probe.route_events(self.subnet)
            probe.replied("")
        agents = self.agents()
        ran, waited = schedstat(agents)
        wall, start = time.time(), time.monotonic()
        self.joiner.start(wait=False)
        found = self.reached(start + JOIN_TIMEOUT, "a join")
        self.joiner.wait_ready()  # its traffic may flow a moment before its state file is written
        self._same_subnet()
        own = schedstat([self.joiner.controller.proc])
        settle(agents)
        after = schedstat(agents)
        figures = {
            "all reached": max(found["reached"].values()) - start,
            "median host reached": statistics.median(found["reached"].values()) - start,
            "acquired": self._logged("acquired", wall) - wall,
            "own dataplane": os.stat(self.joiner.state_file).st_mtime - wall,
            "median route": statistics.median(found["routed"].values()) - start if found["routed"] else float("nan"),
            "last route": max(found["routed"].values()) - start if found["routed"] else float("nan"),
            "joiner cpu": own[0], "joiner waited for cpu": own[1],
            "others cpu, total": after[0] - ran, "others waited for cpu, total": after[1] - waited,
        }
        self.leave()
        return figures

    def _same_subnet(self):
        subnet = self.joiner.state()["subnet"]
        if subnet != self.subnet:
            raise RuntimeError(f"the joiner came back with {subnet}, not {self.subnet} (its pod's subnet)")

    def _logged(self, word: str, since: float) -> float:
        """Wall-clock time of the joiner's last log line with ``word``
        (logging's asctime, millisecond resolution)."""
        for line in reversed(self.joiner.controller.log_text().splitlines()):
            if f" {word} " in line:
                stamp = datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
                if stamp >= since - 1:
                    return stamp
        return float("nan")

    def memory(self) -> dict:
        rss, anon = [], []
        for proc in self.agents():
            with open(f"/proc/{proc.pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f)
            rss.append(int(fields["VmRSS"].split()[0]) / 1024)
            anon.append(int(fields["RssAnon"].split()[0]) / 1024)
        return {"rss": rss, "anon": anon}

    def measure(self, counts, joins) -> dict:
        results = {}
        for count in counts:
            began = time.monotonic()
            self.grow(count)
            settle(self.agents())
            print(f"  {self.store}: {count} hosts up in {time.monotonic() - began:.1f} s", flush=True)
            rounds = []
            for j in range(joins):
                fig = self.join()
                rounds.append(fig)
                print(f"  {self.store} {count} hosts, join {j + 1}: all reached {fig['all reached']:.3f} s "
                      f"(acquired {fig['acquired']:.3f}, own dataplane {fig['own dataplane']:.3f}, routes "
                      f"{fig['median route']:.3f}..{fig['last route']:.3f}; cpu: joiner {fig['joiner cpu']:.3f} "
                      f"waited {fig['joiner waited for cpu']:.3f}, others {fig['others cpu, total']:.3f} "
                      f"waited {fig['others waited for cpu, total']:.3f})", flush=True)
            results[count] = {"rounds": rounds, "memory": self.memory()}
        return results

    def teardown(self):
        for probe in self.probes:
            probe.close()
        self.lab.destroy()
        if self.etcd:
            self.etcd.stop()


CONVERGENCE_TARGETS = {"median": 1.0, "worst": 2.0}


def report_convergence(store, results) -> list:
    ratios = []
    for count, result in results.items():
        rounds = result["rounds"]
        print(f"\nconvergence, {store} store, a host joins {count} running hosts, {len(rounds)} joins, seconds "
              "from its agent's start")
        for key in rounds[0]:
            print(f"  {key:<30}{spread([r[key] for r in rounds])}")
        mem = result["memory"]
        print(f"  agent memory, {len(mem['rss'])} agents: RSS MiB {spread(mem['rss'])}; of it anonymous "
              f"(not shared with other agents) {spread(mem['anon'])}")
        times = [r["all reached"] for r in rounds]
        ratios.append((f"{store}, {count} hosts: median join", statistics.median(times), CONVERGENCE_TARGETS["median"]))
        ratios.append((f"{store}, {count} hosts: worst join", max(times), CONVERGENCE_TARGETS["worst"]))
    return ratios


# --- the run -------------------------------------------------------------------------------
def summary(throughput, convergence) -> bool:
    failed = False
    print("\nratios and targets")
    for name, ratio, paired, target in throughput:
        verdict = ""
        if target is not None:
            ok = ratio >= target
            failed |= not ok
            verdict = f"target >= {target:.2f}  {'met' if ok else 'MISSED'}"
        print(f"  {name:<28}{ratio:6.3f}  (per round {min(paired):.3f}..{max(paired):.3f})   {verdict}")
    for name, seconds, target in convergence:
        ok = seconds < target
        failed |= not ok
        print(f"  {name:<34}{seconds:6.3f} s   target < {target:.0f} s  {'met' if ok else 'MISSED'}")
    return failed


def interrupted(*_):
    """SIGTERM unwinds like Ctrl-C, through every teardown."""
    raise KeyboardInterrupt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds (every path once per round)")
    parser.add_argument("--seconds", type=int, default=4, help="iperf3 duration of one run")
    parser.add_argument("--hosts", default="20,50", help="running host counts a host joins, e.g. 20,50")
    parser.add_argument("--joins", type=int, default=5, help="measured joins per host count")
    parser.add_argument("--stores", default="file,etcd", help="lease stores for convergence")
    parser.add_argument("--skip", choices=("throughput", "convergence"), help="leave one part out")
    parser.add_argument("--quick", action="store_true",
                        help="a short run: 1 round of 2 s, 5 and 10 hosts, 3 joins, file store")
    args = parser.parse_args(argv)
    if args.quick:
        args.rounds, args.seconds, args.hosts, args.joins, args.stores = 1, 2, "5,10", 3, "file"
    counts = sorted(int(n) for n in args.hosts.split(","))
    stores = args.stores.split(",")
    for tool in ("iperf3", "etcd") if "etcd" in stores else ("iperf3",):
        if shutil.which(tool) is None:
            print(f"overlay bench: {tool} is missing (tools/bootstrap installs it)", file=sys.stderr)
            return 1
    signal.signal(signal.SIGTERM, interrupted)
    began = time.monotonic()
    load = os.getloadavg()
    print(f"overlay benchmark on {os.uname().nodename} ({os.cpu_count()} cores, kernel {os.uname().release}), "
          f"load average at start {load[0]:.2f}", flush=True)
    work = Path(tempfile.mkdtemp(prefix="pycni-overlay-bench-"))
    throughput, convergence = [], []
    try:
        if args.skip != "throughput":
            cpu = CpuAccount()
            part = Throughput(work, args)
            try:
                part.setup()
                runs = part.measure()
                mtus, offloads = part.mtus(), part.offload_table()
            finally:
                part.teardown()
            throughput = report_throughput(runs, mtus, offloads, args)
            print(f"  {cpu.line()}")
        if args.skip != "convergence":
            for store in stores:
                cpu = CpuAccount()
                part = Convergence(work, store, args)
                try:
                    part.setup()
                    results = part.measure(counts, args.joins)
                finally:
                    part.teardown()
                convergence += report_convergence(store, results)
                print(f"  {cpu.line()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    failed = summary(throughput, convergence)
    print(f"\noverlay benchmark took {time.monotonic() - began:.0f} s; load average at the end "
          f"{os.getloadavg()[0]:.2f}")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("overlay bench: interrupted; everything it made is removed", file=sys.stderr)
        sys.exit(130)
