"""Running plugins as a runtime would, in throw-away network namespaces.

Everything the suite creates gets a unique name (uuid suffix) and is
removed by ``Sandbox.close()``: namespaces, the bridges the plugins made,
firewall rules or set elements that mention the run's subnets or network
name, and the private IPAM/state directories.  A deployed network config
is first derived into a private copy (derive.py); a suite config's template
gets its placeholders filled in.  Plugins are executed with a clean
environment: the CNI_* variables plus ``env`` (by default a PATH for
plugins that exec iptables, and private state dirs for pycni's).
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
from dataclasses import dataclass

from cni_plugins.core import execute as plugin_exec

from .config import SuiteConfig
from .derive import Change, Fresh, derive, private_data_dir
from .netconf import plugins_of
from .text import elide

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
        out = elide(self.stdout.strip() or self.stderr.strip(), limit)
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


def pick_subnet(prefixlen: int = 24, avoid=()) -> ipaddress.IPv4Network:
    """A 10.2xx subnet (a /16 to a /24; a longer prefix is carved from a
    /24) overlapping no address or route of the host, nor ``avoid``."""
    size = max(16, min(prefixlen, 24))
    used = _used_networks() + list(avoid)
    for _ in range(200):
        third = random.randrange(0, 256, 1 << (24 - size))
        net = ipaddress.ip_network(f"10.{random.randint(200, 254)}.{third}.0/{size}")
        if not any(net.overlaps(u) for u in used if u.prefixlen > 0 and u.version == 4):
            return ipaddress.ip_network((net.network_address, prefixlen))
    raise RuntimeError(f"no free 10.2xx.x.0/{size} subnet found")


def pick_subnet6(prefixlen: int = 64) -> ipaddress.IPv6Network:
    """A subnet of a random unique local /48 (RFC 4193), which nothing else uses."""
    base = ipaddress.ip_network("fd00::/8").network_address + (random.getrandbits(40) << 80)
    return ipaddress.ip_network((base, max(48, prefixlen)))


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
# what plugins of a derived network get besides CNI_* (a suite config's env adds to it)
DEFAULT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "PYCNI_STATE_DIR": "{stateDir}",
               "PYCNI_RUN_DIR": "{runDir}"}


class Sandbox:
    def __init__(self, bin_dir: str, cfg: SuiteConfig):
        self.bin_dir = os.path.abspath(bin_dir)
        self.cfg = cfg
        tag = uuid.uuid4().hex[:8]
        self.tag = tag
        self.tmp = tempfile.mkdtemp(prefix=f"cnicf-{tag}-")
        self.subnet = pick_subnet()
        self.values = {
            "name": f"cf-{re.sub(r'[^a-zA-Z0-9_.-]', '', cfg.name)[:20] or 'net'}-{tag}",
            "bridge": f"cf{tag}",
            "subnet": str(self.subnet),
            "gateway": str(self.subnet.network_address + 1),
            "rangeStart": str(self.subnet.network_address + 2),
            "rangeEnd": str(self.subnet.network_address + 250),
            "dataDir": private_data_dir(self.tmp, "host-local"),
            "stateDir": os.path.join(self.tmp, "state"),
            "runDir": os.path.join(self.tmp, "run"),
            "tmp": self.tmp,
        }
        self.subnets = [self.subnet]         # every subnet the run's addresses come from
        self.changes: list[Change] = []      # what a derived network changed of the config as written
        self.notes: list[str] = []
        if cfg.derived:
            derived = derive(cfg.network, Fresh(self.values["name"], self.values["bridge"], self.tmp,
                                                self._fresh_subnet))
            self.network, self.bridges = derived.network, derived.bridges
            self.changes, self.notes = derived.changes, derived.notes
            defaults = {k: v for k, v in substitute(DEFAULT_ENV, self.values).items() if k not in cfg.env}
            self.changes += [Change(f"env {k}", "(unset)", v) for k, v in defaults.items()]
            self.env = {**defaults, **substitute(cfg.env, self.values)}
        else:
            self.network, self.bridges = substitute(cfg.network, self.values), [self.values["bridge"]]
            self.env = substitute(cfg.env, self.values)
        self.netns_made: list[str] = []
        self._counter = 0
        self.firewall_before = firewall_objects()

    def _fresh_subnet(self, prefixlen: int, family: int):
        subnet = pick_subnet(prefixlen, self.subnets) if family == 4 else pick_subnet6(prefixlen)
        self.subnets.append(subnet)
        return subnet

    # plugin list in libcni's terms
    @property
    def plugins(self) -> list[dict]:
        return plugins_of(self.network)

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
        # links attached to our bridges, then the bridges themselves
        for link in host_links():
            if link.get("master") in self.bridges:
                sh("ip", "link", "delete", link["ifname"])
                forced.append(f"link {link['ifname']}")
        for link in host_links():
            if link["ifname"] in self.bridges:
                sh("ip", "link", "delete", link["ifname"])
        forced += purge_firewall(self.subnets, [self.net_name, *self.bridges])
        forced += remove_new_firewall_objects(self.firewall_before)
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


# --- firewall purge (our subnets / names only) ---------------------------------------
_ADDRESS = re.compile(r"(?<![\w.:])(?:\d{1,3}(?:\.\d{1,3}){3}|[0-9a-fA-F]{0,4}(?::[0-9a-fA-F]{0,4}){2,7})(?![\w.:])")


class _Ours:
    """Does a line of firewall text name one of our subnets or names?"""

    def __init__(self, subnets: list, names: list[str]):
        self.subnets = subnets
        self.names = re.compile("|".join(r"(?<![\w-])" + re.escape(n) + r"(?![\w-])" for n in names))

    def search(self, text: str) -> bool:
        if self.names.search(text):
            return True
        for m in _ADDRESS.finditer(text):
            try:
                address = ipaddress.ip_address(m.group())
            except ValueError:
                continue
            if any(address in s for s in self.subnets):
                return True
        return False


def purge_firewall(subnets: list, names: list[str]) -> list[str]:
    pat = _Ours(subnets, names)
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
    cmds = []
    for item in _ruleset():
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
    return removed + _nft_each(cmds)


def _ruleset() -> list[dict]:
    try:
        return json.loads(sh("nft", "-j", "-a", "list", "ruleset").stdout or "{}").get("nftables", [])
    except ValueError:
        return []


def _nft_each(cmds: list[dict]) -> list[str]:
    """Run nft JSON commands one by one (a failure must not undo the
    others); what was done, failures noted."""
    done = []
    for cmd in cmds:
        r = sh("nft", "-j", "-f", "-", input=json.dumps({"nftables": [cmd]}))
        failed = f" (failed: {r.stderr.strip()})" if r.returncode else ""
        done.append(f"nft {elide(json.dumps(cmd), 120)}{failed}")
    return done


# --- global firewall objects a run created ---------------------------------------------------------
def _tables_and_chains(ruleset: list[dict]) -> tuple[set, set]:
    tables = {(i["table"]["family"], i["table"]["name"]) for i in ruleset if "table" in i}
    chains = {(i["chain"]["family"], i["chain"]["table"], i["chain"]["name"]) for i in ruleset if "chain" in i}
    return tables, chains


def firewall_objects() -> tuple[set, set]:
    """The nftables tables (family, name) and chains (family, table, name)
    there are now, iptables-nft's included."""
    return _tables_and_chains(_ruleset())


