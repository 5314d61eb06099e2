"""Running plugins as a runtime would, in throw-away network namespaces.

Everything the suite creates gets a unique name (uuid suffix) and is
removed by ``Sandbox.close()``: namespaces, the bridge the plugin made,
firewall rules or set elements that mention the run's subnet or network
name, and the private IPAM/state directories.  Plugins are executed with a
clean environment: the CNI_* variables plus what the suite config's ``env``
says (e.g. a PATH for plugins that exec iptables).
"""
from __future__ import annotations

import copy
import ipaddress
import json
import os
import random
import re
import shlex
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field

from cni_plugins.core import execute as plugin_exec

EXEC_TIMEOUT = 30


def sh(*cmd: str, check: bool = False, input: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, check=check, input=input, timeout=60)


# --- one plugin execution ------------------------------------------------------
@dataclass
class Exec:
    plugin: str
    command: str
    rc: int
    stdout: str
    stderr: str
    seconds: float
    json: object = None
    json_error: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.rc == 0

    def brief(self, limit: int = 160) -> str:
        out = self.stdout.strip().replace("\n", " ") or self.stderr.strip().replace("\n", " ")
        if len(out) > limit:
            out = out[:limit] + "..."
        return f"{self.plugin} {self.command} exit {self.rc}: {out or '(no output)'}"


def execute(bin_dir: str, plugin: str, command: str, stdin: bytes | str | dict | None, *,
            container_id: str = "", netns: str = "", ifname: str = "", env: dict | None = None,
            drop: tuple[str, ...] = (), path: str | None = None) -> Exec:
    """Exec ``bin_dir/plugin`` with only CNI_* variables and ``env``."""
    full = plugin_exec.cni_environ({}, command, container_id=container_id, netns=netns, ifname=ifname,
                               path=path or bin_dir)
    full.update(env or {})
    for key in drop:
        full.pop(key, None)
    if isinstance(stdin, dict):
        stdin = json.dumps(stdin)
    if isinstance(stdin, str):
        stdin = stdin.encode()
    start = time.monotonic()
    try:
        out = plugin_exec.run([os.path.join(bin_dir, plugin)], full, stdin or b"", timeout=EXEC_TIMEOUT)
    except subprocess.TimeoutExpired:
        return Exec(plugin, command, -1, "", f"timed out after {EXEC_TIMEOUT}s", time.monotonic() - start)
    except OSError as e:
        return Exec(plugin, command, -1, "", f"cannot exec: {e}", time.monotonic() - start)
    return Exec(plugin, command, out.rc, out.stdout.decode(errors="replace"), out.stderr, out.seconds,
                json=out.output, json_error=out.output_error)


# --- the suite config ------------------------------------------------------------
@dataclass
class SuiteConfig:
    name: str
    network: dict                    # conflist or single plugin config (template)
    main: str                        # plugin type under test
    versions: list[str] | None = None
    env: dict = field(default_factory=dict)
    ifname: str = "eth0"
    chained: bool = False            # main plugin is meant to run after others
    concurrency: int = 4
    source: str = ""

    @classmethod
    def load(cls, path: str) -> "SuiteConfig":
        with open(path) as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
        network = data["network"]
        if isinstance(network, str):  # a path to a .conf/.conflist, relative to the config
            with open(os.path.join(os.path.dirname(path), network)) as f:
                network = json.load(f)
        plugins = network.get("plugins") or [network]
        main = data.get("main") or plugins[0]["type"]
        versions = data.get("versions")
        if versions in (None, "auto"):
            versions = None
        return cls(name=data.get("name") or os.path.basename(path).rsplit(".", 1)[0], network=network,
                   main=main, versions=[str(v) for v in versions] if versions else None,
                   env={k: str(v) for k, v in (data.get("env") or {}).items()},
                   ifname=data.get("ifname", "eth0"), chained=bool(data.get("chained", False)),
                   concurrency=int(data.get("concurrency", 4)), source=path)


