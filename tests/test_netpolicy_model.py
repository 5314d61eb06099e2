"""NetworkPolicy parsing and validation (as the Kubernetes API server
validates), selection semantics, and the directory source.  No root."""
import copy

import pytest

from netpolicy.model import EGRESS, INGRESS, Endpoint, Inputs, LabelSelector, Namespace, Requirement, World
from netpolicy.parse import PolicyError, endpoint_record, load_text, parse_endpoint, parse_objects, parse_policy
from netpolicy.sources import Attachment, DirectorySource, EndpointRegistry, merge

BASE = {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "p", "namespace": "x"}, "spec": {"podSelector": {}}}


def policy_with(**spec):
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec)
    return obj


def problems(obj):
    with pytest.raises(PolicyError) as e:
        parse_policy(obj, "f.yaml")
    return e.value.problems


# --- validation: each rule, with the field path named -------------------------------
@pytest.mark.parametrize("spec, expected", [
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.1.0.0/24"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]: 10.1.0.0/24 must be a strict subset of cidr 10.0.0.0/16"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["10.0.0.0/16"]}}]}]},
     "spec.ingress[0].from[0].ipBlock.except[0]: 10.0.0.0/16 must be a strict subset of cidr 10.0.0.0/16"),
    ({"egress": [{"to": [{"ipBlock": {"cidr": "10.0.0.0/16", "except": ["fd00::/64"]}}]}]},
     "spec.egress[0].to[0].ipBlock.except[0]: fd00::/64 must be a strict subset of cidr 10.0.0.0/16"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.1/8"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.1/8' must not have bits set beyond the prefix "
     "length (did you mean 10.0.0.0/8?)"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "010.0.0.0/8"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr: '010.0.0.0/8' must be a valid CIDR value "
     "(e.g. 10.9.8.0/24 or 2001:db8::/64), without leading zeros"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr: '10.0.0.0' must be a valid CIDR value "
     "(e.g. 10.9.8.0/24 or 2001:db8::/64), without leading zeros"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "::ffff:10.0.0.0/104"}}]}]},
     "spec.ingress[0].from[0].ipBlock.cidr: '::ffff:10.0.0.0/104' must not be an IPv4-mapped IPv6 address"),
    ({"ingress": [{"from": [{"ipBlock": {}}]}]}, "spec.ingress[0].from[0].ipBlock.cidr: Required value"),
    ({"ingress": [{"from": [{"ipBlock": {"cidr": "10.0.0.0/8"}, "podSelector": {}}]}]},
     "spec.ingress[0].from[0]: may not specify both ipBlock and another peer"),
    ({"ingress": [{"from": [{}]}]},
     "spec.ingress[0].from[0]: must specify a peer (podSelector, namespaceSelector or ipBlock)"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}},
     "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "NotIn", "values": []}]}},
     "spec.podSelector.matchExpressions[0].values: must be specified when `operator` is 'In' or 'NotIn'"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}},
     "spec.podSelector.matchExpressions[0].values: may not be specified when `operator` is "
     "'Exists' or 'DoesNotExist'"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["b"]}]}},
     "spec.podSelector.matchExpressions[0].operator: 'Equals' is not a valid selector operator "
     "(In, NotIn, Exists, DoesNotExist)"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In", "values": ["-b"]}]}},
     "spec.podSelector.matchExpressions[0].values[0]: '-b' must be at most 63 characters of "
     "[A-Za-z0-9-_.], starting and ending with an alphanumeric character"),
    ({"podSelector": {"matchLabels": {"Example.com/app": "x"}}},
     "spec.podSelector.matchLabels: 'Example.com/app': prefix must be a lowercase RFC 1123 subdomain"),
    ({"podSelector": {"matchLabels": {"a" * 64: "x"}}},
     f"spec.podSelector.matchLabels: '{'a' * 64}': name part must be 1-63 characters of "
     "[A-Za-z0-9-_.], starting and ending with an alphanumeric character"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 79}]}]},
     "spec.ingress[0].ports[0].endPort: 79: must be greater than or equal to `port`"),
    ({"ingress": [{"ports": [{"port": "http", "endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort: may not be specified when `port` is non-numeric"),
    ({"ingress": [{"ports": [{"endPort": 90}]}]},
     "spec.ingress[0].ports[0].endPort: may not be specified when `port` is not specified"),
    ({"ingress": [{"ports": [{"port": 0}]}]},
     "spec.ingress[0].ports[0].port: 0: must be between 1 and 65535, inclusive"),
    ({"ingress": [{"ports": [{"port": 80, "endPort": 65536}]}]},
     "spec.ingress[0].ports[0].endPort: 65536: must be between 1 and 65535, inclusive"),
    ({"ingress": [{"ports": [{"port": "80"}]}]},
     "spec.ingress[0].ports[0].port: '80': must contain at least one letter (a-z)"),
    ({"ingress": [{"ports": [{"port": "a--b"}]}]},
     "spec.ingress[0].ports[0].port: 'a--b': must not contain consecutive hyphens"),
    ({"ingress": [{"ports": [{"port": "sixteen-chars-xx"}]}]},
     "spec.ingress[0].ports[0].port: 'sixteen-chars-xx': must be no more than 15 characters"),
    ({"ingress": [{"ports": [{"port": 53, "protocol": "udp"}]}]},
     "spec.ingress[0].ports[0].protocol: Unsupported value: 'udp': supported values: "
     "\"TCP\", \"UDP\", \"SCTP\""),
    ({"policyTypes": ["Ingress", "Egress", "Ingress"]},
     "spec.policyTypes: may not specify more than two policyTypes"),
    ({"policyTypes": ["Inbound"]},
     "spec.policyTypes[0]: Unsupported value: 'Inbound': supported values: \"Ingress\", \"Egress\""),
    ({"podselector": {}}, "spec.podselector: unknown field"),
    ({"ingress": [{"form": []}]}, "spec.ingress[0].form: unknown field"),
    ({"ingress": {"from": []}}, "spec.ingress: must be a list"),
])
def test_invalid_policy_names_the_field(spec, expected):
    assert expected in problems(policy_with(**spec))


def test_every_problem_is_reported_with_where_the_object_came_from():
    obj = policy_with(ingress=[{"ports": [{"port": 0}], "from": [{}]}])
    with pytest.raises(PolicyError) as e:
        parse_policy(obj, "dir/a.yaml[2]")
    assert len(e.value.problems) == 2
    assert str(e.value).startswith("dir/a.yaml[2]: NetworkPolicy x/p: spec.ingress[0].ports[0].port")


@pytest.mark.parametrize("metadata, expected", [
    ({"namespace": "x"}, "metadata.name: Required value: name is required"),
    ({"name": "Bad_Name"}, "metadata.name: 'Bad_Name' must be a lowercase RFC 1123 subdomain"),
    ({"name": "p", "namespace": "a.b"}, "metadata.namespace: 'a.b' must be a lowercase RFC 1123 label"),
])
def test_invalid_metadata(metadata, expected):
    obj = copy.deepcopy(BASE)
    obj["metadata"] = metadata
    assert any(p.startswith(expected) for p in problems(obj))


def test_valid_policy_with_every_feature_parses():
    p = parse_policy(policy_with(
        podSelector={"matchLabels": {"app": "db"},
                     "matchExpressions": [{"key": "tier", "operator": "NotIn", "values": ["x"]},
                                          {"key": "example.com/zone", "operator": "Exists"}]},
        ingress=[{"from": [{"namespaceSelector": {"matchLabels": {"team": "a"}},
                            "podSelector": {"matchLabels": {"role": "client"}}},
                           {"ipBlock": {"cidr": "fd00::/48", "except": ["fd00::/64", "fd00:0:0:1::/64"]}}],
                  "ports": [{"port": 80}, {"port": "metrics", "protocol": "UDP"},
                            {"port": 1000, "endPort": 2000, "protocol": "SCTP"}, {"protocol": "UDP"}]}],
        egress=[{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8"]}}]}]))
    assert p.policy_types == {INGRESS, EGRESS}
    (rule,) = p.ingress
    assert [(x.protocol, x.port, x.end_port) for x in rule.ports] == [
        ("TCP", 80, None), ("UDP", "metrics", None), ("SCTP", 1000, 2000), ("UDP", None, None)]
    assert rule.peers[1].ip_block.excepts == ("fd00::/64", "fd00:0:0:1::/64")
    assert p.pod_selector.match_expressions[1] == Requirement("example.com/zone", "Exists")


@pytest.mark.parametrize("spec, types", [
    ({}, {INGRESS}),                                  # a bare policy isolates ingress
    ({"egress": [{}]}, {INGRESS, EGRESS}),            # egress rules imply Egress
    ({"egress": []}, {INGRESS}),                      # an empty list does not (the API's defaulting)
    ({"ingress": [{}], "policyTypes": ["Egress"]}, {EGRESS}),
    ({"policyTypes": ["Ingress", "Egress"]}, {INGRESS, EGRESS}),
])
def test_policy_types_default(spec, types):
    assert parse_policy(policy_with(**spec)).policy_types == types


def test_absent_and_empty_lists_mean_the_same():
    absent = parse_policy(policy_with(ingress=[{}]))
    empty = parse_policy(policy_with(ingress=[{"from": [], "ports": []}]))
    assert absent.ingress == empty.ingress
    assert parse_policy(policy_with(ingress=[])).ingress == ()  # no rule at all: allows nothing


# --- selection semantics --------------------------------------------------------------
@pytest.mark.parametrize("requirement, labels, expected", [
    (Requirement("a", "In", ("1", "2")), {"a": "2"}, True),
    (Requirement("a", "In", ("1",)), {}, False),
    (Requirement("a", "NotIn", ("1",)), {}, True),       # absent label is "not in"
    (Requirement("a", "NotIn", ("1",)), {"a": "1"}, False),
    (Requirement("a", "Exists"), {"a": ""}, True),
    (Requirement("a", "DoesNotExist"), {"a": ""}, False),
])
def test_requirements(requirement, labels, expected):
    assert requirement.matches(labels) is expected


def test_empty_selector_selects_everything_and_terms_are_anded():
    assert LabelSelector().matches({})
    s = LabelSelector((("a", "1"),), (Requirement("b", "Exists"),))
    assert s.matches({"a": "1", "b": "x"}) and not s.matches({"a": "1"}) and not s.matches({"b": "x"})


def test_peers_namespaces_and_pods():
    pods = [Endpoint("x", "a", {"role": "client"}), Endpoint("x", "b"), Endpoint("y", "c", {"role": "client"}),
            Endpoint("z", "d", {"role": "client"})]
    world = World(Inputs(namespaces=(Namespace("y", {"team": "blue"}),), endpoints=tuple(pods)))
    policy = parse_policy(policy_with(ingress=[{"from": [
        {"podSelector": {"matchLabels": {"role": "client"}}},                     # own namespace only
        {"namespaceSelector": {"matchLabels": {"team": "blue"}}},                 # all pods there
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "z"}},
         "podSelector": {"matchLabels": {"role": "client"}}},                      # AND
    ]}]))
    found = [[e.key for e in world.peer_endpoints(policy, peer)] for peer in policy.ingress[0].peers]
    assert found == [["x/a"], ["y/c"], ["z/d"]]
    # namespaces nobody declared still carry their name label
    assert world.namespace_labels["z"] == {"kubernetes.io/metadata.name": "z"}


# --- documents and sources ----------------------------------------------------------------
POD = """
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: web}}
spec:
  nodeName: node-1
  containers:
  - name: c
    ports: [{name: http, containerPort: 8080}, {containerPort: 9000}, {name: dns, containerPort: 53, protocol: UDP}]
status: {podIP: 10.240.0.2, podIPs: [{ip: 10.240.0.2}, {ip: "fd00::2"}]}
"""


def test_pods_namespaces_and_lists():
    objects = load_text(POD + """
---
apiVersion: v1
kind: List
items:
- {apiVersion: v1, kind: Namespace, metadata: {name: x, labels: {team: red}}}
- {apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny}, spec: {}}
""", "cluster.yaml")
    pod, namespace, policy = objects
    assert (pod.key, pod.node, pod.addresses, pod.labels) == ("x/a", "node-1", ("10.240.0.2", "fd00::2"),
                                                               {"app": "web"})
    assert [(p.name, p.port, p.protocol) for p in pod.ports] == [("http", 8080, "TCP"), ("dns", 53, "UDP")]
    assert namespace.effective_labels() == {"team": "red", "kubernetes.io/metadata.name": "x"}
    assert policy.key == "default/deny" and policy.origin == "cluster.yaml[1].items[1]: NetworkPolicy default/deny"


def test_unknown_kinds_and_bad_pods_are_rejected():
    with pytest.raises(PolicyError, match="unsupported object .*'Deployment'"):
        parse_objects([{"apiVersion": "apps/v1", "kind": "Deployment"}])
    with pytest.raises(PolicyError, match="'10.0.0.300' is not an IP address"):
        load_text(POD.replace("podIP: 10.240.0.2,", "podIP: 10.0.0.300,"))
    with pytest.raises(PolicyError, match="not YAML or JSON"):
        load_text("a: [")


def test_directory_source_and_duplicates(tmp_path):
    (tmp_path / "pods.yaml").write_text(POD)
    sub = tmp_path / "policies"
    sub.mkdir()
    (sub / "deny.json").write_text('{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",'
                                   ' "metadata": {"name": "deny", "namespace": "x"}, "spec": {}}')
    (sub / "notes.txt").write_text("ignored")
    inputs = DirectorySource(str(tmp_path)).list()
    assert [p.key for p in inputs.policies] == ["x/deny"] and [e.key for e in inputs.endpoints] == ["x/a"]
    (sub / "again.yaml").write_text(POD)
    with pytest.raises(PolicyError, match="Pod x/a is also defined at .*pods.yaml"):
        DirectorySource(str(tmp_path)).list()
    with pytest.raises(PolicyError, match="no such file or directory"):  # not "no policies"
        DirectorySource(str(tmp_path / "gone")).list()


def test_registry_overrides_files_and_gc():
    registry = EndpointRegistry()
    a_net1, a_net2, b = Attachment("net1", "c1", "eth0"), Attachment("net2", "c1", "eth1"), Attachment("net1", "c2", "eth0")
    assert registry.put(a_net1, Endpoint("x", "a", {"v": "2"}, ("10.0.0.1",))) == ["x/a"]
    registry.put(a_net2, Endpoint("x", "a", {"v": "2"}, ("10.1.0.1",)))   # the same pod on a second network
    registry.put(b, Endpoint("x", "b"))
    merged = merge([Inputs(endpoints=(Endpoint("x", "a", {"v": "1"}),)), registry.list()])
    assert [(e.labels, e.addresses) for e in merged.endpoints if e.key == "x/a"] == [({"v": "2"}, ("10.0.0.1", "10.1.0.1"))]
    assert registry.retain("net1", [("c1", "eth0")]) == ["x/b"]           # GC of net1 keeps net2's attachment
    assert [e.key for e in registry.list().endpoints] == ["x/a"]
    assert registry.remove(a_net1) == ["x/a"] and registry.endpoint("x/a").addresses == ("10.1.0.1",)
    # a late DEL of the previous sandbox of a pod does not remove the pod that took its name
    registry.put(Attachment("net1", "c3", "eth0"), Endpoint("x", "b", {}, ("10.0.0.9",)))
    assert registry.remove(b) == [] and registry.endpoint("x/b").addresses == ("10.0.0.9",)


def test_registered_endpoints_persist_across_a_restart(tmp_path):
    record = {"namespace": "x", "name": "a", "labels": {"app": "web"}, "addresses": ["10.240.0.2", "fd00::2"],
              "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}], "node": "node-1"}
    endpoint = parse_endpoint(record)
    assert endpoint_record(endpoint) == record
    attachment = Attachment("net", "c" * 200, "eth0")   # any ID: files are named by a digest
    EndpointRegistry(str(tmp_path)).put(attachment, endpoint)
    restarted = EndpointRegistry(str(tmp_path))
    assert restarted.list().endpoints == (endpoint,) and restarted.registered(attachment) == endpoint
    restarted.remove(attachment)
    assert EndpointRegistry(str(tmp_path)).list().endpoints == () and not list(tmp_path.iterdir())


def test_invalid_registration_is_rejected():
    with pytest.raises(PolicyError) as e:
        parse_endpoint({"namespace": "X", "name": "a", "addresses": ["10.0.0.300"],
                        "ports": [{"name": "Http", "port": 0}]})
    assert e.value.problems == [
        "namespace: 'X' must be a lowercase RFC 1123 label of at most 63 characters",
        "addresses[0]: '10.0.0.300' is not an IP address",
        "ports[0].name: 'Http': must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)",
        "ports[0].port: 0: must be between 1 and 65535, inclusive"]
