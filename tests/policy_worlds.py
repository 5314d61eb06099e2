"""Random small clusters for the property tests: namespaces, pods on two
nodes, and NetworkPolicy objects drawn from every feature of the API, as
the raw dicts a YAML file holds (so netpolicy and the independent evaluator
read the same input); and `large_world`, the cluster the benchmark loads."""
import random

NODES = ("node-a", "node-b")
NAMESPACES = ("x", "y", "z")
LABELS = {"app": ["web", "db", "cache"], "tier": ["front", "back"], "team": ["red", "blue"]}
PORTS = [53, 80, 81, 443, 8080]
PORT_NAMES = ["http", "dns", "metrics"]
EXTERNAL = ["192.0.2.10", "198.51.100.7", "2001:db8::10"]


def _labels(rng):
    return {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.6}


def _selector(rng):
    selector = {}
    if rng.random() < 0.5:
        key = rng.choice(list(LABELS))
        selector["matchLabels"] = {key: rng.choice(LABELS[key])}
    if rng.random() < 0.35:
        key = rng.choice(list(LABELS))
        op = rng.choice(["In", "NotIn", "Exists", "DoesNotExist"])
        expr = {"key": key, "operator": op}
        if op in ("In", "NotIn"):
            expr["values"] = rng.sample(LABELS[key], rng.randint(1, len(LABELS[key])))
        selector["matchExpressions"] = [expr]
    return selector


def _ip_block(rng, pods):
    if rng.random() < 0.25:
        return {"cidr": "2001:db8::/32", "except": ["2001:db8::/120"]} if rng.random() < 0.5 \
            else {"cidr": "fd00:240::/32"}
    block = {"cidr": "10.240.0.0/16"}
    v4 = [ip for p in pods for ip in p["status"]["podIPs"] if ":" not in ip["ip"]]
    if v4 and rng.random() < 0.7:
        block["except"] = [f"{rng.choice(v4)['ip']}/32", "10.240.1.0/24"][: rng.randint(1, 2)]
    if rng.random() < 0.2:
        block = {"cidr": "0.0.0.0/0", "except": ["10.240.0.0/16"]}
    return block


def _peer(rng, pods):
    kind = rng.random()
    if kind < 0.2:
        return {"ipBlock": _ip_block(rng, pods)}
    peer = {}
    if kind < 0.6:
        peer["podSelector"] = _selector(rng)
    if kind > 0.4:
        peer["namespaceSelector"] = _selector(rng)
    return peer


def _port(rng):
    entry = {}
    if rng.random() < 0.6:
        entry["protocol"] = rng.choice(["TCP", "UDP", "SCTP"])
    r = rng.random()
    if r < 0.4:
        entry["port"] = rng.choice(PORTS)
    elif r < 0.6:
        entry["port"] = rng.choice(PORTS)
        entry["endPort"] = entry["port"] + rng.choice([0, 1, 400])
    elif r < 0.85:
        entry["port"] = rng.choice(PORT_NAMES)
    return entry


def _rule(rng, pods, peers_key):
    rule = {}
    if rng.random() < 0.6:
        rule["ports"] = [_port(rng) for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.75:
        rule[peers_key] = [_peer(rng, pods) for _ in range(rng.randint(0, 2))]
    return rule


def policy(rng, name, pods):
    spec = {"podSelector": _selector(rng)}
    if rng.random() < 0.8:
        spec["ingress"] = [_rule(rng, pods, "from") for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.6:
        spec["egress"] = [_rule(rng, pods, "to") for _ in range(rng.randint(0, 2))]
    if rng.random() < 0.5:
        spec["policyTypes"] = rng.choice([["Ingress"], ["Egress"], ["Ingress", "Egress"]])
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": rng.choice(NAMESPACES)}, "spec": spec}


def pod(rng, i):
    ips = [{"ip": f"10.240.{i // 100}.{i % 100 + 2}"}]
    if rng.random() < 0.4:
        ips.append({"ip": f"fd00:240::{i + 2:x}"})
    ports = [{"name": n, "containerPort": rng.choice(PORTS), "protocol": rng.choice(["TCP", "UDP"])}
             for n in PORT_NAMES if rng.random() < 0.5]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"p{i}", "namespace": rng.choice(NAMESPACES), "labels": _labels(rng)},
            "spec": {"nodeName": rng.choice(NODES), "containers": [{"name": "c", "ports": ports}]},
            "status": {"podIPs": ips}}


