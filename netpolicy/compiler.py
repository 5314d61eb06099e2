"""Policies, namespaces and endpoints -> our nftables tables, as a pure
function (see README.md for the design and why).

Per direction, one verdict-map lookup keyed by the local pod's address
sends a packet to the pod's *profile* chain, where one lookup of protocol
and port picks the *class*: the ordered rule fragments that allow that pod
that port.  The class chain looks the peer address up in each fragment's
*peer group* (a named interval set of the addresses a rule's from/to
admits, shared by every rule with the same peers) and jumps to the first
matching rule's counter, then returns (on to the other direction); no
match is a drop.  Pods with the same rules share profiles and classes,
rules with the same peers share groups, so the ruleset grows with what
differs, and a pod is one element per address in its direction's map (plus
its address in the groups it is a peer of).  Per packet: two lookups plus
one set lookup per rule that applies to that pod and port, whatever the
number of other policies and pods.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cached_property

from .addresses import AddressSet, parse_address, union
from .model import (ALL_PORTS, EGRESS, INGRESS, PROTOCOL_NUMBER, Endpoint, Inputs, LabelSelector, Peer,
                    Policy, Rule, World)
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

    @cached_property
    def label(self) -> str:
        return f"{self.policy} {self.direction.lower()}[{self.index}]"

    @cached_property
    def counter(self) -> str:
        return "r_" + _digest(self.label)


@dataclass(frozen=True)
class Fragment:
    """What one rule allows a pod in one direction: ``ports`` as (protocol
    number, lo, hi) or None for every protocol and port, from the peers in
    ``group`` (None: from everywhere).  An egress rule with a named port
    gives one fragment per port number the name resolves to among the
    destinations (``variant``)."""
    rule: RuleRef
    variant: tuple
    ports: tuple[tuple[int, int, int], ...] | None
    group: str | None


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


def pods_map(direction: str, version: int) -> str:
    return f"{_name(direction)}_pods{version}"


def deny_chain(direction: str) -> str:
    return f"deny_{_name(direction)}"


def isolated_set(direction: str, version: int) -> str:
    return f"{_name(direction)}_isolated{version}"


def rule_peers(world: World, policy: Policy, rule: Rule) -> AddressSet:
    """The addresses a rule's from/to list admits: every address when the
    list is empty, else the union of its peers."""
    if not rule.peers:
        return AddressSet.everything()
    return union(AddressSet.of_ip_block(peer.ip_block) if peer.ip_block else
                 AddressSet.of_addresses(a for e in world.peer_endpoints(policy, peer) for a in e.addresses)
                 for peer in rule.peers)


def _peer_definition(policy: Policy, peer: Peer) -> str:
    """What a peer denotes, whichever policy holds it: policies with the
    same peers share one peer group.  A repr of tuples and strings only, so
    it (and the set names hashed from it) is the same in every process."""
    if peer.ip_block:
        return repr(("ipBlock", peer.ip_block.cidr, peer.ip_block.excepts))
    namespace = policy.namespace if peer.namespace_selector is None else None
    return repr(("pods", namespace, peer.namespace_selector, peer.pod_selector or LabelSelector()))


class _Compiler:
    def __init__(self, inputs: Inputs, node: str):
        self.world = World(inputs)
        self.node = node
        self.policies = sorted(inputs.policies, key=lambda p: p.key)
        self._named: dict[tuple[str, str], dict[int, list[str]]] = {}
        self._profile_names: dict[tuple[Fragment, ...], str] = {}
        self.profiles: dict[str, Chain] = {}
        self.groups: dict[str, AddressSet] = {}
        self._group_names: dict[tuple, str | None] = {}
        self.classes: dict[str, tuple[Fragment, ...]] = {}
        self._class_names: dict[tuple[Fragment, ...], str] = {}

    # --- what each rule allows ------------------------------------------------
    def group(self, ref: RuleRef, policy: Policy, rule: Rule, variant: tuple = (), only=None) -> str | None:
        """The peer group (a named set) of a rule's peers, restricted to the
        addresses ``only`` when given; None when it admits every address."""
        key = (ref, variant)
        if key not in self._group_names:
            definition = tuple(sorted({_peer_definition(policy, p) for p in rule.peers}))
            self._group_names[key] = "g_" + _digest(repr((definition, variant))) if definition or variant else None
        name = self._group_names[key]
        if name is not None and name not in self.groups:
            peers = rule_peers(self.world, policy, rule)
            self.groups[name] = peers if only is None else AddressSet.of_addresses(a for a in only if a in peers)
        return name

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
        if not rule.ports:
            return [Fragment(ref, (), None, self.group(ref, policy, rule))]
        if ref.direction == INGRESS:  # named ports are the selected pod's own
            ports = tuple(r for r in (p.resolve(endpoint) for p in rule.ports) if r)
            return [Fragment(ref, (), ports, self.group(ref, policy, rule))] if ports else []
        numeric = tuple(p.resolve(None) for p in rule.ports if not isinstance(p.port, str))
        out = [Fragment(ref, (), numeric, self.group(ref, policy, rule))] if numeric else []
        for p in rule.ports:  # egress: named ports are each destination's
            if not isinstance(p.port, str):
                continue
            for number, addresses in sorted(self.named_destinations(p.port, p.protocol).items()):
                variant = (p.port, p.protocol, number)
                group = self.group(ref, policy, rule, variant, only=addresses)
                if self.groups[group]:
                    out.append(Fragment(ref, variant, ((PROTOCOL_NUMBER[p.protocol], number, number),), group))
        return out

    # --- per pod: port ranges -> classes ---------------------------------------
    def profile(self, direction: str, fragments: tuple[Fragment, ...]) -> str:
        """The chain judging pods with these fragments: TCP, UDP and SCTP
        port ranges -> class, other protocols -> class (a class is the
        ordered fragments allowing that traffic; none: denied).  Pods with
        the same rules (and named ports) share it."""
        if fragments not in self._profile_names:
            segments = []
            for protocol in PROTOCOL_NUMBER.values():
                cuts = {ALL_PORTS[0], ALL_PORTS[1] + 1}
                for f in fragments:
                    for proto, lo, hi in f.ports or ():
                        if proto == protocol:
                            cuts |= {lo, hi + 1}
                cuts = sorted(cuts)
                for lo, end in zip(cuts, cuts[1:]):
                    target = self.target(direction, tuple(f for f in fragments if f.ports is None or any(
                        proto == protocol and plo <= lo and end - 1 <= phi for proto, plo, phi in f.ports)))
                    if segments and segments[-1][0] == protocol and segments[-1][3] == target:
                        segments[-1] = (protocol, segments[-1][1], end - 1, target)
                    else:
                        segments.append((protocol, lo, end - 1, target))
            other = self.target(direction, tuple(f for f in fragments if f.ports is None))
            name = "p_" + _digest(repr((direction, segments, other)))
            self._profile_names[fragments] = name
            self.profiles[name] = Chain([
                [_PORTED, {"vmap": {"key": {"concat": [_L4PROTO, _payload("th", "dport")]}, "data": {"set": [
                    [{"concat": [protocol, lo if lo == hi else {"range": [lo, hi]}]}, {"goto": {"target": t}}]
                    for protocol, lo, hi, t in segments]}}}],
                [{"goto": {"target": other}}]])
        return self._profile_names[fragments]

    def target(self, direction: str, cls: tuple[Fragment, ...]) -> str:
        """The class chain of ``cls`` (the deny chain when empty)."""
        if not cls:
            return deny_chain(direction)
        if cls not in self._class_names:
            name = "c_" + _digest(repr([(f.rule.label, f.variant) for f in cls]))
            self._class_names[cls] = name
            self.classes[name] = cls
        return self._class_names[cls]

    # --- tables -----------------------------------------------------------------
    def run(self) -> list[Table]:
        inet = Table("inet", TABLE)
        bridge = Table("bridge", TABLE)
        for direction in (EGRESS, INGRESS):
            for version in FAMILIES:
                inet.sets[pods_map(direction, version)] = SetSpec((FAMILIES[version][1],), verdicts=True)
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

        self._counters_groups_classes_profiles(inet)
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
        profile = self.profile(direction, fragments)
        for address in endpoint.addresses:
            version, value = parse_address(address)
            inet.elements[pods_map(direction, version)][((value, value),)] = ("goto", profile)
            bridge.elements[isolated_set(direction, version)][((value, value),)] = None

    def _counters_groups_classes_profiles(self, inet: Table) -> None:
        for policy in self.policies:
            for direction in sorted(policy.policy_types):
                for i, _ in enumerate(policy.rules(direction)):
                    ref = RuleRef(policy.key, direction, i)
                    inet.counters[ref.counter] = ref.label
        for name, addresses in sorted(self.groups.items()):
            for version, (_, kind) in FAMILIES.items():
                inet.sets[f"{name}_{version}"] = SetSpec((kind,), interval=True)
                inet.elements[f"{name}_{version}"] = {(r,): None for r in addresses.family(version)}
        for name, cls in sorted(self.classes.items()):
            direction = cls[0].rule.direction
            rules = []
            for f in cls:  # the first fragment admitting the peer wins, and counts it
                allowed = [{"counter": f.rule.counter}, {"return": None}]  # on to the other direction
                if f.group is None:
                    rules.append(allowed)
                    break
                for version, (protocol, _) in FAMILIES.items():
                    rules.append([_match(_payload(protocol, _peer_field(direction)), f"@{f.group}_{version}"),
                                  *allowed])
            else:
                rules.append([{"goto": {"target": deny_chain(direction)}}])
            inet.chains[name] = Chain(rules)
        inet.chains.update(sorted(self.profiles.items()))

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
            inet.chains[_name(direction)] = Chain([
                [{"vmap": {"key": _payload(protocol, _pod_field(direction)), "data": f"@{pods_map(direction, version)}"}}]
                for version, (protocol, _) in FAMILIES.items()])
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
