"""Real parts for the overlay tests: etcd servers, lab hosts in network
namespaces on a shared switch, pods behind a bridge, controllers running
inside their host's namespace.  Everything is torn down by its owner's
finalizer; names carry uuid suffixes."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

from conftest import run, stop_process, unique

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def wait_for(predicate, timeout=20.0, interval=0.05, what="condition"):
    """Poll until predicate() is truthy (a wait, not a speed assertion)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out waiting for {what}")


def netns_exec(ns, *cmd):
    return ("ip", "netns", "exec", ns, *cmd) if ns else cmd


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- etcd ------------------------------------------------------------------------
class EtcdCluster:
    """Debian's etcd-server, one or more members on one address (loopback,
    or an address inside a namespace we made), data dirs under tmp."""

    def __init__(self, tmp_path, size=1, netns=None, host="127.0.0.1"):
        self.tmp, self.netns, self.host = tmp_path, netns, host
        self.names = [unique("etcd") for _ in range(size)]
        self.ports = [(free_port(), free_port()) for _ in range(size)]
        self.procs: dict[int, subprocess.Popen] = {}
        self.cluster = ",".join(f"{n}=http://{host}:{peer}" for n, (_, peer) in zip(self.names, self.ports))
        for i in range(size):
            self.start(i, wait=False)
        for i in range(size):
            self._wait_ready(i)

    @property
    def endpoints(self) -> list[str]:
        return [f"http://{self.host}:{client}" for client, _ in self.ports]

    def _log(self, i):
        return self.tmp / f"{self.names[i]}.log"

    def start(self, i, wait=True):
        client, peer = self.ports[i]
        data = self.tmp / f"{self.names[i]}.data"
        state = "existing" if data.exists() else "new"
        cmd = ["etcd", "--name", self.names[i], "--data-dir", str(data),
               "--listen-client-urls", f"http://{self.host}:{client}",
               "--advertise-client-urls", f"http://{self.host}:{client}",
               "--listen-peer-urls", f"http://{self.host}:{peer}",
               "--initial-advertise-peer-urls", f"http://{self.host}:{peer}",
               "--initial-cluster", self.cluster, "--initial-cluster-state", state,
               "--initial-cluster-token", self.names[0]]
        self._log(i).write_text("")
        self.procs[i] = subprocess.Popen(netns_exec(self.netns, *cmd), stdout=subprocess.DEVNULL,
                                         stderr=open(self._log(i), "w"))
        if wait:
            self._wait_ready(i)

    def _wait_ready(self, i):
        wait_for(lambda: "ready to serve client requests" in self._log(i).read_text()
                 or self.procs[i].poll() is not None, timeout=30, what=f"etcd {self.names[i]}")
        assert self.procs[i].poll() is None, self._log(i).read_text()[-2000:]

    def kill(self, i):
        proc = self.procs.pop(i, None)
        if proc:
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)

    def stop(self):
        for i in list(self.procs):
            self.kill(i)