# --- names, subnets, placeholders ---------------------------------------------------
def _used_networks() -> list:
    nets = []
    for args in (("ip", "-j", "-4", "route", "show", "table", "all"), ("ip", "-j", "-4", "addr")):
        try:
            data = json.loads(sh(*args).stdout or "[]")
        except ValueError:
            continue
        for item in data:
            if "dst" in item and item["dst"] not in ("default",):
                try:
                    nets.append(ipaddress.ip_network(item["dst"], strict=False))
                except ValueError:
                    pass
            for a in item.get("addr_info", []):
                try:
                    nets.append(ipaddress.ip_network(f"{a['local']}/{a['prefixlen']}", strict=False))
                except (KeyError, ValueError):
                    pass
    return nets


def pick_subnet() -> ipaddress.IPv4Network:
    used = _used_networks()
    for _ in range(200):
        net = ipaddress.ip_network(f"10.{random.randint(200, 254)}.{random.randint(0, 255)}.0/24")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0):
            return net
    raise RuntimeError("no free 10.2xx.x.0/24 subnet found")


def substitute(obj, values: dict[str, str]):
    if isinstance(obj, str):
        for key, value in values.items():
            obj = obj.replace("{" + key + "}", value)
        return obj
    if isinstance(obj, list):
        return [substitute(o, values) for o in obj]
    if isinstance(obj, dict):
        return {k: substitute(v, values) for k, v in obj.items()}
    return obj


def addr_pattern(address: str) -> re.Pattern:
    """Matches one address (not a longer one it is a prefix of)."""
    ip = address.split("/")[0]
    if ":" in ip:
        return re.compile(r"(?<![0-9a-fA-F:])" + re.escape(ip) + r"(?![0-9a-fA-F:])")
    return re.compile(r"(?<![\d.])" + re.escape(ip) + r"(?![\d])")