def _bare_jump(rule: dict) -> str | None:
    """The target of a rule that does nothing but jump (counted, commented)."""
    target = None
    for e in rule.get("expr", []):
        if "jump" in e or "goto" in e:
            target = (e.get("jump") or e.get("goto"))["target"]
        elif not ("counter" in e or e.get("xt", {}).get("name") == "comment"):
            return None
    return target


def remove_new_firewall_objects(before: tuple[set, set]) -> list[str]:
    """Remove the global CNI-* chains (the reference firewall's CNI-FORWARD
    and CNI-ADMIN, portmap's CNI-HOSTPORT-*) and the tables that appeared
    since ``before``, once nothing is left in them but jumps among
    themselves: no container's rule, ours or anyone's, goes with them."""
    tables_before, chains_before = before
    ruleset = _ruleset()
    rules = [item["rule"] for item in ruleset if "rule" in item]
    created = {c for c in _tables_and_chains(ruleset)[1] - chains_before if c[2].startswith("CNI-")}

    def chain(r):
        return r["family"], r["table"], r["chain"]

    def target(r):
        jump = _bare_jump(r)
        return (r["family"], r["table"], jump) if jump else None

    removable = set(created)
    while True:   # a created chain stays if it holds any other rule, or a staying one jumps to it
        staying = created - removable
        keep = {chain(r) for r in rules if chain(r) in removable and target(r) not in removable}
        keep |= {target(r) for r in rules if chain(r) in staying and target(r) in removable}
        if not keep:
            break
        removable -= keep
    cmds = [{"flush": {"chain": {"family": f, "table": t, "name": c}}} for f, t, c in sorted(removable)]
    cmds += [{"delete": {"rule": {k: r[k] for k in ("family", "table", "chain", "handle")}}} for r in rules
             if chain(r) not in removable and target(r) in removable]
    cmds += [{"delete": {"chain": {"family": f, "table": t, "name": c}}} for f, t, c in sorted(removable)]
    done = _nft_each(cmds)
    ruleset = _ruleset()
    busy = {(i["rule"]["family"], i["rule"]["table"]) for i in ruleset if "rule" in i}
    busy |= {(i["set"]["family"], i["set"]["table"]) for i in ruleset if "set" in i and i["set"].get("elem")}
    empty = _tables_and_chains(ruleset)[0] - tables_before - busy
    return done + _nft_each([{"delete": {"table": {"family": f, "name": n}}} for f, n in sorted(empty)])
