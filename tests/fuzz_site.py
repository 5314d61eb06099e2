"""A private node for tests that run plugins many times: the fuzzing suite
and the fault tests.

A Site is one worker's world: a "node" network namespace in which the
plugin executables run (their bridge, veths, nftables tables and agent live
there, apart from the machine's and from the other workers'), a pod
namespace for the container side, private state, run and IPAM dirs, and
optionally a `pycni agent` serving that node.  The calling thread enters
the node namespace around each exec (setns is per thread and a child
inherits its thread's namespaces), so a plugin runs there with no wrapper.

The node's agent may carry its duties as on a real node: the overlay's
node state file (written once, as the overlay duty writes it after taking
its lease: the `overlay` plugin reads it) and network policy (the agent's
policy duty enforces ``policy_dir``'s objects and serves the `netpolicy`
plugin on @pycni-policy of the node, keeping its registrations in the
plugins' state dir).

``observe()`` snapshots everything a plugin may leave behind, in-process
(pyroute2, libnftables, /proc/sys, the dirs), so "nothing left behind" is
one comparison with the snapshot taken before, cheap enough for every input.
The policy controller's registrations are files under the state dir and
its pods nft elements, so a leaked endpoint shows in the same comparison,
as do the overlay's masquerade exemptions.
"""
import ipaddress
import json
import os
import shutil
import subprocess

import nftables
from pyroute2 import IPRoute

from agent_env import RunningAgent
from cni_plugins import overlay
from cni_plugins.core import execute
from cni_plugins.core.records import write_atomic
from cni_plugins.dnsname.control import stop_resolvers
from cni_plugins.kernel import netns
from conftest import plugin_env, run, unique

NETWORK = "fuzznet"
# Container sysctls the fuzzer's tuning configs write: snapshotted in the pod
# (IFNAME is the container interface); DEL must put each one back.
POD_SYSCTLS = ("net.core.somaxconn", "net.ipv4.ping_group_range", "net.ipv4.ip_forward",
               "net.ipv4.conf.IFNAME.arp_ignore", "net.ipv4.conf.IFNAME.rp_filter",
               "net.ipv6.conf.IFNAME.disable_ipv6", "net.ipv4.tcp_syncookies")
# qdiscs a link has without anyone asking
_DEFAULT_QDISCS = {"noqueue", "noop", "pfifo_fast", "fq_codel", "mq", "pfifo"}


def _kept(name: str) -> bool:
    """Files that stay by design: host-local's lock and round-robin marks,
    dnsname's lock and resolver logs."""
    return name == "lock" or name.startswith("last_reserved_ip.") or (name.startswith("resolver-")
                                                                      and name.endswith(".log"))


