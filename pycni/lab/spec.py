"""A lab file, validated, becomes a plan: plain data naming everything the
lab will make (namespaces, links, directories, the overlay's settings).
Pure: nothing here touches the machine.  The file format is in
pycni/lab/__init__.py."""
from __future__ import annotations

import hashlib
import ipaddress
import os
import re

LAB_ROOT_ENV = "PYCNI_LAB_ROOT"
DEFAULT_LAB_ROOT = "/run/pycni/lab"
LOOPBACK_NET = "loopback"
ETCD = "_etcd"  # the lab etcd's netns suffix: no host name has an underscore
ETCD_CLIENT_PORT = 2379


class LabError(Exception):
    pass


def lab_root() -> str:
    return os.environ.get(LAB_ROOT_ENV) or DEFAULT_LAB_ROOT


# section -> {key: type}; a key marked "!" is required
SCHEMA: dict[str, dict[str, type]] = {
    "lab": {"name!": str, "cniVersion": str, "cniPath": str, "loopback": bool, "hosts!": list,
            "networks!": list, "pods": list, "namespaces": list, "policies": list},
    "hosts": {"name!": str, "underlay": str},
    "networks": {"name!": str, "subnet": str, "subnet6": str, "type": str, "bridge": str, "isGateway": bool,
                 "ipMasq": bool, "mtu": int, "hairpinMode": bool, "cniVersion": str, "plugins": list,
                 "dns": bool, "domain": str,
                 # type: overlay
                 "clusterCIDR": str, "clusterCIDR6": str, "subnetPrefixLength": int, "subnetPrefixLength6": int,
                 "vni": int, "port": int, "directRouting": bool, "leaseTTL": int, "store": str,
                 "etcdEndpoints": list, "etcdMembers": int, "etcdAddress": str},
    "pods": {"name!": str, "namespace": str, "host!": str, "network!": str, "ifname": str, "labels": dict,
             "ports": list},
    "namespaces": {"name!": str, "labels": dict},
    "ports": {"name!": str, "port!": int, "protocol": str},
}
# overlay keys that become the agents' settings as they are (see overlay/config.py)
OVERLAY_SETTINGS = ("clusterCIDR", "clusterCIDR6", "subnetPrefixLength", "subnetPrefixLength6", "vni", "port",
                    "mtu", "directRouting", "leaseTTL")
OVERLAY_ONLY = set(OVERLAY_SETTINGS) - {"mtu"} | {"store", "etcdEndpoints", "etcdMembers", "etcdAddress"}
NOT_FOR_OVERLAY = ("subnet", "subnet6", "plugins", "isGateway")

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")


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
    if not NAME_RE.match(value) or len(value) > maxlen:
        raise LabError(f"{where}: invalid name {value!r} (lowercase letters, digits and '-', "
                       f"at most {maxlen} characters)")


def _hash(text: str, n: int = 8) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


def _network_of(where: str, key: str, value: str, version: int):
    try:
        net = ipaddress.ip_network(value)
    except ValueError:
        raise LabError(f"{where}: {key} {value!r} is not a network (e.g. 10.244.1.0/24)") from None
    if net.version != version:
        raise LabError(f"{where}: {key} must be an IPv{version} network")
    return net


def _interface(where: str, value: str):
    try:
        iface = ipaddress.ip_interface(value)
    except ValueError:
        raise LabError(f"{where}: {value!r} is not an address/prefix") from None
    if iface.network.prefixlen == iface.max_prefixlen:
        raise LabError(f"{where}: {value!r} needs a prefix length, e.g. /24")
    return iface


def underlay_bridge(lab: str) -> str:
    return f"plb-{_hash(lab)}"


def underlay_veth(lab: str, host: str) -> str:
    return f"plv-{_hash(lab + '/' + host)}"


