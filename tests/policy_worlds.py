"""Random small clusters for the property tests: namespaces, pods on two
nodes, and NetworkPolicy objects drawn from every feature of the API, as
the raw dicts a YAML file holds (so netpolicy and the independent evaluator
read the same input)."""
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