# --- the sandbox: everything one suite run creates ---------------------------------
class Sandbox:
    def __init__(self, bin_dir: str, cfg: SuiteConfig):
        self.bin_dir = os.path.abspath(bin_dir)
        self.cfg = cfg
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.tmp = tempfile.mkdtemp(prefix=f"cnicf-{tag}-")
        self.subnet = pick_subnet()
        self.values = {
            "name": f"cf-{cfg.name}-{tag}",
            "bridge": f"cf{tag}",
            "subnet": str(self.subnet),
            "gateway": str(self.subnet.network_address + 1),
            "rangeStart": str(self.subnet.network_address + 2),
            "rangeEnd": str(self.subnet.network_address + 250),
            "dataDir": os.path.join(self.tmp, "ipam"),
            "stateDir": os.path.join(self.tmp, "state"),
            "runDir": os.path.join(self.tmp, "run"),
            "tmp": self.tmp,
        }
        self.network = substitute(cfg.network, self.values)
        self.env = substitute(cfg.env, self.values)
        self.netns_made: list[str] = []
        self._counter = 0

    # plugin list in libcni's terms
    @property
    def plugins(self) -> list[dict]:
        return self.network.get("plugins") or [
            {k: v for k, v in self.network.items() if k not in ("cniVersion", "name")}]

    @property
    def net_name(self) -> str:
        return self.network.get("name") or self.values["name"]

    def plugin_conf(self, plugin: dict, version: str, prev=None, extra: dict | None = None) -> dict:
        conf = copy.deepcopy(plugin)
        conf["cniVersion"] = version
        conf["name"] = self.net_name
        if prev is not None:
            conf["prevResult"] = prev
        conf.update(extra or {})
        return conf

    def exec(self, plugin: str, command: str, stdin, **kw) -> Exec:
        env = dict(self.env)
        env.update(kw.pop("env", {}) or {})
        return execute(self.bin_dir, plugin, command, stdin, env=env, **kw)

    def container_id(self, hint: str = "c") -> str:
        self._counter += 1
        return f"cf{self.tag}-{hint}{self._counter}"

    # -- namespaces
    def make_netns(self) -> tuple[str, str]:
        self._counter += 1
        name = f"cf{self.tag}n{self._counter}"
        sh("ip", "netns", "add", name, check=True)
        self.netns_made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name, f"/var/run/netns/{name}"

    def delete_netns(self, name: str) -> None:
        sh("ip", "netns", "delete", name)

    # -- the network as a runtime runs it (libcni order)
    def add_list(self, version: str, cid: str, netns: str, ifname: str, plugins=None):
        """ADD every plugin in order; returns (final result, execs)."""
        prev, execs = None, []
        for plugin in plugins or self.plugins:
            e = self.exec(plugin["type"], "ADD", self.plugin_conf(plugin, version, prev),
                          container_id=cid, netns=netns, ifname=ifname)
            execs.append(e)
            if not e.ok or not isinstance(e.json, dict):
                return None, execs
            prev = e.json
        return prev, execs

    def check_list(self, version: str, cid: str, netns: str, ifname: str, result, plugins=None):
        execs = []
        for plugin in plugins or self.plugins:
            e = self.exec(plugin["type"], "CHECK", self.plugin_conf(plugin, version, result),
                          container_id=cid, netns=netns, ifname=ifname)
            execs.append(e)
            if not e.ok:
                break
        return execs

    def del_list(self, version: str, cid: str, netns: str, ifname: str, result, plugins=None):
        execs = []
        for plugin in reversed(plugins or self.plugins):
            e = self.exec(plugin["type"], "DEL", self.plugin_conf(plugin, version, result),
                          container_id=cid, netns=netns, ifname=ifname)
            execs.append(e)
        return execs

    # -- cleanup
    def close(self) -> list[str]:
        """Remove everything; returns what had to be removed by force."""
        forced = []
        for name in self.netns_made:
            if os.path.exists(f"/var/run/netns/{name}"):
                sh("ip", "netns", "delete", name)
        # links attached to our bridge, then the bridge itself
        br = self.values["bridge"]
        for link in host_links():
            if link.get("master") == br:
                sh("ip", "link", "delete", link["ifname"])
                forced.append(f"link {link['ifname']}")
        if any(link["ifname"] == br for link in host_links()):
            sh("ip", "link", "delete", br)
        forced += purge_firewall(self.subnet, self.net_name, br)
        shutil.rmtree(self.tmp, ignore_errors=True)
        return forced


# --- observing the kernel --------------------------------------------------------------
def host_links(netns: str | None = None) -> list[dict]:
    args = ("ip", "-n", netns, "-j", "link", "show") if netns else ("ip", "-j", "link", "show")
    try:
        return json.loads(sh(*args).stdout or "[]")
    except ValueError:
        return []


def addresses(netns: str | None = None) -> dict[str, list[str]]:
    """ifname -> ["addr/prefix", ...]"""
    args = ("ip", "-n", netns, "-j", "addr", "show") if netns else ("ip", "-j", "addr", "show")
    try:
        data = json.loads(sh(*args).stdout or "[]")
    except ValueError:
        return {}
    return {d["ifname"]: [f"{a['local']}/{a['prefixlen']}" for a in d.get("addr_info", []) if "local" in a]
            for d in data}


def routes(netns: str) -> list[dict]:
    out = []
    for fam in ("-4", "-6"):
        try:
            out += json.loads(sh("ip", "-n", netns, "-j", fam, "route", "show", "table", "all").stdout or "[]")
        except ValueError:
            pass
    return out


def firewall_text() -> str:
    """nftables ruleset plus iptables-save output (both families)."""
    parts = [sh("nft", "list", "ruleset").stdout]
    for tool in ("iptables-save", "ip6tables-save"):
        if shutil.which(tool) or os.path.exists(f"/usr/sbin/{tool}"):
            parts.append(sh(tool).stdout)
    return "\n".join(parts)