def parse(data, source: str = "<lab>") -> dict:
    """Validate a lab description and return the plan: every name it will use."""
    _check_keys(source, "lab", data)
    name = data["name"]
    _check_name(f"{source}: name", name, 20)
    base = os.path.join(lab_root(), name)
    plan = {
        "name": name,
        "dir": base,
        "cniVersion": data.get("cniVersion", "1.0.0"),
        "cniPath": data.get("cniPath"),
        "loopback": data.get("loopback", True),
        "underlayBridge": None,
        "hosts": _hosts(plan_name=name, base=base, source=source, items=data["hosts"]),
        "networks": [],
        "overlay": None,
        "policy": "policies" in data or "namespaces" in data,
        "objects": [],
        "pods": [],
    }
    if any(h["underlay"] for h in plan["hosts"]):
        plan["underlayBridge"] = underlay_bridge(name)
    plan["networks"] = _networks(source, data["networks"])
    overlays = [n for n in plan["networks"] if n.get("type") == "overlay"]
    if len(overlays) > 1:
        raise LabError(f"{source}: one overlay network per lab (each host's agent runs one overlay)")
    if overlays:
        plan["overlay"] = _overlay(source, plan, overlays[0])
    plan["pods"] = _pods(source, name, plan["hosts"], plan["networks"], data.get("pods") or [])
    if plan["policy"]:
        plan["objects"] = _policy_objects(source, data.get("namespaces") or [], data.get("policies") or [],
                                          plan["pods"])
    else:
        labelled = [f"{p['namespace']}/{p['name']}" for p in plan["pods"] if p["labels"] or p["ports"]]
        if labelled:
            raise LabError(f"{source}: pods {', '.join(labelled)} have labels or ports, which are for network "
                           "policy: add 'policies' (it may be empty)")
    return plan


def _hosts(plan_name: str, base: str, source: str, items: list) -> list[dict]:
    hosts = {}
    for i, h in enumerate(items):
        where = f"{source}: hosts[{i}]"
        _check_keys(where, "hosts", h)
        _check_name(f"{where}: name", h["name"])
        if h["name"] in hosts:
            raise LabError(f"{where}: duplicate host {h['name']!r}")
        host = {"name": h["name"], "netns": f"pycni-{plan_name}-{h['name']}",
                "dir": os.path.join(base, "hosts", h["name"]), "underlay": None, "veth": None}
        if "underlay" in h:
            host["underlay"] = str(_interface(f"{where}: underlay", h["underlay"]))
            host["veth"] = underlay_veth(plan_name, h["name"])
        hosts[h["name"]] = host
    if not hosts:
        raise LabError(f"{source}: at least one host is needed")
    return list(hosts.values())


def _networks(source: str, items: list) -> list[dict]:
    networks = {}
    for i, n in enumerate(items):
        where = f"{source}: networks[{i}]"
        _check_keys(where, "networks", n)
        _check_name(f"{where}: name", n["name"])
        if n["name"] in networks or n["name"] == LOOPBACK_NET:
            raise LabError(f"{where}: duplicate or reserved network name {n['name']!r}")
        overlay = n.get("type") == "overlay"
        if overlay:
            misplaced = [k for k in NOT_FOR_OVERLAY if k in n]
            if misplaced:
                raise LabError(f"{where}: {', '.join(misplaced)} cannot be set on an overlay network "
                               "(the node's subnets come from its lease)")
            if "clusterCIDR" not in n and "clusterCIDR6" not in n:
                raise LabError(f"{where}: an overlay network needs clusterCIDR and/or clusterCIDR6")
        else:
            misplaced = sorted(OVERLAY_ONLY & set(n))
            if misplaced:
                raise LabError(f"{where}: {', '.join(misplaced)} only apply to type: overlay")
        for key, version in (("subnet", 4), ("subnet6", 6), ("clusterCIDR", 4), ("clusterCIDR6", 6)):
            if key in n:
                _network_of(where, key, n[key], version)
        if "plugins" in n:
            extra = set(n) - {"name", "plugins", "cniVersion"}
            if extra:
                raise LabError(f"{where}: with 'plugins', only name and cniVersion may be given "
                               f"(not {', '.join(sorted(extra))})")
            for j, p in enumerate(n["plugins"]):
                if not isinstance(p, dict) or not isinstance(p.get("type"), str):
                    raise LabError(f"{where}: plugins[{j}] must be a mapping with a 'type'")
        elif not overlay and "subnet" not in n and "subnet6" not in n:
            raise LabError(f"{where}: give subnet and/or subnet6 (or a full 'plugins' list)")
        bridge = n.get("bridge", f"pb-{n['name']}"[:15])
        if len(bridge) > 15:
            raise LabError(f"{where}: bridge name {bridge!r} is longer than 15 characters")
        networks[n["name"]] = {**n, "bridge": bridge}
    bridges = [n["bridge"] for n in networks.values() if "plugins" not in n]
    if len(set(bridges)) != len(bridges):
        raise LabError(f"{source}: two networks use the same bridge name; set 'bridge' explicitly")
    return list(networks.values())