# --- lab hosts -----------------------------------------------------------------------
class Switch:
    """A bridge in a namespace of its own: the underlay every host plugs into."""

    def __init__(self, prefix: str):
        self.ns = unique("ovsw")
        self.prefix = prefix  # "10.2xx.y" : hosts get prefix.N/24
        run("ip", "netns", "add", self.ns)
        run("ip", "-n", self.ns, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.ns, "link", "set", "br0", "up")
        self.namespaces = [self.ns]

    def plug(self, name: str, address: str | None, mtu: int = 1500) -> str:
        """A new namespace with eth0 on the switch (address/24 when given)."""
        ns = unique(name)
        run("ip", "netns", "add", ns)
        self.namespaces.append(ns)
        port = unique("p")
        run("ip", "-n", ns, "link", "set", "lo", "up")
        run("ip", "-n", ns, "link", "add", "eth0", "mtu", str(mtu), "type", "veth", "peer", "name", port,
            "netns", self.ns)
        run("ip", "-n", self.ns, "link", "set", port, "master", "br0", "mtu", str(mtu), "up")
        if address:
            run("ip", "-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        return ns

    def destroy(self):
        for ns in reversed(self.namespaces):
            run("ip", "netns", "delete", ns, check=False)


class Controller:
    """`python -m overlay` in a host's namespace, its log under tmp."""

    def __init__(self, host: "Host", settings: dict, extra_args=()):
        self.host = host
        self.config = host.tmp / f"{host.name}.overlay.json"
        self.config.write_text(json.dumps(settings))
        self.log = host.tmp / f"{host.name}.overlay.log"
        self.proc = subprocess.Popen(
            netns_exec(host.ns, PYTHON, "-m", "overlay", "--config", str(self.config), "-v", *extra_args),
            cwd=REPO, stdout=subprocess.DEVNULL, stderr=open(self.log, "a"))

    def stop(self, sig=signal.SIGTERM):
        if self.proc.poll() is None:
            stop_process(self.proc, 20, sig)
        return self.proc.returncode

    def log_text(self):
        return self.log.read_text()


class Host:
    """A lab host: a namespace on the switch running one controller; its
    pod is a namespace behind bridge cni0, addressed from the host's
    subnet with the MTU from the state file, as the overlay CNI plugin
    will do."""

    def __init__(self, lab: "Lab", name: str, address: str):
        self.lab, self.name, self.address, self.tmp = lab, name, address, lab.tmp
        self.ns = lab.switch.plug(name, address)
        self.state_file = self.tmp / f"{name}.state.json"
        self.controller: Controller | None = None
        self.pod: str | None = None
        run(*netns_exec(self.ns, "sysctl", "-qw", "net.ipv4.ip_forward=1"))
        run(*netns_exec(self.ns, "sysctl", "-qw", "net.ipv6.conf.all.forwarding=1"))

    def settings(self, **extra) -> dict:
        return {**self.lab.settings, "nodeName": self.name, "underlayInterface": "eth0",
                "stateFile": str(self.state_file), **extra}

    def start(self, wait=True, extra_args=(), **extra) -> Controller:
        self.controller = Controller(self, self.settings(**extra), extra_args)
        if wait:
            self.wait_ready()
        return self.controller

    def wait_ready(self):
        wait_for(lambda: self.state_file.exists() or self.controller.proc.poll() is not None,
                 what=f"{self.name}'s controller")
        assert self.controller.proc.poll() is None, self.controller.log_text()[-3000:]

    def state(self) -> dict:
        return json.loads(self.state_file.read_text())

    def pod_address(self, version=4) -> str:
        import netaddr
        subnet = self.state()["subnet" if version == 4 else "subnet6"]
        return str(netaddr.IPNetwork(subnet).network + 2)

    def add_pod(self):
        """A pod namespace: veth into bridge cni0 (gateway .1), address .2."""
        import netaddr
        state = self.state()
        pod = unique("ovpod")
        run("ip", "netns", "add", pod)
        self.lab.switch.namespaces.append(pod)
        self.pod = pod
        ip = lambda ns, *a: run("ip", "-n", ns, *a)  # noqa: E731
        ip(pod, "link", "set", "lo", "up")
        ip(self.ns, "link", "add", "cni0", "type", "bridge")
        ip(self.ns, "link", "set", "cni0", "mtu", str(state["mtu"]), "up")
        ip(self.ns, "link", "add", "veth0", "mtu", str(state["mtu"]), "type", "veth", "peer", "name", "eth0",
           "mtu", str(state["mtu"]), "netns", pod)  # the peer's own mtu: the first one is the host side's only
        ip(self.ns, "link", "set", "veth0", "master", "cni0", "up")
        for key, family in (("subnet", "-4"), ("subnet6", "-6")):
            if not state.get(key):
                continue
            net = netaddr.IPNetwork(state[key])
            extra = ("nodad",) if family == "-6" else ()
            ip(self.ns, family, "addr", "add", f"{net.network + 1}/{net.prefixlen}", "dev", "cni0", *extra)
            ip(pod, family, "addr", "add", f"{net.network + 2}/{net.prefixlen}", "dev", "eth0", *extra)
        ip(pod, "link", "set", "eth0", "up")
        for key, family in (("subnet", "-4"), ("subnet6", "-6")):
            if state.get(key):
                gateway = netaddr.IPNetwork(state[key]).network + 1
                ip(pod, family, "route", "add", "default", "via", str(gateway))
        return pod

    def attach_pod(self, bin_dir) -> str:
        """A pod namespace attached as a runtime attaches one: the overlay CNI
        plugin executed in this host's namespace (bridge cni0, host-local
        from the host's subnet, the plugin's masquerade table, so the
        host's traffic passes conntrack), its records under this lab's tmp."""
        from conftest import exec_plugin

        pod = unique("ovpod")
        run("ip", "netns", "add", pod)
        self.lab.switch.namespaces.append(pod)
        run("ip", "-n", pod, "link", "set", "lo", "up")
        dirs = self.tmp / f"{self.name}cni"
        config = {"cniVersion": "1.0.0", "name": "overlay", "type": "overlay", "stateFile": str(self.state_file),
                  "ipam": {"dataDir": str(dirs / "ipam")}}
        rc, result = exec_plugin(bin_dir, "overlay", "ADD", config, prefix=netns_exec(self.ns),
                                 netns=f"/run/netns/{pod}", container_id=pod,
                                 extra_env={"PYCNI_NO_AGENT": "1", "PYCNI_STATE_DIR": str(dirs / "state"),
                                            "PYCNI_RUN_DIR": str(dirs / "run")})
        if rc != 0:
            raise RuntimeError(f"overlay ADD on {self.name}: {result}")
        self.pod = pod
        return pod

    def move(self, address: str):
        """Change this host's underlay address (it keeps running)."""
        run("ip", "-n", self.ns, "addr", "del", f"{self.address}/24", "dev", "eth0")
        run("ip", "-n", self.ns, "addr", "add", f"{address}/24", "dev", "eth0")
        self.address = address


class Lab:
    def __init__(self, tmp_path, settings: dict, prefix: str):
        self.tmp = tmp_path
        self.settings = settings
        self.switch = Switch(prefix)
        self.hosts: list[Host] = []
        self.prefix = prefix

    def add_host(self, n: int) -> Host:
        host = Host(self, f"ovh{n}-", f"{self.prefix}.{n}")
        self.hosts.append(host)
        return host

    def destroy(self):
        for host in self.hosts:
            if host.controller:
                host.controller.stop()
        self.switch.destroy()


def ping(ns, address, size=None, count=1, df=False):
    cmd = ["ping", "-c", str(count), "-W", "1", "-n"]
    if size is not None:
        cmd += ["-s", str(size)]
    if df:
        cmd += ["-M", "do"]
    return subprocess.run(netns_exec(ns, *cmd, address), capture_output=True).returncode == 0


def ip_show(ns, *what) -> str:
    return run("ip", "-n", ns, *what).stdout


def bridge_fdb(ns, device) -> str:
    return run("bridge", "-n", ns, "fdb", "show", "dev", device, check=False).stdout


# --- traffic between pods --------------------------------------------------------------
ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6 if ':' in sys.argv[1] else socket.AF_INET)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((sys.argv[1], int(sys.argv[2]))); s.listen(8)
print('listening', flush=True)
while True:
    c, _ = s.accept()
    while data := c.recv(65536):
        c.sendall(data)
    c.close()
