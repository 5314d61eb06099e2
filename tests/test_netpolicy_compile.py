"""The compiler, the incremental transaction, explain and status, without
root: compiled rulesets are run by a small nft JSON interpreter and held
to the independent evaluator written from the Kubernetes documentation."""
import copy

import pytest

from nft_sim import Packet, Ruleset
from policy_eval import Cluster
from policy_worlds import EXTERNAL, NODES, PORTS, world
from netpolicy.compiler import compile_tables
from netpolicy.explain import explain, status
from netpolicy.parse import parse_objects
from netpolicy.ruleset import build, transaction
from netpolicy.sources import inputs_of

PROTOCOLS = (("TCP", 6), ("UDP", 17), ("SCTP", 132))
PROBE_PORTS = sorted(set(PORTS) | {1, 100, 65535})


def inputs(*objects):
    return inputs_of(parse_objects(list(objects)))


def simulators(objects):
    """node -> Ruleset of that node's compiled inet table (None: no table)."""
    found = {}
    for node in NODES:
        commands = [c for t in compile_tables(inputs(*objects), node) if t.family == "inet" for c in build(t)]
        found[node] = Ruleset(commands) if commands else None
    return found


def compiled_allows(sims, node_of, src, dst, protocol_number, port):
    """A packet is judged in the forward hook of the source's node and of
    the destination's node (once when they are the same node)."""
    for node in {node_of.get(src), node_of.get(dst)} - {None}:
        if sims[node] is not None and sims[node].forward(Packet(src, dst, protocol_number, port)) != "accept":
            return False
    return True


def flows(pods):
    node_of = {ip["ip"]: p["spec"]["nodeName"] for p in pods for ip in p["status"]["podIPs"]}
    addresses = list(node_of) + EXTERNAL
    for src in addresses:
        for dst in addresses:
            same_family = (":" in src) == (":" in dst)
            if src != dst and same_family and (src in node_of or dst in node_of):
                yield src, dst, node_of


@pytest.mark.parametrize("seed", range(24))
def test_compiled_ruleset_agrees_with_the_evaluator(seed):
    _, namespaces, pods, policies = world(seed)
    sims = simulators(namespaces + pods + policies)
    reference = Cluster(policies, namespaces, pods)
    mismatches, verdicts = [], set()
    for src, dst, node_of in flows(pods):
        if reference.pod_with_ip(src) is not None and reference.pod_with_ip(src) is reference.pod_with_ip(dst):
            continue  # a pod's own two addresses: loopback, never forwarded
        for protocol, number in PROTOCOLS:
            for port in PROBE_PORTS:
                want = reference.allowed(src, dst, port, protocol)
                got = compiled_allows(sims, node_of, src, dst, number, port)
                verdicts.add(want)
                if got != want:
                    mismatches.append((src, dst, f"{port}/{protocol}", "compiled", got, "expected", want))
    assert not mismatches, mismatches[:10]


@pytest.mark.parametrize("seed", range(24))
def test_explain_agrees_with_the_evaluator(seed):
    _, namespaces, pods, policies = world(seed)
    model = inputs(*namespaces, *pods, *policies)
    reference = Cluster(policies, namespaces, pods)
    for src, dst, _ in flows(pods):
        if reference.pod_with_ip(src) is not None and reference.pod_with_ip(src) is reference.pod_with_ip(dst):
            continue
        for protocol, _ in PROTOCOLS:
            for port in (53, 80, 1000):
                assert explain(model, src, dst, port, protocol).allowed == reference.allowed(src, dst, port, protocol), \
                    (src, dst, port, protocol)


# --- a small fixed cluster -------------------------------------------------------------------
def pod(namespace, name, ip, labels=None, node="node-a", ports=()):
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": labels or {}},
            "spec": {"nodeName": node, "containers": [{"name": "c", "ports": list(ports)}]},
            "status": {"podIPs": [{"ip": ip}]}}


def netpol(name, namespace="x", **spec):
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace}, "spec": spec}


WEB = pod("x", "web", "10.240.0.2", {"app": "web"}, ports=[{"name": "http", "containerPort": 8080}])
CLIENT = pod("y", "client", "10.240.0.3", {"role": "client"})
OTHER = pod("y", "other", "10.240.0.4")
REMOTE = pod("y", "remote", "10.240.9.9", {"role": "client"}, node="node-b")
ALLOW_CLIENTS = netpol("allow-clients", podSelector={"matchLabels": {"app": "web"}}, ingress=[{
    "from": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"role": "client"}}}],
    "ports": [{"port": "http"}]}])


def verdict(objects, src, dst, port, protocol=6, node="node-a"):
    return simulators(objects)[node].forward(Packet(src, dst, protocol, port))


