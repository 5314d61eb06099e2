"""Labs: hosts and pods built from real network namespaces, wired up by the
CNI plugins driven through the CNI protocol (libcni.py).

A lab file (YAML)::

    name: demo                    # [a-z0-9-], at most 20 characters
    cniVersion: 1.0.0             # optional, for the generated conflists
    cniPath: /usr/lib/cni         # optional; default: pycni's plugins, installed
                                  #   into the lab dir (`--cni-path` overrides both)
    loopback: true                # optional; run the `loopback` plugin (ifname lo) per pod
    hosts:
      - name: node1               # netns "pycni-<lab>-<host>", standing for a node
        underlay: 10.250.0.1/24   # optional: eth0 in the host, on a lab bridge in the root netns
    networks:
      - name: podnet
        subnet: 10.244.1.0/24     # and/or subnet6: fd00:244:1::/64
        # optional: type (bridge), bridge (default "pb-<network>"), isGateway (true),
        # ipMasq (false), mtu, hairpinMode, cniVersion,
        # or plugins: [...] a full CNI plugin list (host-local gets a per-host dataDir)
        # dns: true appends the dnsname plugin (domain: its domainName, default
        #   dns.podman): pods resolve each other by name through the resolver on
        #   the gateway; each pod gets /etc/netns/<pod netns>/resolv.conf from
        #   the result's dns, which `ip netns exec` (so `lab exec`) mounts
    pods:
      - {name: a, host: node1, network: podnet}          # namespace: default
      - {name: b, namespace: web, host: node1, network: podnet, ifname: eth0}

Every host keeps its own CNI state under ``/run/pycni/lab/<lab>/hosts/<host>``
(conflists, libcni cache, host-local dataDir, PYCNI_STATE_DIR and
PYCNI_RUN_DIR), and the plugins run inside the host's netns, so a pod's
bridge lives in its host.  Pod netns: ``pycni-<lab>-<namespace>.<pod>``.
The lab's state is ``state.json`` in the lab dir; ``down`` works from it
(or from the file, or from the netns names alone) even after a failed ``up``.

Unknown keys are errors: the SCHEMA table below is where later features
(overlay, DNS, policies) add theirs.
"""
from __future__ import annotations

import glob
import hashlib
import ipaddress
import json
import os
import re
import shutil
import subprocess
import sys

from cni_plugins.core.records import write_atomic
from cni_plugins.dnsname.control import stop_resolvers

from . import libcni

LAB_ROOT_ENV = "PYCNI_LAB_ROOT"
DEFAULT_LAB_ROOT = "/run/pycni/lab"
LOOPBACK_NET = "loopback"


class LabError(Exception):
    pass


def lab_root() -> str:
    return os.environ.get(LAB_ROOT_ENV) or DEFAULT_LAB_ROOT


# ------------------------------------------------------------------ schema
# section -> {key: type}; a key marked "!" is required

SCHEMA: dict[str, dict[str, type]] = {
    "lab": {"name!": str, "cniVersion": str, "cniPath": str, "loopback": bool, "hosts!": list,
            "networks!": list, "pods": list},
    "hosts": {"name!": str, "underlay": str},
    "networks": {"name!": str, "subnet": str, "subnet6": str, "type": str, "bridge": str, "isGateway": bool,
                 "ipMasq": bool, "mtu": int, "hairpinMode": bool, "cniVersion": str, "plugins": list,
                 "dns": bool, "domain": str},
    "pods": {"name!": str, "namespace": str, "host!": str, "network!": str, "ifname": str},
}

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


def _check_keys(where: str, section: str, obj) -> None:
    if not isinstance(obj, dict):
        raise LabError(f"{where}: expected a mapping, got {type(obj).__name__}")
    schema = {key.rstrip("!"): (kind, key.endswith("!")) for key, kind in SCHEMA[section].items()}
    for key in obj:
        if key not in schema:
            raise LabError(f"{where}: unknown key {key!r} (known keys: {', '.join(schema)})")
    for key, (kind, required) in schema.items():
        if key not in obj:
            if required:
                raise LabError(f"{where}: missing required key {key!r}")
            continue
        value = obj[key]
        if kind is int and isinstance(value, bool) or not isinstance(value, kind):
            raise LabError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")