def namespace(rng, name):
    return {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": _labels(rng)}}


def world(seed, n_pods=7, n_policies=4):
    rng = random.Random(seed)
    pods = [pod(rng, i) for i in range(n_pods)]
    namespaces = [namespace(rng, n) for n in NAMESPACES]
    policies = [policy(rng, f"pol{i}", pods) for i in range(n_policies)]
    return rng, namespaces, pods, policies


def large_world(n_policies=1000, n_pods=5000, node="node-1", n_namespaces=50, seed=1, first_address=0):
    """A cluster shaped like a real one at scale: namespaces of teams and
    environments, pods of 20 apps in three tiers with named ports, and
    policies of three rules each (allow from apps of the namespace, from
    tiers of a team's namespaces, from whole namespaces, from CIDRs; on
    numbered, named or ranged ports; a third with an egress rule).  Every
    pod is on ``node``; addresses count up from 10.200.0.0 +
    ``first_address`` (they are only looked up, never sent to)."""
    rng = random.Random(seed)
    apps = [f"app{i}" for i in range(20)]
    tiers = ["front", "back", "db"]
    teams = ["red", "blue", "green", "gold"]
    names = [f"ns{i}" for i in range(n_namespaces)]
    namespaces = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": n, "labels": {
        "team": rng.choice(teams), "env": rng.choice(["prod", "dev"])}}} for n in names]
    pods = []
    for i in range(n_pods):
        address = 10 << 24 | 200 << 16 | (first_address + i)
        ports = [{"name": "http", "containerPort": rng.choice([80, 8080]), "protocol": "TCP"},
                 {"name": "metrics", "containerPort": 9100, "protocol": "TCP"}]
        pods.append({"apiVersion": "v1", "kind": "Pod",
                     "metadata": {"name": f"pod{i}", "namespace": names[i % n_namespaces],
                                  "labels": {"app": rng.choice(apps), "tier": rng.choice(tiers),
                                             "version": f"v{rng.randint(1, 3)}"}},
                     "spec": {"nodeName": node, "containers": [{"name": "c", "ports": ports}]},
                     "status": {"podIPs": [{"ip": ".".join(str(address >> s & 255) for s in (24, 16, 8, 0))}]}})

    def peer():
        r = rng.random()
        if r < 0.4:
            return {"podSelector": {"matchLabels": {"app": rng.choice(apps)}}}
        if r < 0.7:
            return {"namespaceSelector": {"matchLabels": {"team": rng.choice(teams)}},
                    "podSelector": {"matchLabels": {"tier": rng.choice(tiers)}}}
        if r < 0.85:
            return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": rng.choice(names)}}}
        return {"ipBlock": {"cidr": f"172.{rng.randint(16, 31)}.0.0/16"}}

    def ports():
        r = rng.random()
        if r < 0.5:
            return [{"port": rng.choice([80, 443, 8080, 5432]), "protocol": "TCP"}]
        if r < 0.7:
            return [{"port": "http"}]
        if r < 0.8:
            return [{"port": 30000, "endPort": 30100, "protocol": "UDP"}]
        return []

    policies = []
    for i in range(n_policies):
        spec = {"podSelector": {"matchLabels": {"app": rng.choice(apps)}},
                "ingress": [{"from": [peer()], "ports": ports()} for _ in range(2)]}
        if rng.random() < 0.3:
            spec["egress"] = [{"to": [peer()], "ports": ports()}]
            spec["policyTypes"] = ["Ingress", "Egress"]
        else:
            spec["ingress"].append({"from": [peer()], "ports": ports()})
        policies.append({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                         "metadata": {"name": f"pol{i}", "namespace": names[i % n_namespaces]}, "spec": spec})
    return namespaces, pods, policies