"""

STREAM_CLIENT = """
import socket, sys, time
c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60)
n = 0
while True:
    msg = b'%08d' % n
    c.sendall(msg)
    got = b''
    while len(got) < len(msg):
        chunk = c.recv(len(msg) - len(got))
        if not chunk:
            sys.exit('closed')
        got += chunk
    assert got == msg, (got, msg)
    n += 1
    print(n, flush=True)
    time.sleep(0.05)
"""


class PodStream:
    """An established TCP stream: STREAM_CLIENT in ``client_ns`` echoing
    through ECHO_SERVER in ``server_ns``; `flowing()` asserts it goes on."""

    def __init__(self, tmp, client_ns, server_ns, address, port):
        self.server = start_python(server_ns, ECHO_SERVER, address, port, log=tmp / "server.log")
        wait_for(lambda: "listening" in (tmp / "server.log").read_text(), what="echo server")
        self.log = tmp / "stream.log"
        self.client = start_python(client_ns, STREAM_CLIENT, address, port, log=self.log)

    def echoes(self) -> int:
        lines = self.log.read_text().split()
        return int(lines[-1]) if lines and lines[-1].isdigit() else 0

    def flowing(self):
        mark = self.echoes()
        wait_for(lambda: self.echoes() > mark + 5, what="the stream to go on")
        assert self.client.poll() is None, self.log.read_text()[-500:]

    def stop(self):
        for proc in (self.client, self.server):
            proc.kill()
            proc.wait()


def start_python(ns, code, *args, log):
    return subprocess.Popen(netns_exec(ns, PYTHON, "-c", code, *map(str, args)),
                            stdout=open(log, "w"), stderr=subprocess.STDOUT)


def tcp_echo_once(client_ns, address, port, payload=b"hello over the overlay"):
    code = ("import socket,sys; c=socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5);"
            "c.sendall(sys.argv[3].encode()); print(c.recv(1024).decode())")
    out = subprocess.run(netns_exec(client_ns, PYTHON, "-c", code, address, str(port), payload.decode()),
                         capture_output=True, text=True)
    return out.stdout.strip() == payload.decode()


# --- crafted VXLAN ----------------------------------------------------------------------
SEND_VXLAN = textwrap.dedent("""
    import sys
    from scapy.all import IP, UDP, Ether, VXLAN, Raw, send
    src_ip, dst_ip, inner_src, inner_dst, dst_mac, payload, vni = sys.argv[1:8]
    # flags 0x08 (I) alone: scapy sets more by default, which Linux counts as an RX error
    inner = Ether(src="02:12:34:56:78:9a", dst=dst_mac) / IP(src=inner_src, dst=inner_dst) / UDP(sport=4000, dport=7001) / Raw(payload.encode())
    send(IP(src=src_ip, dst=dst_ip) / UDP(sport=40000, dport=4789) / VXLAN(vni=int(vni), flags=0x08) / inner, verbose=False)
""")

UDP_SINK = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 7001)); print('listening', flush=True)
while True:
    print(s.recv(2048).decode(), flush=True)
"""
