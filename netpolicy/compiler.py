"""Policies, namespaces and endpoints -> our nftables tables, as a pure
function (see README.md for the design and why).

Per direction, one verdict-map lookup keyed by the local pod's address
(plus protocol and port) sends a packet to the chain of its *class*: the
ordered list of rule fragments that allow that pod that port.  The class
chain does one more lookup, keyed by the peer address, in an interval map
whose ranges are labelled with the first rule allowing them, and jumps to
that rule's counting chain; a miss is a drop.  Pods with the same rules
share class chains and maps, so the ruleset grows with what differs, and
per packet the cost is a fixed number of lookups whatever the number of
policies or pods.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .addresses import AddressSet, first_owner, union
from .model import ALL_PORTS, EGRESS, INGRESS, PROTOCOL_NUMBER, Endpoint, Inputs, Policy, Rule, World
from .ruleset import Chain, SetSpec, Table

TABLE = "pycni_netpolicy"
# Set on every packet our inet forward chain sees; the bridge table's guard
# drops bridged frames of isolated pods that arrive without it (they
# skipped the inet hooks: br_netfilter off).  Other software owns other
# bits (kube-proxy 0x4000/0x8000, netavark 0x2000, Cilium 0x0f00).
JUDGED_MARK = 0x00100000
FAMILIES = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
# ICMPv6 neighbour discovery must pass for isolated pods or IPv6 stops working.
ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert", "nd-redirect"]
FORWARD_HOOK = {"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}
# After br_netfilter's own forward hook, which runs the inet hooks for bridged frames.
GUARD_HOOK = {"type": "filter", "hook": "forward", "prio": 100, "policy": "accept"}


def _digest(text: str, n: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:n]


@dataclass(frozen=True)
class RuleRef:
    """One rule of one policy: ``ns/name ingress[0]``."""
    policy: str
    direction: str
    index: int

    @property
    def label(self) -> str:
        return f"{self.policy} {self.direction.lower()}[{self.index}]"

    @property
    def counter(self) -> str:
        return "r_" + _digest(self.label)

    @property
    def chain(self) -> str:
        return "a_" + _digest(self.label)


@dataclass(frozen=True)
class Fragment:
    """What one rule allows a pod in one direction: ``ports`` as (protocol
    number, lo, hi) or None for every protocol and port, from ``peers``.
    An egress rule with a named port gives one fragment per port number the
    name resolves to among the destinations (``variant``)."""
    rule: RuleRef
    variant: tuple
    ports: tuple[tuple[int, int, int], ...] | None
    peers: AddressSet


# --- nft JSON expressions ---------------------------------------------------------
def _payload(protocol: str, field: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field}}


def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


_L4PROTO = {"meta": {"key": "l4proto"}}
_PORTED = _match(_L4PROTO, {"set": ["tcp", "udp", "sctp"]})


def _peer_field(direction: str) -> str:
    return "saddr" if direction == INGRESS else "daddr"


def _pod_field(direction: str) -> str:
    return "daddr" if direction == INGRESS else "saddr"


def _name(direction: str) -> str:
    return direction.lower()


def ports_map(direction: str, version: int) -> str:
    return f"{_name(direction)}_ports{version}"


def other_map(direction: str, version: int) -> str:
    return f"{_name(direction)}_other{version}"


def deny_chain(direction: str) -> str:
    return f"deny_{_name(direction)}"


def isolated_set(direction: str, version: int) -> str:
    return f"{_name(direction)}_isolated{version}"


def rule_peers(world: World, policy: Policy, rule: Rule) -> AddressSet:
    """The addresses a rule's from/to list admits: every address when the
    list is empty, else the union of its peers."""
    if not rule.peers:
        return AddressSet.everything()
    return union(
        AddressSet.of_ip_block(peer.ip_block) if peer.ip_block else
        AddressSet.of_addresses(a for e in world.peer_endpoints(policy, peer) for a in e.addresses)
        for peer in rule.peers)


class _Compiler:
    def __init__(self, inputs: Inputs, node: str):
        self.world = World(inputs)
        self.node = node
        self.policies = sorted(inputs.policies, key=lambda p: p.key)
        self._peers: dict[RuleRef, AddressSet] = {}
        self._named: dict[tuple[str, str], dict[int, list[str]]] = {}
        self._partitions: dict = {}
        self.classes: dict[str, tuple[Fragment, ...]] = {}

    # --- what each rule allows ------------------------------------------------
    def rule_peers(self, ref: RuleRef, policy: Policy, rule: Rule) -> AddressSet:
        if ref not in self._peers:
            self._peers[ref] = rule_peers(self.world, policy, rule)
        return self._peers[ref]

    def named_destinations(self, name: str, protocol: str) -> dict[int, list[str]]:
        """Port number -> addresses of endpoints whose port ``name`` it is."""
        if (name, protocol) not in self._named:
            found: dict[int, list[str]] = {}
            for e in self.world.inputs.endpoints:
                number = e.named_port(name, protocol)
                if number:
                    found.setdefault(number, []).extend(e.addresses)
            self._named[(name, protocol)] = found
        return self._named[(name, protocol)]

    def fragments(self, ref: RuleRef, policy: Policy, rule: Rule, endpoint: Endpoint) -> list[Fragment]:
        peers = self.rule_peers(ref, policy, rule)
        if not rule.ports:
            return [Fragment(ref, (), None, peers)]
        if ref.direction == INGRESS:  # named ports are the selected pod's own
            ports = tuple(r for r in (p.resolve(endpoint) for p in rule.ports) if r)
            return [Fragment(ref, (), ports, peers)] if ports else []
        numeric = tuple(p.resolve(None) for p in rule.ports if not isinstance(p.port, str))
        out = [Fragment(ref, (), numeric, peers)] if numeric else []
        for p in rule.ports:  # egress: named ports are each destination's
            if not isinstance(p.port, str):
                continue
            for number, addresses in sorted(self.named_destinations(p.port, p.protocol).items()):
                allowed = AddressSet.of_addresses(a for a in addresses if a in peers)
                if allowed:
                    out.append(Fragment(ref, (p.port, p.protocol, number),
                                        ((PROTOCOL_NUMBER[p.protocol], number, number),), allowed))
        return out

    # --- per pod: port ranges -> classes --------------------------------------
    def partition(self, fragments: tuple[Fragment, ...]):
        """[(protocol, lo, hi, class)] covering every port of TCP, UDP and
        SCTP, and the class for other protocols; a class is the ordered
        fragments allowing that traffic (empty: denied)."""
        if fragments not in self._partitions:
            segments = []
            for protocol in PROTOCOL_NUMBER.values():
                cuts = {ALL_PORTS[0], ALL_PORTS[1] + 1}
                for f in fragments:
                    for proto, lo, hi in f.ports or ():
                        if proto == protocol:
                            cuts |= {lo, hi + 1}
                cuts = sorted(cuts)
                for lo, end in zip(cuts, cuts[1:]):
                    cls = tuple(f for f in fragments if f.ports is None or any(
                        proto == protocol and plo <= lo and end - 1 <= phi for proto, plo, phi in f.ports))
                    if segments and segments[-1][0] == protocol and segments[-1][3] == cls:
                        segments[-1] = (protocol, segments[-1][1], end - 1, cls)
                    else:
                        segments.append((protocol, lo, end - 1, cls))
            other = tuple(f for f in fragments if f.ports is None)
            self._partitions[fragments] = (segments, other)
        return self._partitions[fragments]

    def target(self, direction: str, cls: tuple[Fragment, ...]) -> tuple[str, str]:
        if not cls:
            return ("goto", deny_chain(direction))
        name = "c_" + _digest(repr([(f.rule.label, f.variant) for f in cls]))
        self.classes[name] = cls
        return ("goto", name)

    # --- tables -----------------------------------------------------------------
    def run(self) -> list[Table]:
        inet = Table("inet", TABLE)
        bridge = Table("bridge", TABLE)
        for direction in (EGRESS, INGRESS):
            for version in FAMILIES:
                inet.sets[ports_map(direction, version)] = SetSpec(
                    (FAMILIES[version][1], "inet_proto", "inet_service"), verdicts=True, interval=True)
                inet.sets[other_map(direction, version)] = SetSpec((FAMILIES[version][1],), verdicts=True)
                bridge.sets[isolated_set(direction, version)] = SetSpec((FAMILIES[version][1],))
        for name in inet.sets:
            inet.elements[name] = {}
        for name in bridge.sets:
            bridge.elements[name] = {}

        selecting = self._selecting()
        for endpoint in self.world.inputs.endpoints:
            for direction in (EGRESS, INGRESS):
                policies = selecting.get((endpoint.key, direction))
                if policies and endpoint.node == self.node:
                    self._isolate(inet, bridge, endpoint, direction, policies)

        self._rules_and_classes(inet)
        self._base_chains(inet, bridge)
        return [inet, bridge]

    def _selecting(self) -> dict[tuple[str, str], list[Policy]]:
        selecting: dict[tuple[str, str], list[Policy]] = {}
        for policy in self.policies:
            for endpoint in self.world.selected(policy):
                for direction in policy.policy_types:
                    selecting.setdefault((endpoint.key, direction), []).append(policy)
        return selecting

    def _isolate(self, inet: Table, bridge: Table, endpoint: Endpoint, direction: str,
                 policies: list[Policy]) -> None:
        fragments = tuple(f for policy in policies for i, rule in enumerate(policy.rules(direction))
                          for f in self.fragments(RuleRef(policy.key, direction, i), policy, rule, endpoint))
        segments, other = self.partition(fragments)
        for address in endpoint.addresses:
            version = 6 if ":" in address else 4
            value = AddressSet.of_addresses([address]).family(version)[0]
            for protocol, lo, hi, cls in segments:
                inet.elements[ports_map(direction, version)][
                    (value, (protocol, protocol), (lo, hi))] = self.target(direction, cls)
            inet.elements[other_map(direction, version)][(value,)] = self.target(direction, other)
            bridge.elements[isolated_set(direction, version)][(value,)] = None

    def _rules_and_classes(self, inet: Table) -> None:
        for policy in self.policies:
            for direction in sorted(policy.policy_types):
                for i, _ in enumerate(policy.rules(direction)):
                    ref = RuleRef(policy.key, direction, i)
                    inet.counters[ref.counter] = ref.label
                    inet.chains[ref.chain] = Chain([[{"counter": ref.counter}]])
        for name, cls in sorted(self.classes.items()):
            direction = cls[0].rule.direction
            rules = []
            for version, (protocol, kind) in FAMILIES.items():
                owners = first_owner([f.peers.family(version) for f in cls])
                inet.sets[f"{name}_{version}"] = SetSpec((kind,), verdicts=True, interval=True)
                inet.elements[f"{name}_{version}"] = {
                    ((lo, hi),): ("goto", cls[owner].rule.chain) for lo, hi, owner in owners}
                rules.append([{"vmap": {"key": _payload(protocol, _peer_field(direction)),
                                        "data": f"@{name}_{version}"}}])
            rules.append([{"goto": {"target": deny_chain(direction)}}])
            inet.chains[name] = Chain(rules)

    def _base_chains(self, inet: Table, bridge: Table) -> None:
        mark = {"meta": {"key": "mark"}}
        inet.chains["forward"] = Chain([
            [{"mangle": {"key": mark, "value": {"|": [mark, JUDGED_MARK]}}}],
            [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}],
            [_match(_payload("icmpv6", "type"), {"set": ND_TYPES}), {"accept": None}],
            [{"jump": {"target": _name(EGRESS)}}],
            [{"jump": {"target": _name(INGRESS)}}],
        ], FORWARD_HOOK)
        for direction in (EGRESS, INGRESS):
            rules = []
            for version, (protocol, _) in FAMILIES.items():
                pod = _payload(protocol, _pod_field(direction))
                rules.append([_PORTED, {"vmap": {
                    "key": {"concat": [pod, _L4PROTO, _payload("th", "dport")]},
                    "data": f"@{ports_map(direction, version)}"}}])
                rules.append([{"vmap": {"key": pod, "data": f"@{other_map(direction, version)}"}}])
            inet.chains[_name(direction)] = Chain(rules)
            counter = f"denied_{_name(direction)}"
            inet.counters[counter] = f"{_name(direction)} denied: no rule allows it"
            inet.chains[deny_chain(direction)] = Chain([[{"counter": counter}, {"drop": None}]])

        bridge.counters["unjudged"] = "bridged frames of isolated pods that skipped the inet hooks"
        guard = [[_match({"&": [mark, JUDGED_MARK]}, JUDGED_MARK), {"accept": None}]]
        for direction in (EGRESS, INGRESS):
            for version, (protocol, _) in FAMILIES.items():
                guard.append([_match(_payload(protocol, _pod_field(direction)),
                                     f"@{isolated_set(direction, version)}"),
                              {"counter": "unjudged"}, {"drop": None}])
        bridge.chains["guard"] = Chain(guard, GUARD_HOOK)


def compile_tables(inputs: Inputs, node: str) -> list[Table]:
    """Our tables for ``node`` (endpoints whose ``node`` equals it are
    local); none at all when there is no policy."""
    if not inputs.policies:
        return []
    return _Compiler(inputs, node).run()
