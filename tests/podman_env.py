"""An isolated podman 4.3 environment for end-to-end tests of CNI plugins.

`PodmanEnv(plugin_dir)` writes, under a new short tmp dir `base`:

- ``containers.conf``: runc (crun refuses this machine's hybrid cgroups),
  explicit ulimits, the CNI network backend, ``cni_plugin_dirs`` naming only
  ``plugin_dir``, ``network_config_dir``/``tmp_dir`` inside ``base``;
- ``root``/``runroot`` storage (driver vfs: plain directories, so nothing is
  left mounted but the per-container shm, which podman unmounts itself);

then imports the busybox image (``busybox_tarball``: /bin/busybox with applet
symlinks, made once per session) into that storage.

``env.podman(*args)`` runs podman with ``CONTAINERS_CONF`` and the storage
options set, and a timeout.  conmon hands ``CONTAINERS_CONF`` on to the
``podman container cleanup`` it runs when a container exits, so that cleanup
uses the same plugin dir.  ``env.teardown()`` removes every container, pod
and network the env made and then looks for what they may have left on the
host: veths, network namespaces, bridges, host-local address files, CNI
result cache files, nft/iptables rules and dnsmasq processes naming a test
network.  It removes what it finds and returns the list of problems.

Host-wide places podman's CNI backend uses whatever the storage root (so a
failed test could leave things there): /run/netns/netns-*, /var/lib/cni/
networks/NET (host-local's default dataDir), /var/lib/cni/results (libcni's
cache), /run/containers/cni/dnsname/NET (the reference dnsname).

Podman 4.3 here, learnt the hard way:
- it refuses a runroot longer than 50 characters (so no pytest tmp_path);
- it runs VERSION against every plugin of a conflist when loading it and
  drops a network whose plugin fails ("network not found" at `podman run`);
- it adds dnsname to the conflist only if the plugin dir has a dnsname;
- it names the bridge cni-podmanN (first N free), and `podman network rm`
  deletes the bridge itself; container netns are /run/netns/netns-<uuid>;
- busybox as PID 1 ignores SIGTERM: `rm -f` waits 10 s unless `-t 0`;
- switching --storage-driver on an existing root fails (database mismatch);
- without `--dns`, the container's resolv.conf lists the gateway and then
  the host's resolvers, which are off this machine.
"""
from __future__ import annotations

import glob
import io
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import subprocess
import tarfile
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from cni_plugins.core.request import DEFAULT_STATE_DIR
from conformance.runner import pick_subnet as conformance_pick_subnet

IMAGE = "localhost/pycni-busybox:e2e"
BUSYBOX = "/bin/busybox"           # Debian busybox-static
CNI_DATA_DIR = "/var/lib/cni/networks"   # host-local's default dataDir
CNI_CACHE_DIR = "/var/lib/cni/results"   # libcni result cache (podman's default)
DNSNAME_RUN_DIR = "/run/containers/cni/dnsname"
PODMAN_TIMEOUT = 90


class PodmanError(AssertionError):
    pass


def unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def _run(*cmd, check=False, timeout=60, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


# --- the image ------------------------------------------------------------------
def _as_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def make_busybox_tarball(path: str | os.PathLike) -> str:
    """A root filesystem tarball: /bin/busybox plus a symlink per applet, and
    the few files a container wants (/etc/passwd, /etc/group, /tmp, /root)."""
    path = str(path)
    applets = _run(BUSYBOX, "--list", check=True).stdout.split()

    def entry(name, kind, mode, target=""):
        info = tarfile.TarInfo(name)
        info.type, info.mode, info.linkname = kind, mode, target
        info.uid = info.gid = 0
        return info

    with tarfile.open(path, "w") as tar:
        for d, mode in (("bin", 0o755), ("etc", 0o755), ("tmp", 0o1777), ("root", 0o700),
                        ("proc", 0o555), ("sys", 0o555), ("dev", 0o755), ("run", 0o755),
                        ("usr", 0o755), ("usr/bin", 0o755), ("sbin", 0o755)):
            tar.addfile(entry(d, tarfile.DIRTYPE, mode))
        tar.add(BUSYBOX, arcname="bin/busybox", filter=_as_root)
        for a in applets:
            if a != "busybox" and "/" not in a:
                tar.addfile(entry(f"bin/{a}", tarfile.SYMTYPE, 0o777, "busybox"))
        for name, text in (("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n"),
                           ("etc/group", "root:x:0:\nnogroup:x:65534:\n")):
            data = text.encode()
            info = entry(name, tarfile.REGTYPE, 0o644)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


# --- host inspection ------------------------------------------------------------
def links() -> dict[str, dict]:
    out = _run("ip", "-j", "link", "show").stdout
    return {l["ifname"]: l for l in json.loads(out or "[]")}


def nft_ruleset() -> str:
    return _run("nft", "list", "ruleset").stdout


def iptables_rules() -> str:
    out = []
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool):
            out.append(_run(tool).stdout)
    return "\n".join(out)