def _check_name(where: str, value: str, maxlen: int = 30) -> None:
    if not _NAME_RE.match(value) or len(value) > maxlen:
        raise LabError(f"{where}: invalid name {value!r} (lowercase letters, digits and '-', "
                       f"at most {maxlen} characters)")


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def parse(data, source: str = "<lab>") -> dict:
    """Validate a lab description and return the plan: every name it will use."""
    _check_keys(source, "lab", data)
    name = data["name"]
    _check_name(f"{source}: name", name, 20)
    cni_version = data.get("cniVersion", "1.0.0")
    base = os.path.join(lab_root(), name)
    plan = {
        "name": name,
        "dir": base,
        "cniVersion": cni_version,
        "cniPath": data.get("cniPath"),
        "loopback": data.get("loopback", True),
        "underlayBridge": None,
        "hosts": [],
        "networks": [],
        "pods": [],
    }
    hosts = {}
    for i, h in enumerate(data["hosts"]):
        where = f"{source}: hosts[{i}]"
        _check_keys(where, "hosts", h)
        _check_name(f"{where}: name", h["name"])
        if h["name"] in hosts:
            raise LabError(f"{where}: duplicate host {h['name']!r}")
        host = {
            "name": h["name"],
            "netns": f"pycni-{name}-{h['name']}",
            "dir": os.path.join(base, "hosts", h["name"]),
            "underlay": None,
            "veth": None,
        }
        if "underlay" in h:
            try:
                iface = ipaddress.ip_interface(h["underlay"])
            except ValueError:
                raise LabError(f"{where}: underlay {h['underlay']!r} is not an address/prefix") from None
            if iface.network.prefixlen == iface.max_prefixlen:
                raise LabError(f"{where}: underlay {h['underlay']!r} needs a prefix length, e.g. /24")
            host["underlay"] = str(iface)
            host["veth"] = f"plv-{_hash(name + '/' + h['name'])}"
            plan["underlayBridge"] = f"plb-{_hash(name)}"
        hosts[h["name"]] = host
        plan["hosts"].append(host)
    if not hosts:
        raise LabError(f"{source}: at least one host is needed")

    networks = {}
    for i, n in enumerate(data["networks"]):
        where = f"{source}: networks[{i}]"
        _check_keys(where, "networks", n)
        _check_name(f"{where}: name", n["name"])
        if n["name"] in networks or n["name"] == LOOPBACK_NET:
            raise LabError(f"{where}: duplicate or reserved network name {n['name']!r}")
        for key, fam in (("subnet", 4), ("subnet6", 6)):
            if key in n:
                try:
                    net = ipaddress.ip_network(n[key])
                except ValueError:
                    raise LabError(f"{where}: {key} {n[key]!r} is not a network (e.g. 10.244.1.0/24)") from None
                if net.version != fam:
                    raise LabError(f"{where}: {key} must be an IPv{fam} network")
        if "plugins" in n:
            extra = set(n) - {"name", "plugins", "cniVersion"}
            if extra:
                raise LabError(f"{where}: with 'plugins', only name and cniVersion may be given "
                               f"(not {', '.join(sorted(extra))})")
            for j, p in enumerate(n["plugins"]):
                if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                    raise LabError(f"{where}: plugins[{j}] must be a mapping with a 'type'")
        elif "subnet" not in n and "subnet6" not in n:
            raise LabError(f"{where}: give subnet and/or subnet6 (or a full 'plugins' list)")
        bridge = n.get("bridge", f"pb-{n['name']}"[:15])
        if len(bridge) > 15:
            raise LabError(f"{where}: bridge name {bridge!r} is longer than 15 characters")
        network = dict(n)
        network["bridge"] = bridge
        networks[n["name"]] = network
        plan["networks"].append(network)
    bridges = [n["bridge"] for n in plan["networks"] if "plugins" not in n]
    if len(set(bridges)) != len(bridges):
        raise LabError(f"{source}: two networks use the same bridge name; set 'bridge' explicitly")

    seen = set()
    for i, p in enumerate(data.get("pods") or []):
        where = f"{source}: pods[{i}]"
        _check_keys(where, "pods", p)
        _check_name(f"{where}: name", p["name"])
        ns = p.get("namespace", "default")
        _check_name(f"{where}: namespace", ns)
        if (ns, p["name"]) in seen:
            raise LabError(f"{where}: duplicate pod {ns}/{p['name']}")
        seen.add((ns, p["name"]))
        if p["host"] not in hosts:
            raise LabError(f"{where}: unknown host {p['host']!r} (hosts: {', '.join(hosts)})")
        if p["network"] not in networks:
            raise LabError(f"{where}: unknown network {p['network']!r} (networks: {', '.join(networks)})")
        plan["pods"].append({
            "name": p["name"],
            "namespace": ns,
            "host": p["host"],
            "network": p["network"],
            "ifname": p.get("ifname", "eth0"),
            "netns": f"pycni-{name}-{ns}.{p['name']}",
            "containerId": f"{name}-{ns}-{p['name']}-{_hash(name + ns + p['name'])}",
            "ips": [],
            "result": None,
        })
    return plan


