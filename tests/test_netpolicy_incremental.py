"""The incremental compiler against the full compile, without root: after
any sequence of changes (pods added, removed, relabelled, moved to another
node, given other ports and addresses; namespaces relabelled and removed;
policies added, edited and removed) its tables are the reference's for the
same inputs, and the difference it reports is what a diff of the whole
tables would apply."""
import copy
import json
import random

import pytest

from policy_worlds import LABELS, NAMESPACES, NODES, namespace, pod, policy, world
from netpolicy.compiler import compile_tables
from netpolicy.incremental import IncrementalCompiler
from netpolicy.parse import parse_objects
from netpolicy.ruleset import transaction
from netpolicy.sources import inputs_of

NODE = NODES[0]


def canonical(tables):
    return {t.family: (t.counters, t.sets, t.elements, {n: (c.hook, c.rules) for n, c in t.chains.items()})
            for t in tables}


def effects(commands):
    """What commands do, one element or object at a time, order aside."""
    found = set()
    for command in commands:
        (op, body), = command.items()
        (kind, obj), = body.items()
        if kind == "element":
            found |= {(op, obj["name"], json.dumps(e, sort_keys=True)) for e in obj["elem"]}
        else:
            found.add((op, kind, json.dumps(obj, sort_keys=True)))
    return found


class Cluster:
    """Raw objects, changed at random, as a YAML directory would hold them."""

    def __init__(self, seed):
        self.rng, namespaces, pods, policies = world(seed, n_pods=10, n_policies=5)
        self.namespaces = {n["metadata"]["name"]: n for n in namespaces}
        self.pods = {p["metadata"]["name"]: p for p in pods}
        self.policies = {p["metadata"]["name"]: p for p in policies}

    def inputs(self):
        return inputs_of(parse_objects([*self.namespaces.values(), *self.pods.values(), *self.policies.values()]))

    def change(self):
        rng = self.rng
        r = rng.random()
        if r < 0.25 and self.pods:           # relabel a pod
            name = rng.choice(sorted(self.pods))
            changed = copy.deepcopy(self.pods[name])
            changed["metadata"]["labels"] = {k: rng.choice(v) for k, v in LABELS.items() if rng.random() < 0.6}
            self.pods[name] = changed
        elif r < 0.4 and self.pods:          # a pod goes
            del self.pods[rng.choice(sorted(self.pods))]
        elif r < 0.6:                        # a pod comes, or one is replaced (node, ports, addresses)
            new = pod(rng, rng.randint(0, 40))
            self.pods[new["metadata"]["name"]] = new
        elif r < 0.7:                        # a namespace relabelled
            name = rng.choice(NAMESPACES)
            self.namespaces[name] = namespace(rng, name)
        elif r < 0.75:                       # a namespace no longer declared
            self.namespaces.pop(rng.choice(NAMESPACES), None)
        elif r < 0.9:                        # a policy added or edited
            name = f"pol{rng.randint(0, 7)}"
            self.policies[name] = policy(rng, name, list(self.pods.values()))
        elif self.policies:                  # a policy deleted
            del self.policies[rng.choice(sorted(self.policies))]


@pytest.mark.parametrize("seed", range(60))
def test_any_sequence_of_changes_compiles_as_the_full_compile(seed):
    cluster = Cluster(seed)
    engine = IncrementalCompiler(NODE)
    engine.load(cluster.inputs())
    applied = {t.family: t.as_applied() for t in compile_tables(cluster.inputs(), NODE)}
    for step in range(25):
        cluster.change()
        inputs = cluster.inputs()
        delta = engine.load(inputs)
        reference = compile_tables(inputs, NODE)
        assert canonical(engine.tables()) == canonical(reference), f"step {step}"
        desired = {t.family: t for t in reference}
        full_diff = [c for f in ("inet", "bridge") for c in transaction(applied.get(f), desired.get(f))]
        assert effects(delta.commands()) == effects(full_diff), f"step {step}"
        applied = {f: t.as_applied() for f, t in desired.items()}