def mentions(text: str, address: str) -> list[str]:
    pat = addr_pattern(address)
    return [line.strip() for line in text.splitlines() if pat.search(line)]


def ipam_files(data_dir: str) -> dict[str, str]:
    """Every file under data_dir except locks and last_reserved pointers -> content."""
    out = {}
    for root, _dirs, files in os.walk(data_dir):
        for f in files:
            if f == "lock" or f.startswith("last_reserved_ip"):
                continue
            p = os.path.join(root, f)
            try:
                with open(p, errors="replace") as fh:
                    out[os.path.relpath(p, data_dir)] = fh.read(200)
            except OSError:
                out[os.path.relpath(p, data_dir)] = ""
    return out


def wait_link_gone(names: list[str], seconds: float = 2.0) -> list[str]:
    """Host links among ``names`` still present after up to ``seconds``
    (a deleted netns takes its veth peers with it asynchronously)."""
    deadline = time.monotonic() + seconds
    while True:
        present = {l["ifname"] for l in host_links()}
        left = [n for n in names if n in present]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.1)


# --- firewall purge (our subnet / network name only) ---------------------------------------
def purge_firewall(subnet: ipaddress.IPv4Network, net_name: str, bridge: str) -> list[str]:
    prefix = ".".join(str(subnet.network_address).split(".")[:3]) + "."
    pat = re.compile(r"(?<![\d.])" + re.escape(prefix) + r"\d{1,3}(?![\d])|" + re.escape(net_name)
                     + r"|\b" + re.escape(bridge) + r"\b")
    removed = []
    for tool, restore in (("iptables", "iptables-save"), ("ip6tables", "ip6tables-save")):
        if not shutil.which(restore) and not os.path.exists(f"/usr/sbin/{restore}"):
            continue
        for table in ("nat", "filter", "mangle"):
            text = sh(restore, "-t", table).stdout
            chains = set()
            for line in text.splitlines():
                if line.startswith("-A ") and pat.search(line):
                    args = shlex.split(line)
                    if args[1].startswith("CNI-"):
                        chains.add(args[1])
                    if "-j" in args:
                        target = args[args.index("-j") + 1]
                        if target.startswith("CNI-"):
                            chains.add(target)
                    sh(tool, "-t", table, "-D", *args[1:])
                    removed.append(f"{tool} -t {table} {line}")
            for chain in chains:
                # drop every remaining jump to the chain, then the chain
                for line in sh(restore, "-t", table).stdout.splitlines():
                    if line.startswith("-A ") and f"-j {chain}" in line:
                        sh(tool, "-t", table, "-D", *shlex.split(line)[1:])
                sh(tool, "-t", table, "-F", chain)
                sh(tool, "-t", table, "-X", chain)
                removed.append(f"{tool} -t {table} chain {chain}")
    # nftables proper: rules and set elements that mention our addresses
    try:
        ruleset = json.loads(sh("nft", "-j", "-a", "list", "ruleset").stdout or "{}").get("nftables", [])
    except ValueError:
        ruleset = []
    cmds = []
    for item in ruleset:
        if "rule" in item:
            r = item["rule"]
            if pat.search(json.dumps(r.get("expr", []))):
                cmds.append({"delete": {"rule": {k: r[k] for k in ("family", "table", "chain", "handle")}}})
        elif "set" in item and item["set"].get("elem"):
            s = item["set"]
            bad = [e for e in s["elem"] if pat.search(json.dumps(e))]
            if bad:
                cmds.append({"delete": {"element": {"family": s["family"], "table": s["table"],
                                                    "name": s["name"], "elem": bad}}})
    for cmd in cmds:  # one by one: a failure must not undo the others
        r = sh("nft", "-j", "-f", "-", input=json.dumps({"nftables": [cmd]}))
        removed.append(f"nft {json.dumps(cmd)[:120]}" + ("" if r.returncode == 0 else f" (failed: {r.stderr.strip()})"))
    return removed