def _overlay(source: str, plan: dict, network: dict) -> dict:
    """What every host's agent runs: the overlay settings, and the lab's
    own etcd when the store is etcd without etcdEndpoints."""
    where = f"{source}: network {network['name']}"
    missing = [h["name"] for h in plan["hosts"] if not h["underlay"]]
    if missing:
        raise LabError(f"{where}: an overlay needs every host on the underlay; give {', '.join(missing)} "
                       "an 'underlay' address")
    store = network.get("store", "file")
    settings = {k: network[k] for k in OVERLAY_SETTINGS if k in network}
    settings.update(cluster=network["name"], store=store)
    etcd = None
    if store == "file":
        if "etcdEndpoints" in network or "etcdMembers" in network or "etcdAddress" in network:
            raise LabError(f"{where}: etcd settings need store: etcd")
        settings["storePath"] = os.path.join(plan["dir"], "overlay", network["name"])
    elif store == "etcd":
        settings["etcdPrefix"] = f"/pycni/lab/{plan['name']}/{network['name']}"
        if "etcdEndpoints" in network:
            if "etcdMembers" in network or "etcdAddress" in network:
                raise LabError(f"{where}: etcdEndpoints names an etcd of yours; etcdMembers and etcdAddress "
                               "are for the lab's own")
            settings["etcdEndpoints"] = network["etcdEndpoints"]
        else:
            etcd = _etcd(where, plan, network)
            settings["etcdEndpoints"] = [m["client"] for m in etcd["members"]]
    else:
        raise LabError(f"{where}: store {store!r}: file or etcd")
    return {"network": network["name"], "cluster": network["name"], "settings": settings, "etcd": etcd}


def _etcd(where: str, plan: dict, network: dict) -> dict:
    """The lab's etcd: a namespace on the lab switch (like a host) with one
    address, its members on successive port pairs."""
    members = network.get("etcdMembers", 1)
    if members not in (1, 3, 5):
        raise LabError(f"{where}: etcdMembers must be 1, 3 or 5")
    if "etcdAddress" in network:
        address = _interface(f"{where}: etcdAddress", network["etcdAddress"])
    else:  # the last address of the first host's underlay subnet
        subnet = ipaddress.ip_interface(plan["hosts"][0]["underlay"]).network
        last = subnet.broadcast_address - 1 if subnet.version == 4 else subnet.broadcast_address
        address = ipaddress.ip_interface(f"{last}/{subnet.prefixlen}")
    taken = [h["name"] for h in plan["hosts"] if ipaddress.ip_interface(h["underlay"]).ip == address.ip]
    if taken:
        raise LabError(f"{where}: the lab etcd's address {address.ip} is host {taken[0]}'s; set etcdAddress")
    host = f"[{address.ip}]" if address.version == 6 else str(address.ip)
    return {
        "netns": f"pycni-{plan['name']}-{ETCD}",
        "veth": underlay_veth(plan["name"], ETCD),
        "address": str(address),
        "dir": os.path.join(plan["dir"], "etcd"),
        "members": [{"name": f"m{i}", "client": f"http://{host}:{ETCD_CLIENT_PORT + 2 * i}",
                     "peer": f"http://{host}:{ETCD_CLIENT_PORT + 2 * i + 1}"} for i in range(members)],
    }