def test_a_bulk_load_in_any_order_is_the_full_compile():
    cluster = Cluster(7)
    for _ in range(30):
        cluster.change()
    inputs = cluster.inputs()
    engine = IncrementalCompiler(NODE)
    objects = [(engine.set_policy, p.key, p) for p in inputs.policies] + \
              [(engine.set_endpoint, e.key, e) for e in inputs.endpoints] + \
              [(engine.set_namespace, n.name, n) for n in inputs.namespaces]
    random.Random(1).shuffle(objects)
    for setter, key, obj in objects:
        setter(key, obj)
    engine.commit()
    assert canonical(engine.tables()) == canonical(compile_tables(inputs, NODE))


def test_a_new_pod_like_others_is_its_elements_only():
    cluster = Cluster(3)
    deny = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "deny", "namespace": "x"}, "spec": {"podSelector": {}}}
    engine = IncrementalCompiler(NODE)
    engine.load(inputs_of(parse_objects([*cluster.namespaces.values(), *cluster.pods.values(), deny])))
    newcomer = inputs_of(parse_objects([{
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "new", "namespace": "x"},
        "spec": {"nodeName": NODE}, "status": {"podIPs": [{"ip": "10.240.9.99"}]}}])).endpoints[0]
    engine.set_endpoint(newcomer.key, newcomer)
    commands = engine.commit().commands()
    assert {(op, kind) for c in commands for op, body in c.items() for kind in body} == {("add", "element")}
    assert {e[0] if isinstance(e, list) else e for c in commands for e in c["add"]["element"]["elem"]} \
        == {"10.240.9.99"}


def _pod(name, ip, labels, ports=()):
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": "x", "labels": labels},
            "spec": {"nodeName": NODE, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip}]}}


def test_a_peer_giving_a_named_port_a_new_number_widens_the_egress_of_other_pods():
    """Egress to a named port is judged per destination: a new api pod with
    "http" on 9090 must open 9090 for the clients, which did not change."""
    client = _pod("client", "10.240.0.2", {"app": "client"})
    old_api = _pod("api-0", "10.240.0.3", {"app": "api"}, [{"name": "http", "containerPort": 8080}])
    new_api = _pod("api-1", "10.240.0.4", {"app": "api"}, [{"name": "http", "containerPort": 9090}])
    not_api = _pod("db-0", "10.240.0.5", {"app": "db"}, [{"name": "http", "containerPort": 7070}])
    out = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "out", "namespace": "x"},
           "spec": {"podSelector": {"matchLabels": {"app": "client"}}, "policyTypes": ["Egress"],
                    "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "api"}}}], "ports": [{"port": "http"}]}]}}
    engine = IncrementalCompiler(NODE)
    steps = [[client, old_api, out], [client, old_api, not_api, out], [client, old_api, not_api, new_api, out],
             [client, not_api, new_api, out], [client, not_api, out]]
    for objects in steps:
        inputs = inputs_of(parse_objects(objects))
        engine.load(inputs)
        assert canonical(engine.tables()) == canonical(compile_tables(inputs, NODE))


def test_a_build_from_nothing_comes_in_batches_with_the_hooked_chains_last():
    from netpolicy import enforcer

    cluster = Cluster(11)
    commands = IncrementalCompiler(NODE).load(cluster.inputs()).commands()
    size, enforcer.BUILD_CHUNK = enforcer.BUILD_CHUNK, 7
    try:
        batches = enforcer.staged(commands)
    finally:
        enforcer.BUILD_CHUNK = size
    assert sorted(map(json.dumps, commands)) == sorted(json.dumps(c) for b in batches for c in b)
    assert len(batches) > 2 and all(len(b) <= 7 for b in batches[:-1])
    hooked = [c for c in commands if "hook" in c.get("add", {}).get("chain", {})]
    assert hooked and all(c in batches[-1] for c in hooked)
    assert not any("hook" in c.get("add", {}).get("chain", {}) for b in batches[:-1] for c in b)
    assert {c["add"]["rule"]["chain"] for c in batches[-1] if "rule" in c.get("add", {})} == {"forward", "guard"}