class Site:
    def __init__(self, root, bin_dir: str, subnet: str, with_agent: bool = True, overlay_node: bool = False,
                 policy_dir=None):
        self.root, self.bin_dir, self.subnet = root, bin_dir, subnet
        self.overlay_node, self.policy_dir = overlay_node, policy_dir
        self.state, self.run_dir, self.data, self.cwd = (root / "state", root / "run", root / "ipam", root / "cwd")
        self.not_netns_file, self.not_netns_dir = root / "netns-file", root / "netns-dir"
        self.bridge = unique("pfzb")
        self.node = self.pod = None
        self.agent = None
        self.with_agent = with_agent
        self._build()

    # --- life cycle -------------------------------------------------------------------
    def _build(self) -> None:
        for d in (self.state, self.run_dir, self.data, self.cwd, self.not_netns_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.not_netns_file.write_text("")
        self.node = _make_netns("pfzn")
        self._node_fd = os.open(f"/run/netns/{self.node}", os.O_RDONLY | os.O_CLOEXEC)
        with netns.entered(self._node_fd):
            self._nft = nftables.Nftables()
            self._nft.set_json_output(True)
        self._open_pod()
        try:
            if self.overlay_node:
                self.restore_node_state()
            if self.with_agent:
                duties = ("--policy-dir", str(self.policy_dir), "--state-dir", str(self.state)) if self.policy_dir \
                    else ()
                self.agent = RunningAgent(unique("pycni-fuzz-"), self.root / "agent.log",
                                          prefix=("nsenter", f"--net=/run/netns/{self.node}"), args=duties,
                                          cwd=self.cwd)   # the plugins': what a relative path leaves is observed
            self.pristine = self.observe()
        except BaseException:  # the namespaces go with a site that never was
            self.close()
            raise

    def _open_pod(self) -> None:
        self.pod = _make_netns("pfzp")
        self._pod_fd = os.open(self.pod_path, os.O_RDONLY | os.O_CLOEXEC)

    def _close_pod(self) -> None:
        os.close(self._pod_fd)
        run("ip", "netns", "delete", self.pod, check=False)

    def container_gone(self) -> str:
        """The runtime removed the container: its netns goes (with whatever
        is in it).  Returns the path it had; a new pod netns replaces it."""
        gone = self.pod_path
        self._close_pod()
        self._open_pod()
        return gone

    def close(self) -> None:
        if self.agent is not None:
            self.agent.stop()
        stop_resolvers(str(self.run_dir))
        self._close_pod()
        os.close(self._node_fd)
        run("ip", "netns", "delete", self.node, check=False)

    def reset(self) -> None:
        """After a failure: a new node and pod, empty dirs (whatever the
        failed input left goes with its namespaces)."""
        self.close()
        for d in (self.state, self.run_dir, self.data, self.cwd):
            shutil.rmtree(d, ignore_errors=True)
        self._build()

    # --- the overlay's node state ---------------------------------------------------------
    @property
    def node_state_path(self) -> str:
        return overlay.state_path(str(self.run_dir), "default")

    def agent_node_state(self) -> overlay.NodeState:
        """The node state the overlay duty has for this node's lease: the
        site's subnet in a /16 cluster CIDR, dual-stack."""
        subnet = ipaddress.ip_network(self.subnet)
        second, third = subnet.network_address.packed[1:3]
        subnet6 = f"fd00:{second}:0:{third}::/64"
        return overlay.NodeState(cluster="default", node=self.node, cluster_cidr=str(subnet.supernet(new_prefix=16)),
                                 cluster_cidr6=f"fd00:{second}::/48",
                                 subnet=str(subnet), subnet6=subnet6, mtu=1450,
                                 vtep={"device": "pycni.1", "mac": "02:00:0a:f0:07:00",
                                       "address": str(subnet.network_address), "address6": subnet6.split("/")[0]},
                                 underlay={"interface": "eth0", "address": "192.0.2.10"})

    def restore_node_state(self) -> None:
        """The node state file as the overlay duty writes it, and no other."""
        self.put_node_state(None, None)
        overlay.write_state(self.node_state_path, self.agent_node_state())

    def put_node_state(self, content: bytes | None, left: bytes | None) -> None:
        """The node state file holds ``content`` and the one of a clean
        leave ``left`` (None: no such file)."""
        for path, data in ((self.node_state_path, content), (self.node_state_path + overlay.LEFT_SUFFIX, left)):
            if data is None:
                if os.path.exists(path):
                    os.unlink(path)
            else:
                write_atomic(path, data)

    # --- running plugins ----------------------------------------------------------------
    @property
    def pod_path(self) -> str:
        return f"/run/netns/{self.pod}"

    @property
    def node_path(self) -> str:
        return f"/run/netns/{self.node}"

    def private_env(self, agent: bool) -> dict:
        env = {"PYCNI_STATE_DIR": str(self.state), "PYCNI_RUN_DIR": str(self.run_dir)}
        if agent and self.agent is not None:
            env["PYCNI_AGENT_SOCKET"] = self.agent.name
        else:
            env["PYCNI_NO_AGENT"] = "1"
        return env

    def environ(self, command: str, *, container_id: str, ifname: str = "eth0", netns_path=None,
                args: str = "", agent: bool = True) -> dict:
        """What a runtime on this node passes (see conftest.plugin_env)."""
        return plugin_env(self.bin_dir, command, netns=self.pod_path if netns_path is None else netns_path,
                          container_id=container_id, ifname=ifname, cni_args=args,
                          extra_env=self.private_env(agent))

    def exec(self, plugin: str, env: dict, stdin: bytes, timeout: float = 60) -> execute.Outcome:
        with netns.entered(self._node_fd):
            return execute.run([os.path.join(self.bin_dir, plugin)], env, stdin, timeout=timeout, cwd=str(self.cwd))

    def start(self, plugin: str, env: dict, stdin: bytes) -> subprocess.Popen:
        """The plugin started on this node, stdin written: for killing it."""
        with netns.entered(self._node_fd):
            proc = subprocess.Popen([os.path.join(self.bin_dir, plugin)], env=env, cwd=str(self.cwd),
                                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(stdin)
        proc.stdin.close()
        proc.stdin = None  # written: communicate() only reads
        return proc

    def bridge_config(self, version: str = "1.0.0", **extra) -> dict:
        return {"cniVersion": version, "name": NETWORK, "type": "bridge", "bridge": self.bridge,
                "isGateway": True, "ipMasq": True,
                "ipam": {"type": "host-local", "dataDir": str(self.data), "ranges": [[{"subnet": self.subnet}]]},
                **extra}

    # --- what is there --------------------------------------------------------------------
    def observe(self, ifname: str = "eth0") -> dict:
        """Everything a plugin may leave behind on this node and in the pod
        (bridges and their addresses stay by design, as in the reference)."""
        # Sockets opened inside the namespace by this thread: IPRoute(netns=...)
        # forks a helper, which aborts now and then beside the other workers' setns.
        with netns.entered(self._node_fd), IPRoute() as ipr:
            node, qdiscs = list(ipr.get_links()), list(ipr.get_qdiscs())
            rc, ruleset, err = self._nft.json_cmd({"nftables": [{"list": {"ruleset": None}}]})
        assert rc == 0, err
        names = {link["index"]: link.get_attr("IFLA_IFNAME") for link in node}
        kinds = {link["index"]: _kind(link) for link in node}
        with netns.entered(self._pod_fd), IPRoute() as ipr:
            pod_links = list(ipr.get_links())
            sysctls = {key: _read_sysctl(key.replace("IFNAME", ifname)) for key in POD_SYSCTLS}
        return {
            "node links": sorted((names[i], kinds[i], names.get(link.get_attr("IFLA_MASTER")))
                                 for i, link in ((link["index"], link) for link in node)
                                 if kinds[i] != "bridge" and names[i] != "lo"),
            "node qdiscs": sorted((names.get(q["index"]), q.get_attr("TCA_KIND"), q["parent"])
                                  for q in qdiscs
                                  if q.get_attr("TCA_KIND") not in _DEFAULT_QDISCS),
            "nft": _our_elements(ruleset),
            "pod links": sorted(_link_state(link) for link in pod_links),
            "pod sysctls": sysctls,
            "files": self.files(),
        }

    def files(self) -> list[str]:
        """Files under our dirs (and the plugins' cwd), but those kept by design."""
        out = []
        for top in (self.state, self.run_dir, self.data, self.cwd):
            for dirpath, _, filenames in os.walk(top):
                out += [os.path.relpath(os.path.join(dirpath, f), self.root) for f in filenames if not _kept(f)]
        return sorted(out)

    def agent_log(self) -> str:
        return self.agent.log() if self.agent is not None else ""


def _make_netns(prefix: str) -> str:
    name = unique(prefix)
    run("ip", "netns", "add", name)
    run("ip", "-n", name, "link", "set", "lo", "up")
    return name


def _kind(link) -> str:
    info = link.get_attr("IFLA_LINKINFO")
    return (info.get_attr("IFLA_INFO_KIND") if info is not None else None) or "device"


def _link_state(link) -> tuple:
    return (link.get_attr("IFLA_IFNAME"), _kind(link), link.get_attr("IFLA_ADDRESS"), link.get_attr("IFLA_MTU"),
            link.get_attr("IFLA_TXQLEN"), link["flags"] & 0x1 and "up", link["flags"] & 0x100 and "promisc",
            link["flags"] & 0x200 and "allmulti")


def _read_sysctl(key: str) -> str | None:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as f:
            return f.read().strip()
    except OSError:
        return None


def _our_elements(ruleset: dict) -> dict:
    """{family table set: sorted elements} of every table: in a node of
    our own each is ours; a table with no element at all counts too."""
    out = {}
    for item in ruleset.get("nftables", []):
        if "table" in item:
            out.setdefault(f"{item['table']['family']} {item['table']['name']}", [])
        for kind in ("set", "map"):
            if kind in item and item[kind].get("elem"):
                s = item[kind]
                out.setdefault(f"{s['family']} {s['table']}", []).append(
                    (s["name"], sorted(json.dumps(e, sort_keys=True) for e in s["elem"])))
    return {table: sorted(sets) for table, sets in out.items()}


def report_line(pytestconfig, text: str) -> None:
    """A line on the terminal whatever -q and capturing say (seeds, counts)."""
    capture = pytestconfig.pluginmanager.getplugin("capturemanager")
    reporter = pytestconfig.pluginmanager.getplugin("terminalreporter")
    if reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(text)