def cni_chains() -> set[tuple[str, str, str]]:
    """(tool, table, chain) of every iptables chain named CNI-*."""
    found = set()
    for tool in ("iptables-save", "ip6tables-save"):
        if not shutil.which(tool):
            continue
        table = None
        for line in _run(tool).stdout.splitlines():
            if line.startswith("*"):
                table = line[1:]
            elif line.startswith(":CNI-"):
                found.add((tool, table, line[1:].split()[0]))
    return found


def remove_cni_chains(chains: set[tuple[str, str, str]]) -> None:
    """Remove these chains and every rule jumping to them.  The reference
    portmap and firewall create global chains (CNI-HOSTPORT-*, CNI-FORWARD)
    that outlive their last container; a test that caused them removes them."""
    for tool, table, chain in chains:
        cmd = tool.replace("-save", "")
        for line in _run(tool, "-t", table).stdout.splitlines():
            if line.startswith("-A ") and f"-j {chain}" in line:
                _run(cmd, "-t", table, "-D", *shlex.split(line[3:]))
    for tool, table, chain in chains:
        _run(tool.replace("-save", ""), "-t", table, "-F", chain)
    for tool, table, chain in chains:
        _run(tool.replace("-save", ""), "-t", table, "-X", chain)


def mentions(text: str, addr: str) -> list[str]:
    """Lines of `text` naming exactly `addr` (not 10.1.1.10 for 10.1.1.1)."""
    pat = re.compile(r"(?<![\d.])" + re.escape(addr) + r"(?![\d])")
    return [line.strip() for line in text.splitlines() if pat.search(line)]


def mentions_subnet(text: str, subnet: ipaddress.IPv4Network) -> list[str]:
    prefix = str(subnet.network_address).rsplit(".", 1)[0] + "."
    pat = re.compile(r"(?<![\d.])" + re.escape(prefix) + r"\d")
    return [line.strip() for line in text.splitlines() if pat.search(line)]


def pick_subnet() -> ipaddress.IPv4Network:
    """A 10.2xx.y.0/24 overlapping no address or route on the host, and
    named by no firewall rule (the reference leaves some behind)."""
    rules = nft_ruleset()
    for _ in range(50):
        net = conformance_pick_subnet()
        if not mentions_subnet(rules, net):
            return net
    raise PodmanError("no free 10.2xx.y.0/24 subnet found")


def free_port() -> int:
    """A TCP port nothing on the host listens on (bound and released)."""
    for _ in range(50):
        port = random.SystemRandom().randint(20000, 32000)
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            return port
    raise PodmanError("no free TCP port")


def tcp_read(host: str, port: int, timeout: float = 5.0) -> bytes:
    """Connect, half-close, read to EOF.  Raises OSError on failure."""
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            data = s.recv(4096)
            if not data:
                return b"".join(chunks)
            chunks.append(data)


def plugin_version_errors(plugin_dir: str, plugins) -> dict[str, str]:
    """Run `CNI_COMMAND=VERSION` against each plugin; {name: error} for those
    that are missing, fail or print no version object."""
    errors = {}
    for name in plugins:
        exe = os.path.join(plugin_dir, name)
        if not os.access(exe, os.X_OK):
            errors[name] = "missing or not executable"
            continue
        try:
            proc = subprocess.run([exe], input=b"", capture_output=True, timeout=30,
                                  env={"CNI_COMMAND": "VERSION"})
        except (OSError, subprocess.TimeoutExpired) as e:
            errors[name] = repr(e)
            continue
        err = proc.stderr.decode(errors="replace").strip().splitlines()
        if proc.returncode != 0:
            errors[name] = f"exit {proc.returncode}: {err[-1] if err else proc.stdout.decode()[:200]}"
            continue
        try:
            if "supportedVersions" not in json.loads(proc.stdout):
                errors[name] = f"no supportedVersions in {proc.stdout[:200]!r}"
        except ValueError:
            errors[name] = f"not JSON: {proc.stdout[:200]!r}"
    return errors