def test_named_port_and_peers():
    objects = [WEB, CLIENT, OTHER, REMOTE, ALLOW_CLIENTS]
    assert verdict(objects, "10.240.0.3", "10.240.0.2", 8080) == "accept"
    assert verdict(objects, "10.240.9.9", "10.240.0.2", 8080) == "accept"  # a client on another node
    assert verdict(objects, "10.240.0.3", "10.240.0.2", 80) == "drop"      # not the named port
    assert verdict(objects, "10.240.0.4", "10.240.0.2", 8080) == "drop"    # not a client
    assert verdict(objects, "10.240.0.2", "10.240.0.3", 80) == "accept"    # web is not egress-isolated


def test_egress_named_port_resolves_per_destination():
    api = pod("y", "api", "10.240.0.5", ports=[{"name": "http", "containerPort": 9090}])
    objects = [WEB, CLIENT, api, netpol("out", policyTypes=["Egress"], egress=[{"ports": [{"port": "http"}]}])]
    assert verdict(objects, "10.240.0.2", "10.240.0.5", 9090) == "accept"
    assert verdict(objects, "10.240.0.2", "10.240.0.5", 8080) == "drop"  # http is 8080 on web, not on api
    assert verdict(objects, "10.240.0.2", "10.240.0.3", 9090) == "drop"  # client has no port named http


def test_per_packet_cost_does_not_grow_with_policies_or_pods():
    def rules_run(n_policies, n_pods):
        pods = [pod("y", f"c{i}", f"10.240.1.{i + 2}", {"role": "client"}) for i in range(n_pods)]
        policies = [netpol(f"p{i}", podSelector={}, ingress=[{"from": [{"ipBlock": {"cidr": f"10.{i}.0.0/16"}}],
                                                               "ports": [{"port": 1000 + i}]}])
                    for i in range(n_policies)]
        sim = simulators([WEB, *pods, ALLOW_CLIENTS, *policies])["node-a"]
        before = sim.rules_run
        assert sim.forward(Packet("10.240.1.2", "10.240.0.2", 6, 8080)) == "accept"
        return sim.rules_run - before
    assert rules_run(1, 1) == rules_run(60, 1) == rules_run(1, 60) == rules_run(60, 60)


def test_no_policy_no_tables():
    assert compile_tables(inputs(WEB, CLIENT), "node-a") == []


# --- incremental transactions -------------------------------------------------------------
def changes(before, after, node="node-a"):
    old = {t.family: t.as_applied() for t in compile_tables(inputs(*before), node)}
    new = {t.family: t for t in compile_tables(inputs(*after), node)}
    return [c for family in ("inet", "bridge") for c in transaction(old.get(family), new.get(family))]


def kinds(commands):
    return sorted({f"{op} {next(iter(body))}" for c in commands for op, body in c.items()})


def test_unchanged_inputs_need_no_transaction():
    objects = [WEB, CLIENT, OTHER, ALLOW_CLIENTS]
    assert changes(objects, objects) == []


def elements_touched(commands):
    return [e for c in commands for body in c.values() for e in body["element"]["elem"]]


def test_a_pod_label_change_rewrites_only_elements():
    relabelled = copy.deepcopy(OTHER)
    relabelled["metadata"]["labels"] = {"role": "client"}
    commands = changes([WEB, CLIENT, OTHER, ALLOW_CLIENTS], [WEB, CLIENT, relabelled, ALLOW_CLIENTS])
    assert set(kinds(commands)) <= {"add element", "delete element"}
    # 10.240.0.4 joins the clients' peer group (a hash set of pod addresses): one element
    assert elements_touched(commands) == ["10.240.0.4"]


def test_a_new_pod_in_an_isolated_namespace_adds_only_its_elements():
    deny = netpol("deny", podSelector={})
    newcomer = pod("x", "new", "10.240.0.7")
    commands = changes([WEB, CLIENT, deny], [WEB, CLIENT, newcomer, deny])
    assert kinds(commands) == ["add element"]
    keys = [e[0] if isinstance(e, list) else e for e in elements_touched(commands)]
    touched = {k["concat"][0] if isinstance(k, dict) else k for k in keys}
    assert touched == {"10.240.0.7"}


def touched_names(commands):
    """Names of the chains, sets and maps a transaction adds, rewrites or deletes."""
    return {body.get("name") or body.get("chain") for c in commands for obj in c.values()
            for kind, body in obj.items() if kind not in ("element", "counter")}


def test_a_port_change_swaps_the_pods_profile():
    narrowed = copy.deepcopy(ALLOW_CLIENTS)
    narrowed["spec"]["ingress"][0]["ports"] = [{"port": 8080, "endPort": 8090}, {"protocol": "UDP"}]
    commands = changes([WEB, CLIENT, ALLOW_CLIENTS], [WEB, CLIENT, narrowed])
    # a new profile chain (ports -> classes) replaces the old one; web's element points to it
    assert {n[:2] for n in touched_names(commands)} == {"p_"}
    (profile,) = [c["add"]["chain"]["name"] for c in commands if "add" in c and "chain" in c["add"]]
    adds = [e for c in commands if "add" in c and "element" in c["add"] for e in c["add"]["element"]["elem"]]
    assert adds == [["10.240.0.2", {"goto": {"target": profile}}]]