def load_file(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise LabError(f"cannot read lab file: {e}") from None
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML: {e}") from None
    plan = parse(data, path)
    plan["file"] = os.path.abspath(path)
    if plan["cniPath"]:
        plan["cniPath"] = os.path.join(os.path.dirname(plan["file"]), plan["cniPath"])
    return plan


# ------------------------------------------------------------------ helpers

def _run(*cmd, check=True, quiet=False) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"`{' '.join(cmd)}` failed: {proc.stderr.strip() or proc.returncode}")
    return proc


def netns_exists(name: str) -> bool:
    return os.path.exists(f"/run/netns/{name}")


def link_exists(name: str) -> bool:
    return os.path.exists(f"/sys/class/net/{name}")


def state_path(lab_dir: str) -> str:
    return os.path.join(lab_dir, "state.json")


def save_state(plan: dict) -> None:
    write_atomic(state_path(plan["dir"]), json.dumps(plan, indent=2).encode())


def load_state(name: str) -> dict | None:
    try:
        with open(state_path(os.path.join(lab_root(), name))) as f:
            return json.load(f)
    except FileNotFoundError:
        return None
    except ValueError as e:
        raise LabError(f"lab {name}: corrupt state file: {e}") from None


def list_labs() -> list[str]:
    try:
        return sorted(n for n in os.listdir(lab_root()) if os.path.isdir(os.path.join(lab_root(), n)))
    except FileNotFoundError:
        return []


def resolve(ref: str | None) -> tuple[str, dict | None]:
    """FILE, NAME or None (the only lab) -> (lab name, plan from file or None)."""
    if ref is None:
        labs = list_labs()
        if len(labs) != 1:
            raise LabError("name the lab (FILE or NAME): " +
                           (f"labs up: {', '.join(labs)}" if labs else "no lab is up"))
        return labs[0], None
    if os.path.isfile(ref):
        plan = load_file(ref)
        return plan["name"], plan
    if not _NAME_RE.match(ref):
        raise LabError(f"no lab file or lab named {ref!r}")
    return ref, None


def conflist_for(plan: dict, host: dict, network: dict) -> dict:
    version = network.get("cniVersion", plan["cniVersion"])
    data_dir = os.path.join(host["dir"], "ipam")
    if "plugins" in network:
        plugins = json.loads(json.dumps(network["plugins"]))
        for p in plugins:
            ipam = p.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local" and "dataDir" not in ipam:
                ipam["dataDir"] = data_dir
        return {"cniVersion": version, "name": network["name"], "plugins": plugins}
    ranges, routes = [], []
    if "subnet" in network:
        ranges.append([{"subnet": network["subnet"]}])
        routes.append({"dst": "0.0.0.0/0"})
    if "subnet6" in network:
        ranges.append([{"subnet": network["subnet6"]}])
        routes.append({"dst": "::/0"})
    main = {
        "type": network.get("type", "bridge"),
        "bridge": network["bridge"],
        "isGateway": network.get("isGateway", True),
        "ipMasq": network.get("ipMasq", False),
        "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges, "routes": routes},
    }
    for key in ("mtu", "hairpinMode"):
        if key in network:
            main[key] = network[key]
    plugins = [main]
    if network.get("dns"):
        plugins.append({"type": "dnsname", "domainName": network.get("domain", "dns.podman"),
                        "capabilities": {"aliases": True}})
    return {"cniVersion": version, "name": network["name"], "plugins": plugins}