# --- the environment ------------------------------------------------------------
@dataclass
class Network:
    name: str
    subnet: ipaddress.IPv4Network
    gateway: str
    conflist: dict
    path: Path

    @property
    def plugin_types(self) -> list[str]:
        return [p.get("type") for p in self.conflist.get("plugins", [])]

    def plugin(self, type_):
        return next((p for p in self.conflist["plugins"] if p.get("type") == type_), None)

    @property
    def bridge(self) -> str:
        return self.plugin("bridge")["bridge"]

    @property
    def data_dir(self) -> str:
        ipam = (self.plugin("bridge") or {}).get("ipam", {})
        return os.path.join(ipam.get("dataDir") or CNI_DATA_DIR, self.name)


@dataclass
class Container:
    name: str
    id: str
    ip: str
    sandbox: str          # /run/netns/netns-... as podman reports it
    host_veth: str | None  # the bridge-side end of its eth0


@dataclass
class PodmanEnv:
    plugin_dir: str
    base: Path | None = None   # default: a new short dir under /tmp
    storage_driver: str = "vfs"
    networks: list[Network] = field(default_factory=list)
    containers: dict[str, Container] = field(default_factory=dict)

    def __post_init__(self):
        # podman refuses a runroot longer than 50 characters, so pytest's
        # tmp_path (/tmp/pytest-of-root/pytest-N/test_name0/...) will not do.
        self.chains_before = cni_chains()
        self.base = Path(self.base or tempfile.mkdtemp(prefix="pcnipm-", dir="/tmp"))
        if len(str(self.base / "runroot")) > 50:
            raise PodmanError(f"{self.base}/runroot is longer than podman's 50-character limit")
        self.conf_dir = self.base / "cni-conf"
        self.root = self.base / "root"
        self.runroot = self.base / "runroot"
        self.tmp_dir = self.base / "libpod"
        for d in (self.conf_dir, self.root, self.runroot, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.conf = self.base / "containers.conf"
        self.conf.write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=1024:1024", "nproc=1024:1024"]\n'
            "[engine]\n"
            'runtime = "runc"\n'
            'events_logger = "file"\n'
            f'tmp_dir = "{self.tmp_dir}"\n'
            "[network]\n"
            'network_backend = "cni"\n'
            f'cni_plugin_dirs = ["{self.plugin_dir}"]\n'
            f'network_config_dir = "{self.conf_dir}"\n'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CONTAINERS_")}
        self.env["CONTAINERS_CONF"] = str(self.conf)
        self.log: list[str] = []

    # --- running podman ---------------------------------------------------------
    def podman(self, *args, timeout=PODMAN_TIMEOUT, input=None) -> subprocess.CompletedProcess:
        cmd = ["podman", "--root", str(self.root), "--runroot", str(self.runroot),
               "--storage-driver", self.storage_driver, *map(str, args)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                                  env=self.env, input=input)
        except subprocess.TimeoutExpired as e:
            def text(x):
                return x.decode(errors="replace") if isinstance(x, bytes) else (x or "")
            proc = subprocess.CompletedProcess(cmd, -9, text(e.stdout), f"TIMEOUT after {timeout}s; "
                                               f"stderr so far: {text(e.stderr)}")
        self.log.append(f"$ podman {' '.join(map(str, args))}\n-> {proc.returncode}\n"
                        f"{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc

    def ok(self, *args, **kw) -> str:
        proc = self.podman(*args, **kw)
        if proc.returncode != 0:
            raise PodmanError(f"`podman {' '.join(map(str, args))}` failed (exit {proc.returncode})\n"
                              f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc.stdout

    def import_image(self, tarball: str) -> None:
        self.ok("import", "--change", 'CMD ["/bin/sh"]', tarball, IMAGE)

    def create_network(self, name=None, subnet=None) -> Network:
        name = name or unique("pcni")
        subnet = ipaddress.ip_network(subnet) if subnet else pick_subnet()
        # Recorded before creating, so teardown also covers a half-made one.
        net = Network(name, subnet, str(subnet.network_address + 1), {}, self.conf_dir / f"{name}.conflist")
        self.networks.append(net)
        self.ok("network", "create", "--subnet", str(subnet), name)
        net.conflist = json.loads(net.path.read_text())
        ranges = net.plugin("bridge")["ipam"]["ranges"]
        net.gateway = ranges[0][0].get("gateway", net.gateway)
        return net

    def run_container(self, name, net: Network, *args, cmd=("sleep", "600")) -> Container:
        """`podman run -d` on `net`; DNS points only at the network's gateway
        (dnsname's server), never at the host's resolvers."""
        self.containers[name] = Container(name, "", "", "", None)
        out = self.ok("run", "-d", "--name", name, "--network", net.name,
                      "--dns", net.gateway, "--dns-search", "dns.podman",
                      *args, IMAGE, *cmd)
        cid = out.strip().splitlines()[-1]
        info = json.loads(self.ok("inspect", "--type", "container", name))[0]
        ns = info["NetworkSettings"]
        ip = ns["Networks"][net.name]["IPAddress"]
        c = Container(name, cid, ip, ns.get("SandboxKey", ""), None)
        # eth0's peer index, read inside the container, names the host veth.
        iflink = self.podman("exec", name, "cat", "/sys/class/net/eth0/iflink").stdout.strip()
        if iflink.isdigit():
            c.host_veth = next((l["ifname"] for l in links().values() if l.get("ifindex") == int(iflink)), None)
        self.containers[name] = c
        return c

    def exec(self, name, *cmd, timeout=30) -> subprocess.CompletedProcess:
        return self.podman("exec", name, *cmd, timeout=timeout)

    def lookup(self, name, host, server=None) -> tuple[int, list[str], str]:
        """busybox nslookup inside container `name`: (exit, addresses, output)."""
        args = ["nslookup", host] + ([server] if server else [])
        proc = self.exec(name, *args)
        out = proc.stdout + proc.stderr
        addrs, in_answer = [], False
        for line in out.splitlines():
            if line.startswith("Name:"):
                in_answer = True
            elif in_answer and line.startswith("Address:"):
                addrs.append(line.split(":", 1)[1].strip())
        return proc.returncode, addrs, out

    def remove_container(self, name) -> None:
        self.ok("rm", "-f", "-t", "0", name)

    # --- teardown ----------------------------------------------------------------
    def leftovers_of_container(self, c: Container) -> list[str]:
        """What of a removed container `c` is still on the host."""
        problems = []
        have = links()
        if c.host_veth and c.host_veth in have:
            problems.append(f"{c.name}: host veth {c.host_veth} still exists")
        if c.sandbox and os.path.exists(c.sandbox):
            problems.append(f"{c.name}: network namespace {c.sandbox} still exists")
        for net in self.networks:
            if c.ip and os.path.exists(os.path.join(net.data_dir, c.ip)):
                problems.append(f"{c.name}: host-local address file {os.path.join(net.data_dir, c.ip)} still exists")
            if c.id and os.path.isdir(CNI_CACHE_DIR):
                for f in os.listdir(CNI_CACHE_DIR):
                    if c.id in f:
                        problems.append(f"{c.name}: CNI result cache {CNI_CACHE_DIR}/{f} still exists")
        if c.ip:
            for line in mentions(nft_ruleset(), c.ip):
                problems.append(f"{c.name}: nft still names {c.ip}: {line}")
            for line in mentions(iptables_rules(), c.ip):
                problems.append(f"{c.name}: iptables still names {c.ip}: {line}")
        if c.id:
            for line in [l for l in iptables_rules().splitlines() if c.id in l]:
                problems.append(f"{c.name}: iptables rule names its id: {line.strip()}")
            for line in [l for l in nft_ruleset().splitlines() if c.id in l]:
                problems.append(f"{c.name}: nft rule names its id: {line.strip()}")
        return problems

    def teardown(self) -> list[str]:
        """Remove everything this env made; return what had to be cleaned by
        force or could not be (empty: podman and the plugins left nothing)."""
        problems = []
        for args in (("pod", "rm", "-af", "-t", "0"), ("rm", "-af", "-t", "0")):
            proc = self.podman(*args, timeout=120)
            if proc.returncode != 0:
                problems.append(f"`podman {' '.join(args)}`: exit {proc.returncode}: {proc.stderr.strip()}")
        for net in self.networks:
            if net.path.exists():
                proc = self.podman("network", "rm", "-f", net.name, timeout=120)
                if proc.returncode != 0:
                    problems.append(f"`podman network rm {net.name}`: {proc.stderr.strip()}")
        left = self.podman("ps", "-aq").stdout.split()
        if left:
            problems.append(f"containers left after rm -af: {left}")

        for c in self.containers.values():
            problems += self.leftovers_of_container(c)
            if c.host_veth and c.host_veth in links():
                _run("ip", "link", "delete", c.host_veth)
            if c.sandbox and os.path.exists(c.sandbox):
                _run("ip", "netns", "delete", os.path.basename(c.sandbox))

        for net in self.networks:
            problems += self._network_leftovers(net)
        remove_cni_chains(cni_chains() - self.chains_before)

        self._unmount_and_remove()
        return problems

    @staticmethod
    def _network_files_left(net: Network) -> list[str]:
        """Remove the network's host-local dir and our plugins' record dirs
        (podman runs the plugins with the default paths); name what they
        still held beside host-local's lock and cursors."""
        problems = []
        if os.path.isdir(net.data_dir):
            files = [f for f in os.listdir(net.data_dir)
                     if f != "lock" and not f.startswith("last_reserved_ip")]
            if files:
                problems.append(f"{net.name}: host-local files left in {net.data_dir}: {sorted(files)}")
            shutil.rmtree(net.data_dir, ignore_errors=True)
        for records in glob.glob(os.path.join(DEFAULT_STATE_DIR, "*", glob.escape(net.name))):
            if os.listdir(records):
                problems.append(f"{net.name}: records left in {records}: {sorted(os.listdir(records))}")
            shutil.rmtree(records, ignore_errors=True)
        return problems

    def _network_leftovers(self, net: Network) -> list[str]:
        problems = []
        bridge = (net.plugin("bridge") or {}).get("bridge") if net.conflist else None
        if bridge and bridge in links():
            problems.append(f"{net.name}: bridge {bridge} still exists after `podman network rm`")
            _run("ip", "link", "delete", bridge)
        problems += self._network_files_left(net)
        if os.path.isdir(CNI_CACHE_DIR):
            for f in os.listdir(CNI_CACHE_DIR):
                if f.startswith(f"{net.name}-"):
                    problems.append(f"{net.name}: CNI result cache {f} left")
                    os.unlink(os.path.join(CNI_CACHE_DIR, f))
        for line in mentions_subnet(nft_ruleset(), net.subnet):
            problems.append(f"{net.name}: nft ruleset still names {net.subnet}: {line}")
        for line in mentions_subnet(iptables_rules(), net.subnet):
            problems.append(f"{net.name}: iptables still names {net.subnet}: {line}")
        # dnsmasq started by a dnsname plugin for this network
        for pid, cmdline in dnsmasq_for(net.name):
            problems.append(f"{net.name}: dnsmasq pid {pid} still runs: {cmdline}")
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        # whatever DNS server served the network: nothing may still listen on
        # the gateway's port 53 (a socket outlives the address it was bound to)
        for line in listening_on(net.gateway, 53):
            problems.append(f"{net.name}: still listening on {net.gateway}:53: {line}")
        run_dir = os.path.join(DNSNAME_RUN_DIR, net.name)
        if os.path.isdir(run_dir):
            problems.append(f"{net.name}: dnsname state {run_dir} left: {os.listdir(run_dir)}")
            shutil.rmtree(run_dir, ignore_errors=True)
        return problems

    def _unmount_and_remove(self):
        for target in mounts_under(self.base):
            _run("umount", "-l", target)
        shutil.rmtree(self.base, ignore_errors=True)


def mounts_under(path: str | os.PathLike) -> list[str]:
    """Mount points at or below path, deepest first (the order to unmount)."""
    base = str(Path(path).resolve())
    found = []
    with open("/proc/self/mounts") as f:
        for line in f:
            target = line.split()[1].replace("\\040", " ")
            if target == base or target.startswith(base + "/"):
                found.append(target)
    return sorted(found, key=len, reverse=True)


def listening_on(addr: str, port: int) -> list[str]:
    """`ss` lines of TCP listeners and UDP sockets bound to addr:port (host netns)."""
    out = _run("ss", "-Hlnutp").stdout
    pat = re.compile(r"\s" + re.escape(f"{addr}:{port}") + r"(%\S+)?\s")
    return [" ".join(line.split()) for line in out.splitlines() if pat.search(line)]


def dnsmasq_for(network: str) -> list[tuple[int, str]]:
    """dnsmasq processes whose command line names `network` (a config path
    like /run/containers/cni/dnsname/NET/dnsmasq.conf)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if not argv or not argv[0] or os.path.basename(argv[0].decode(errors="replace")) != "dnsmasq":
            continue
        cmdline = " ".join(a.decode(errors="replace") for a in argv if a)
        if re.search(r"(?<![\w-])" + re.escape(network) + r"(?![\w-])", cmdline):
            found.append((int(pid), cmdline))
    return found