def test_a_peer_change_gives_the_selected_pods_a_class_naming_another_group():
    wider = copy.deepcopy(ALLOW_CLIENTS)
    wider["spec"]["ingress"][0]["from"] = [{"namespaceSelector": {}}]
    commands = changes([WEB, CLIENT, ALLOW_CLIENTS], [WEB, CLIENT, wider])
    # a new class naming the new group, a new profile sending to it; no chain is rewritten
    assert {n[:2] for n in touched_names(commands)} == {"c_", "g_", "p_"}
    assert not [c for c in commands if "flush" in c and c["flush"]["chain"]["name"] in
                {n for t in compile_tables(inputs(WEB, CLIENT, wider), "node-a") for n in t.chains}]


def test_a_new_rule_adds_structure_and_leaves_the_rest():
    more = copy.deepcopy(ALLOW_CLIENTS)
    more["spec"]["ingress"].append({"from": [{"ipBlock": {"cidr": "192.0.2.0/24"}}]})
    commands = changes([WEB, CLIENT, ALLOW_CLIENTS], [WEB, CLIENT, more])
    assert {"add counter", "add chain", "add set", "add element"} <= set(kinds(commands))
    # new classes, profile and group (and the new rule's counter); dispatch chains untouched
    assert {n[:2] for n in touched_names(commands)} == {"c_", "g_", "p_"}
    assert changes([WEB, CLIENT, ALLOW_CLIENTS], [WEB, CLIENT]) == [
        {"delete": {"table": {"family": "inet", "name": "pycni_netpolicy"}}},
        {"delete": {"table": {"family": "bridge", "name": "pycni_netpolicy"}}}]


def test_policies_with_the_same_peers_share_one_group():
    twin = copy.deepcopy(ALLOW_CLIENTS)
    twin["metadata"]["name"] = "twin"
    (table, _) = compile_tables(inputs(WEB, CLIENT, ALLOW_CLIENTS, twin), "node-a")
    assert len([name for name in table.sets if name.startswith("g_")]) == 1   # one group (IPv4 pods only)


def test_changed_verdict_deletes_then_adds_the_key():
    wider = copy.deepcopy(ALLOW_CLIENTS)
    wider["spec"]["ingress"][0]["ports"].append({"port": 9000})
    commands = changes([WEB, CLIENT, ALLOW_CLIENTS], [WEB, CLIENT, wider])
    deletes = [c for c in commands if "delete" in c and "element" in c["delete"]]
    adds = [c for c in commands if "add" in c and "element" in c["add"]]
    assert deletes and adds and commands.index(deletes[0]) < commands.index(adds[0])


# --- explain and status ----------------------------------------------------------------------
def test_explain_names_policies_and_rules():
    model = inputs(WEB, CLIENT, OTHER, ALLOW_CLIENTS,
                   netpol("deny-out", "y", podSelector={}, policyTypes=["Egress"],
                          egress=[{"to": [{"ipBlock": {"cidr": "10.240.0.0/24"}}]}]))
    result = explain(model, "y/client", "x/web", 8080, "TCP")
    assert result.allowed
    reference = Cluster([ALLOW_CLIENTS, netpol("deny-out", "y", podSelector={}, policyTypes=["Egress"],
                                               egress=[{"to": [{"ipBlock": {"cidr": "10.240.0.0/24"}}]}])],
                        [], [WEB, CLIENT, OTHER])
    assert reference.allowed("y/client", "x/web", 8080) and not reference.allowed("y/other", "x/web", 8080)
    assert result.egress.allowing == ["y/deny-out egress[0]"]
    assert result.ingress.allowing == ["x/allow-clients ingress[0]"]
    denied = explain(model, "y/other", "10.240.0.2", 8080, "TCP")
    assert not denied.allowed and denied.egress.allowed
    assert denied.ingress.reason == "isolated by x/allow-clients and no rule allows it"
    assert "y/other -> 10.240.0.2 8080/TCP: DENIED" in str(denied)
    outside = explain(model, "y/client", "192.0.2.1", 443, "TCP")
    assert not outside.allowed and outside.ingress.reason.startswith("the destination is not a pod")
    from_node = explain(model, "10.240.0.1", "x/web", 22, "TCP", {"node-a": ["10.240.0.1"]})
    assert from_node.allowed and "own node" in from_node.ingress.reason
    with pytest.raises(ValueError, match="no pod 'x/nope'"):
        explain(model, "x/nope", "x/web", 80)


def test_status_sums_rule_counters_per_policy():
    model = inputs(WEB, CLIENT, ALLOW_CLIENTS, netpol("deny", "y", podSelector={}))
    (inet, _) = compile_tables(model, "node-a")
    counter = next(name for name, comment in inet.counters.items() if comment == "x/allow-clients ingress[0]")
    found = {s.policy: s for s in status(model, {counter: (3, 180)})}
    assert (found["x/allow-clients"].packets, found["x/allow-clients"].bytes) == (3, 180)
    assert found["x/allow-clients"].selects == ["x/web"]
    assert found["y/deny"].selects == ["y/client"] and found["y/deny"].rules == []