def _pods(source: str, lab: str, hosts: list[dict], networks: list[dict], items: list) -> list[dict]:
    host_names = [h["name"] for h in hosts]
    network_names = [n["name"] for n in networks]
    pods, seen = [], set()
    for i, p in enumerate(items):
        where = f"{source}: pods[{i}]"
        _check_keys(where, "pods", p)
        _check_name(f"{where}: name", p["name"])
        ns = p.get("namespace", "default")
        _check_name(f"{where}: namespace", ns)
        if (ns, p["name"]) in seen:
            raise LabError(f"{where}: duplicate pod {ns}/{p['name']}")
        seen.add((ns, p["name"]))
        if p["host"] not in host_names:
            raise LabError(f"{where}: unknown host {p['host']!r} (hosts: {', '.join(host_names)})")
        if p["network"] not in network_names:
            raise LabError(f"{where}: unknown network {p['network']!r} (networks: {', '.join(network_names)})")
        pods.append({
            "name": p["name"],
            "namespace": ns,
            "host": p["host"],
            "network": p["network"],
            "ifname": p.get("ifname", "eth0"),
            "netns": f"pycni-{lab}-{ns}.{p['name']}",
            "containerId": f"{lab}-{ns}-{p['name']}-{_hash(lab + ns + p['name'])}",
            "labels": p.get("labels", {}),
            "ports": [_port(f"{where}: ports[{j}]", port) for j, port in enumerate(p.get("ports") or [])],
            "ips": [],
            "result": None,
        })
    return pods


def _port(where: str, port) -> dict:
    """A pod's named port as the netpolicy controller takes it."""
    _check_keys(where, "ports", port)
    return {"name": port["name"], "port": port["port"], "protocol": port.get("protocol", "TCP").upper()}


def _policy_objects(source: str, namespaces: list, policies: list, pods: list[dict]) -> list[dict]:
    """The lab's Namespace objects (with their labels) and NetworkPolicy
    objects (Lists expanded), validated as the API server would, and its
    pods' labels and ports as the netpolicy plugin will register them."""
    from netpolicy.parse import PolicyError, parse_endpoint, parse_objects
    from netpolicy.sources import inputs_of

    declared = []
    for i, ns in enumerate(namespaces):
        _check_keys(f"{source}: namespaces[{i}]", "namespaces", ns)
        declared.append({"apiVersion": "v1", "kind": "Namespace",
                         "metadata": {"name": ns["name"], "labels": ns.get("labels", {})}})
    for i, policy in enumerate(policies):
        if not isinstance(policy, dict):  # a file's path: load_file reads it
            raise LabError(f"{source}: policies[{i}] must be a NetworkPolicy object or, in a lab file, the "
                           "path of a YAML file of them")
    try:
        parsed = parse_objects(declared, f"{source}: namespaces") + parse_objects(policies, f"{source}: policies")
        inputs_of(parsed)   # the same object twice
        for i, pod in enumerate(pods):
            parse_endpoint({k: pod[k] for k in ("namespace", "name", "labels", "ports")}, f"{source}: pods[{i}]")
    except PolicyError as e:
        raise LabError(str(e)) from None
    return declared + [item for policy in policies for item in
                       (policy.get("items") or [] if policy.get("kind", "").endswith("List") else [policy])]


def _policy_files(path: str, policies: list) -> list:
    """The lab file's policies with each path (relative to the lab file)
    replaced by the objects of that YAML or JSON file."""
    from netpolicy.parse import PolicyError, load_documents, parse_objects

    found = []
    for i, item in enumerate(policies):
        if not isinstance(item, str):
            found.append(item)
            continue
        name = os.path.join(os.path.dirname(os.path.abspath(path)), item)
        try:
            with open(name) as f:
                documents = load_documents(f.read(), name)
            parse_objects(documents, name)
        except (OSError, PolicyError) as e:
            raise LabError(f"{path}: policies[{i}]: {e}") from None
        found += documents
    return found


def load_file(path: str) -> dict:
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except OSError as e:
        raise LabError(f"cannot read lab file: {e}") from None
    except yaml.YAMLError as e:
        raise LabError(f"{path}: invalid YAML: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("policies"), list):
        data["policies"] = _policy_files(path, data["policies"])
    plan = parse(data, path)
    plan["file"] = os.path.abspath(path)
    if plan["cniPath"]:
        plan["cniPath"] = os.path.join(os.path.dirname(plan["file"]), plan["cniPath"])
    return plan