def _write_resolv_conf(pod: dict, result: dict) -> None:
    """The result's DNS as the pod's resolv.conf (`ip netns exec` mounts it)."""
    dns = result.get("dns") or {}
    if not dns.get("nameservers"):
        return
    lines = [f"nameserver {ns}" for ns in dns["nameservers"]]
    if dns.get("search"):
        lines.append("search " + " ".join(dns["search"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    d = os.path.join("/etc/netns", pod["netns"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "resolv.conf"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _cni_for(plan: dict, host: dict) -> libcni.CNIConfig:
    return libcni.CNIConfig(
        [plan["binDir"]],
        os.path.join(host["dir"], "cache"),
        env={"PYCNI_STATE_DIR": os.path.join(host["dir"], "state"),
             "PYCNI_RUN_DIR": os.path.join(host["dir"], "run")},
        exec_netns=f"/run/netns/{host['netns']}",
    )


def _netconfs(plan: dict, host: dict) -> dict[str, libcni.NetworkConfigList]:
    d = os.path.join(host["dir"], "net.d")
    return {c.name: c for c in libcni.load_all(d)}


def _runtime_conf(pod: dict, ifname: str | None = None) -> libcni.RuntimeConf:
    return libcni.RuntimeConf(
        container_id=pod["containerId"],
        netns=f"/run/netns/{pod['netns']}",
        ifname=ifname or pod["ifname"],
        args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod["namespace"]),
              ("K8S_POD_NAME", pod["name"]), ("K8S_POD_INFRA_CONTAINER_ID", pod["containerId"])],
    )


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ------------------------------------------------------------------ up/down

def up(plan: dict, cni_path: str | None = None, log=_log) -> dict:
    name = plan["name"]
    existing = load_state(name)
    if existing is not None or os.path.exists(plan["dir"]):
        raise LabError(f"lab {name} exists ({plan['dir']}); run `pycni lab down {name}` first")
    for h in plan["hosts"]:
        if netns_exists(h["netns"]):
            raise LabError(f"netns {h['netns']} already exists; run `pycni lab down {name}` first")
    plan["phase"] = "creating"
    plan["binDir"] = cni_path or plan.get("cniPath") or os.path.join(plan["dir"], "bin")
    save_state(plan)  # from here on, `down` knows every name we may create
    try:
        _up(plan, log)
    except BaseException as e:
        log(f"lab {name}: up failed: {e}; cleaning up")
        plan["phase"] = "failed"
        save_state(plan)
        down(name, plan, log=log)
        raise
    plan["phase"] = "up"
    save_state(plan)
    return plan


def _up(plan: dict, log) -> None:
    if plan["binDir"] == os.path.join(plan["dir"], "bin"):
        from .install import install

        install(plan["binDir"])
    if plan["underlayBridge"]:
        br = plan["underlayBridge"]
        _run("ip", "link", "add", br, "type", "bridge")
        _run("ip", "link", "set", br, "up")
    for host in plan["hosts"]:
        log(f"host {host['name']}: netns {host['netns']}")
        for sub in ("net.d", "cache", "ipam", "state", "run"):
            os.makedirs(os.path.join(host["dir"], sub), exist_ok=True)
        _run("ip", "netns", "add", host["netns"])
        _run("ip", "-n", host["netns"], "link", "set", "lo", "up")
        if host["underlay"]:
            _run("ip", "link", "add", host["veth"], "type", "veth", "peer", "name", "eth0",
                 "netns", host["netns"])
            _run("ip", "link", "set", host["veth"], "master", plan["underlayBridge"], "up")
            _run("ip", "-n", host["netns"], "addr", "add", host["underlay"], "dev", "eth0")
            _run("ip", "-n", host["netns"], "link", "set", "eth0", "up")
        netd = os.path.join(host["dir"], "net.d")
        files = []
        if plan["loopback"]:
            files.append(("00-loopback.conflist", {"cniVersion": plan["cniVersion"], "name": LOOPBACK_NET,
                                                   "plugins": [{"type": "loopback"}]}))
        for i, network in enumerate(plan["networks"], start=10):
            files.append((f"{i}-{network['name']}.conflist", conflist_for(plan, host, network)))
        for fname, conf in files:
            with open(os.path.join(netd, fname), "w") as f:
                json.dump(conf, f, indent=2)
    for pod in plan["pods"]:
        host = next(h for h in plan["hosts"] if h["name"] == pod["host"])
        _run("ip", "netns", "add", pod["netns"])
        cni = _cni_for(plan, host)
        confs = _netconfs(plan, host)
        if plan["loopback"]:
            cni.add_network_list(confs[LOOPBACK_NET], _runtime_conf(pod, "lo"))
        result = cni.add_network_list(confs[pod["network"]], _runtime_conf(pod))
        pod["result"] = result
        pod["ips"] = [ip["address"] for ip in result.get("ips") or []]
        _write_resolv_conf(pod, result)
        save_state(plan)
        log(f"pod {pod['namespace']}/{pod['name']} on {pod['host']}: {', '.join(pod['ips']) or 'no IPs'}")


def down(name: str, plan: dict | None = None, log=_log) -> int:
    """Remove everything lab ``name`` made; returns how many things could
    not be removed (0 on a clean teardown)."""
    state = load_state(name)
    if state is not None:
        plan = state
    problems = 0
    lab_dir = os.path.join(lab_root(), name)
    if plan is not None and plan.get("binDir"):
        for pod in reversed(plan["pods"]):
            host = next((h for h in plan["hosts"] if h["name"] == pod["host"]), None)
            if host is None or not netns_exists(host["netns"]):
                continue
            try:
                cni = _cni_for(plan, host)
                confs = _netconfs(plan, host)
            except (libcni.LibCNIError, OSError) as e:
                log(f"pod {pod['namespace']}/{pod['name']}: cannot load configs: {e}")
                continue
            steps = [(pod["network"], None)]
            if plan.get("loopback", True):
                steps.append((LOOPBACK_NET, "lo"))
            for netname, ifname in steps:
                if netname not in confs:
                    continue
                try:
                    cni.del_network_list(confs[netname], _runtime_conf(pod, ifname))
                except (libcni.LibCNIError, OSError) as e:
                    log(f"pod {pod['namespace']}/{pod['name']}: DEL {netname} failed: {e}")
    for host_dir in glob.glob(os.path.join(lab_dir, "hosts", "*")):
        stop_resolvers(os.path.join(host_dir, "run"))  # normally the last DEL stopped them
    # every netns of the lab: the planned ones plus any leftover by prefix
    names = []
    if plan is not None:
        names += [p["netns"] for p in plan["pods"]] + [h["netns"] for h in plan["hosts"]]
    prefix = f"pycni-{name}-"
    try:
        names += sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix) and n not in names)
    except FileNotFoundError:
        pass
    for ns in names:
        shutil.rmtree(os.path.join("/etc/netns", ns), ignore_errors=True)
        if netns_exists(ns):
            if _run("ip", "netns", "delete", ns, check=False).returncode != 0:
                log(f"could not delete netns {ns}")
                problems += 1
    links = []
    if plan is not None:
        links += [h["veth"] for h in plan["hosts"] if h.get("veth")]
    links.append(f"plb-{_hash(name)}")
    for link in links:
        if link_exists(link):
            if _run("ip", "link", "delete", link, check=False).returncode != 0:
                log(f"could not delete link {link}")
                problems += 1
    shutil.rmtree(lab_dir, ignore_errors=True)
    if os.path.exists(lab_dir):
        problems += 1
    return problems


# ------------------------------------------------------------------ status/exec

def status_json(plan: dict) -> dict:
    def bare(addr):
        return addr.split("/")[0]

    return {
        "name": plan["name"],
        "phase": plan.get("phase"),
        "dir": plan["dir"],
        "cniPath": plan.get("binDir"),
        "hosts": [{"name": h["name"], "netns": h["netns"], "underlay": h["underlay"]} for h in plan["hosts"]],
        "networks": [{"name": n["name"], **{k: n[k] for k in ("subnet", "subnet6", "bridge") if k in n}}
                     for n in plan["networks"]],
        "pods": [{"name": p["name"], "namespace": p["namespace"], "host": p["host"],
                  "network": p["network"], "netns": p["netns"], "ifname": p["ifname"],
                  "containerId": p["containerId"],
                  "ips": [bare(a) for a in p["ips"]], "addresses": p["ips"],
                  "gateways": [ip["gateway"] for ip in (p.get("result") or {}).get("ips", []) if ip.get("gateway")]}
                 for p in plan["pods"]],
    }


def format_status(s: dict) -> str:
    lines = [f"lab {s['name']} ({s['phase']})  dir {s['dir']}  plugins {s['cniPath']}", ""]
    rows = [("HOST", "NETNS", "UNDERLAY")] + [(h["name"], h["netns"], h["underlay"] or "-") for h in s["hosts"]]
    lines += _table(rows) + [""]
    rows = [("POD", "HOST", "NETWORK", "NETNS", "IPS")] + [
        (f"{p['namespace']}/{p['name']}", p["host"], p["network"], p["netns"], ",".join(p["addresses"]) or "-")
        for p in s["pods"]]
    lines += _table(rows)
    return "\n".join(lines)


def _table(rows) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]


