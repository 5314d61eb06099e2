"""The typed form of what network policy works on: NetworkPolicy objects
(networking.k8s.io/v1), namespaces and endpoints (pods), and the selection
semantics Kubernetes gives them.  Parsing and validation live in parse.py;
everything here is already valid.

Selection is the one piece of meaning both the compiler and `explain` use,
so it lives with the types: a selector matches a label set, a peer matches
an endpoint given the namespaces' labels.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

INGRESS, EGRESS = "Ingress", "Egress"
PROTOCOLS = ("TCP", "UDP", "SCTP")
PROTOCOL_NUMBER = {"TCP": 6, "UDP": 17, "SCTP": 132}
ALL_PORTS = (0, 65535)
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"


@dataclass(frozen=True)
class Requirement:
    """One matchExpressions entry: In/NotIn carry values, Exists/DoesNotExist none."""
    key: str
    operator: str
    values: tuple[str, ...] = ()  # sorted, so that a selector's repr is canonical

    def matches(self, labels: Mapping[str, str]) -> bool:
        if self.operator == "In":
            return self.key in labels and labels[self.key] in self.values
        if self.operator == "NotIn":
            return self.key not in labels or labels[self.key] not in self.values
        if self.operator == "Exists":
            return self.key in labels
        return self.key not in labels  # DoesNotExist


@dataclass(frozen=True)
class LabelSelector:
    """matchLabels and matchExpressions, all ANDed; empty selects everything."""
    match_labels: tuple[tuple[str, str], ...] = ()
    match_expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (all(labels.get(k) == v for k, v in self.match_labels)
                and all(r.matches(labels) for r in self.match_expressions))


@dataclass(frozen=True)
class IPBlock:
    cidr: str
    excepts: tuple[str, ...] = ()


@dataclass(frozen=True)
class Peer:
    """Exactly one of: selectors (pod and/or namespace, ANDed) or ip_block."""
    pod_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    ip_block: IPBlock | None = None


@dataclass(frozen=True)
class PolicyPort:
    """``port`` None: every port of ``protocol``; str: a named port;
    ``end_port`` only with a numeric port."""
    protocol: str = "TCP"
    port: int | str | None = None
    end_port: int | None = None

    def resolve(self, destination: Endpoint | None) -> tuple[int, int, int] | None:
        """(protocol number, lo, hi); a named port is looked up among the
        destination pod's ports (the selected pod for ingress, the peer for
        egress): None when it is not a pod or has no such port."""
        protocol = PROTOCOL_NUMBER[self.protocol]
        if self.port is None:
            return (protocol, *ALL_PORTS)
        if isinstance(self.port, int):
            return protocol, self.port, self.end_port or self.port
        number = destination.named_port(self.port, self.protocol) if destination else None
        return (protocol, number, number) if number else None


@dataclass(frozen=True)
class Rule:
    """One ingress or egress rule.  Empty ``ports``: every port and protocol;
    empty ``peers``: every peer (absent and empty lists mean the same)."""
    ports: tuple[PolicyPort, ...] = ()
    peers: tuple[Peer, ...] = ()


@dataclass(frozen=True)
class Policy:
    namespace: str
    name: str
    pod_selector: LabelSelector = LabelSelector()
    ingress: tuple[Rule, ...] = ()
    egress: tuple[Rule, ...] = ()
    policy_types: frozenset[str] = frozenset({INGRESS})
    origin: str = field(default="", compare=False)  # where it was read, for messages

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def rules(self, direction: str) -> tuple[Rule, ...]:
        return self.ingress if direction == INGRESS else self.egress


@dataclass(frozen=True)
class Namespace:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    origin: str = field(default="", compare=False)

    def effective_labels(self) -> dict[str, str]:
        # Kubernetes sets this label on every namespace and keeps it equal to the name.
        return {**self.labels, NAMESPACE_NAME_LABEL: self.name}


@dataclass(frozen=True)
class NamedPort:
    name: str
    port: int
    protocol: str = "TCP"


@dataclass(frozen=True)
class Endpoint:
    """A pod: where it lives (namespace, node), what selects it (labels),
    its addresses and its named ports."""
    namespace: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict, hash=False)
    addresses: tuple[str, ...] = ()
    ports: tuple[NamedPort, ...] = ()
    node: str = ""
    origin: str = field(default="", compare=False)

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def named_port(self, name: str, protocol: str) -> int | None:
        for p in self.ports:
            if p.name == name and p.protocol == protocol:
                return p.port
        return None


@dataclass(frozen=True)
class Inputs:
    """Everything policy enforcement depends on, from all sources together."""
    policies: tuple[Policy, ...] = ()
    namespaces: tuple[Namespace, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()


class World:
    """Inputs indexed for selection: which endpoints a policy selects, which
    a peer matches.  Namespaces that endpoints or policies name but no
    source declares exist with only their name label."""

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        self.namespace_labels = {n.name: n.effective_labels() for n in inputs.namespaces}
        for name in {e.namespace for e in inputs.endpoints} | {p.namespace for p in inputs.policies}:
            self.namespace_labels.setdefault(name, Namespace(name).effective_labels())
        self.by_namespace: dict[str, list[Endpoint]] = {}
        for e in inputs.endpoints:
            self.by_namespace.setdefault(e.namespace, []).append(e)
        self._cache: dict = {}

    def _pods_matching(self, namespace: str, selector: LabelSelector) -> tuple[Endpoint, ...]:
        key = (namespace, selector)
        if key not in self._cache:
            self._cache[key] = tuple(e for e in self.by_namespace.get(namespace, ())
                                     if selector.matches(e.labels))
        return self._cache[key]

    def namespaces_matching(self, selector: LabelSelector) -> list[str]:
        key = ("namespaces", selector)
        if key not in self._cache:
            self._cache[key] = sorted(n for n, labels in self.namespace_labels.items()
                                      if selector.matches(labels))
        return self._cache[key]

    def selected(self, policy: Policy) -> tuple[Endpoint, ...]:
        """The endpoints a policy applies to: its podSelector, in its namespace."""
        return self._pods_matching(policy.namespace, policy.pod_selector)

    def peer_endpoints(self, policy: Policy, peer: Peer) -> tuple[Endpoint, ...]:
        """Endpoints a selector peer matches (none for an ipBlock peer)."""
        if peer.ip_block is not None:
            return ()
        pods = peer.pod_selector or LabelSelector()
        if peer.namespace_selector is None:
            return self._pods_matching(policy.namespace, pods)
        return tuple(e for ns in self.namespaces_matching(peer.namespace_selector)
                     for e in self._pods_matching(ns, pods))

    def policies_for(self, endpoint: Endpoint, direction: str) -> list[Policy]:
        """Policies that select ``endpoint`` and isolate it in ``direction``."""
        return [p for p in self.inputs.policies
                if direction in p.policy_types and p.namespace == endpoint.namespace
                and p.pod_selector.matches(endpoint.labels)]