def find_pod(plan: dict, ref: str) -> dict:
    if "/" in ref:
        ns, _, name = ref.partition("/")
        matches = [p for p in plan["pods"] if p["namespace"] == ns and p["name"] == name]
    else:
        matches = [p for p in plan["pods"] if p["name"] == ref]
    if not matches:
        raise LabError(f"lab {plan['name']}: no pod {ref!r}")
    if len(matches) > 1:
        raise LabError(f"lab {plan['name']}: pod name {ref!r} is ambiguous; use NAMESPACE/NAME")
    return matches[0]


def run_cli(args) -> int:
    try:
        return _run_cli(args)
    except (LabError, libcni.LibCNIError) as e:
        print(f"pycni lab: {e}", file=sys.stderr)
        return 1


def _run_cli(args) -> int:
    if args.lab_command == "up":
        plan = load_file(args.file)
        up(plan, args.cni_path)
        print(format_status(status_json(plan)))
        return 0
    if args.lab_command == "down":
        name, plan = resolve(args.lab)
        problems = down(name, plan)
        if problems:
            print(f"pycni lab: {problems} thing(s) of lab {name} could not be removed", file=sys.stderr)
            return 1
        return 0
    name, _ = resolve(getattr(args, "lab", None))
    plan = load_state(name)
    if plan is None:
        raise LabError(f"lab {name} is not up")
    if args.lab_command == "status":
        s = status_json(plan)
        print(json.dumps(s, indent=2) if args.json else format_status(s))
        return 0
    if args.lab_command == "exec":
        cmd = list(args.cmd)
        if cmd and cmd[0] == "--":
            cmd = cmd[1:]
        if not cmd:
            raise LabError("no command given: pycni lab exec POD -- CMD...")
        if args.host:
            host = next((h for h in plan["hosts"] if h["name"] == args.target), None)
            if host is None:
                raise LabError(f"lab {name}: no host {args.target!r}")
            netns = host["netns"]
        else:
            netns = find_pod(plan, args.target)["netns"]
        sys.stdout.flush()
        try:
            return subprocess.run(["ip", "netns", "exec", netns, *cmd]).returncode
        except KeyboardInterrupt:
            return 130
    raise LabError(f"unknown lab command {args.lab_command!r}")
