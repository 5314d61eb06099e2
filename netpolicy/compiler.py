"""Policies, namespaces and endpoints -> our nftables tables (see README.md
for the design and why).

Per direction, one verdict-map lookup keyed by the local pod's address
sends a packet to the pod's *profile* chain, where one lookup of protocol
and port picks the *class*: the ordered rule fragments that allow that pod
that port.  The class chain looks the peer address up in each fragment's
*peer group* (a named set of the addresses a rule's from/to admits, shared
by every rule with the same peers) and jumps to the first matching rule's
counter, then returns (on to the other direction); no match is a drop.
Pods with the same rules share profiles and classes, rules with the same
peers share groups, so the ruleset grows with what differs, and a pod is
one element per address in its direction's map (plus its address in the
groups it is a peer of).  Per packet: two lookups plus one set lookup per
rule that applies to that pod and port, whatever the number of other
policies and pods.

This module holds the pieces both compilers use (what a rule allows a pod,
what a peer group holds, how profiles, classes and groups become chains and
sets) and `compile_tables`, the full compile from scratch: the reference
the incremental compiler (incremental.py), which the agent runs, is held
to.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from typing import Callable, Iterable, Mapping, Protocol

from .addresses import AddressSet, parse_address, union
from .model import (ALL_PORTS, EGRESS, INGRESS, NAMESPACE_NAME_LABEL, PROTOCOL_NUMBER, Endpoint, IPBlock,
                    Inputs, LabelSelector, Policy, Rule, World)
from .ruleset import Chain, SetSpec, Table

TABLE = "pycni_netpolicy"
# Set on every packet our inet forward chain sees; the bridge table's guard
# drops bridged frames of isolated pods that arrive without it (they
# skipped the inet hooks: br_netfilter off).  Other software owns other
# bits (kube-proxy 0x4000/0x8000, netavark 0x2000, Cilium 0x0f00).
JUDGED_MARK = 0x00100000
FAMILIES = {4: ("ip", "ipv4_addr"), 6: ("ip6", "ipv6_addr")}
DIRECTIONS = (EGRESS, INGRESS)
# ICMPv6 neighbour discovery must pass for isolated pods or IPv6 stops working.
ND_TYPES = ["nd-router-solicit", "nd-router-advert", "nd-neighbor-solicit",
            "nd-neighbor-advert", "nd-redirect"]
FORWARD_HOOK = {"type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}
# After br_netfilter's own forward hook, which runs the inet hooks for bridged frames.
GUARD_HOOK = {"type": "filter", "hook": "forward", "prio": 100, "policy": "accept"}


# Part of every profile's and class's name: bumped when the rules we make
# of the same fragments change, so that an agent upgrade replaces chains a
# previous version named alike.
CHAIN_FORMAT = 3


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


def rule_refs(policy: Policy):
    """(RuleRef, Rule) of every rule that applies (its direction is one of
    the policy's types)."""
    for direction in sorted(policy.policy_types):
        for i, rule in enumerate(policy.rules(direction)):
            yield RuleRef(policy.key, direction, i), rule


def policy_counters(policy: Policy) -> dict[str, str]:
    """Counter name -> comment, one per rule that applies."""
    return {ref.counter: ref.label for ref, _ in rule_refs(policy)}


# --- peer groups ------------------------------------------------------------------
@dataclass(frozen=True)
class SelectorPeer:
    """A from/to entry with selectors, as what it denotes whichever policy
    holds it: pods matching ``pod_selector`` in ``namespace`` (a podSelector
    alone: the policy's own namespace) or in every namespace
    ``namespace_selector`` matches."""
    namespace: str | None
    namespace_selector: LabelSelector | None
    pod_selector: LabelSelector

    def matches(self, endpoint: Endpoint, namespace_labels: Callable[[str], Mapping[str, str]]) -> bool:
        if self.namespace is not None:
            if endpoint.namespace != self.namespace:
                return False
        elif not self.namespace_selector.matches(namespace_labels(endpoint.namespace)):
            return False
        return self.pod_selector.matches(endpoint.labels)


@dataclass(frozen=True)
class GroupDef:
    """A peer group: what a rule's from/to admits.  Pods matching one of
    ``selectors``, addresses in ``blocks`` (ipBlock minus except); with a
    ``variant`` (port name, protocol, number: an egress rule's named port),
    only the addresses of those pods, and pods in those blocks, whose port
    of that name is that number (no selectors and no blocks then means
    every peer).  Rules with the same peers share one group: it is named by
    what it means, not by the rule."""
    selectors: tuple[SelectorPeer, ...] = ()
    blocks: tuple[IPBlock, ...] = ()
    variant: tuple = ()

    @cached_property
    def name(self) -> str:
        # a repr of tuples, strings and frozen dataclasses: the same in every process
        return "g_" + _digest(repr((self.selectors, self.blocks, self.variant)))

    @property
    def interval(self) -> bool:
        """Address ranges (ipBlocks) need an interval set; pod addresses
        alone make a hash set, which is cheaper to update (libnftables
        fetches every interval set's elements before changing any set)."""
        return bool(self.blocks) and not self.variant

    @cached_property
    def static(self) -> AddressSet:
        return union(AddressSet.of_ip_block(b) for b in self.blocks)

    def with_variant(self, variant: tuple) -> GroupDef:
        return GroupDef(self.selectors, self.blocks, variant)

    def members(self, endpoint: Endpoint, namespace_labels: Callable[[str], Mapping[str, str]]) -> tuple[str, ...]:
        """The addresses ``endpoint`` puts in this group (the static blocks
        aside)."""
        if self.variant:
            name, protocol, number = self.variant
            if endpoint.named_port(name, protocol) != number:
                return ()
            if not self.selectors and not self.blocks:
                return endpoint.addresses
        if any(s.matches(endpoint, namespace_labels) for s in self.selectors):
            return endpoint.addresses
        if self.variant and self.blocks:
            return tuple(a for a in endpoint.addresses if a in self.static)
        return ()

    def set_of(self, version: int, members: Iterable[str]) -> tuple[str, SetSpec, dict]:
        """The set of this group for one IP version, holding that version's
        ``members`` (and the blocks): name, spec, elements."""
        values = set()
        for address in members:
            v, value = parse_address(address)
            if v == version:
                values.add(value)
        if self.interval:
            elements = {(r,): None for r in (self.static | AddressSet.of_values(version, values)).family(version)}
        else:
            elements = {((v, v),): None for v in sorted(values)}
        return group_set(self.name, version), SetSpec((FAMILIES[version][1],), interval=self.interval), elements


def group_set(group: str, version: int) -> str:
    return f"{group}_{version}"


@lru_cache(maxsize=None)
def group_of(namespace: str, rule: Rule) -> GroupDef | None:
    """The peer group of a rule of a policy in ``namespace``; None when its
    from/to is empty (every address)."""
    if not rule.peers:
        return None
    selectors = {SelectorPeer(namespace if p.namespace_selector is None else None, p.namespace_selector,
                              p.pod_selector or LabelSelector()) for p in rule.peers if p.ip_block is None}
    blocks = {p.ip_block for p in rule.peers if p.ip_block is not None}
    return GroupDef(tuple(sorted(selectors, key=repr)), tuple(sorted(blocks, key=repr)))


def named_port_variants(policy: Policy):
    """(RuleRef, GroupDef or None, port name, protocol) of every egress rule
    naming a port: such a rule admits, per port number the name stands for,
    the peers having that port."""
    for ref, rule in rule_refs(policy):
        if ref.direction == EGRESS:
            for p in rule.ports:
                if isinstance(p.port, str):
                    yield ref, group_of(policy.namespace, rule), p.port, p.protocol


def variant_group(base: GroupDef | None, port: str, protocol: str, number: int) -> GroupDef:
    return (base or GroupDef()).with_variant((port, protocol, number))


# --- what a rule allows a pod -------------------------------------------------------
@dataclass(frozen=True)
class Fragment:
    """What one rule allows a pod in one direction: ``ports`` as (protocol
    number, lo, hi) or None for every protocol and port, from the peers in
    ``group`` (a group name, None: from everywhere).  An egress rule with a
    named port gives one fragment per port number the name resolves to
    among the destinations (``variant``)."""
    rule: RuleRef
    variant: tuple
    ports: tuple[tuple[int, int, int], ...] | None
    group: str | None
    definition: GroupDef | None = field(default=None, compare=False, repr=False)


class Resolver(Protocol):
    """What fragments depend on beyond the rule and the pod."""

    def port_numbers(self, name: str, protocol: str) -> Iterable[int]:
        """The numbers (sorted) endpoints give a port of that name and protocol."""

    def nonempty(self, group: GroupDef) -> bool:
        """Whether some endpoint is in a (variant) group."""


def rule_fragments(ref: RuleRef, policy: Policy, rule: Rule, endpoint: Endpoint,
                   resolver: Resolver) -> list[Fragment]:
    group = group_of(policy.namespace, rule)
    name = group.name if group else None
    if not rule.ports:
        return [Fragment(ref, (), None, name, group)]
    if ref.direction == INGRESS:  # named ports are the selected pod's own
        ports = tuple(r for r in (p.resolve(endpoint) for p in rule.ports) if r)
        return [Fragment(ref, (), ports, name, group)] if ports else []
    numeric = tuple(p.resolve(None) for p in rule.ports if not isinstance(p.port, str))
    out = [Fragment(ref, (), numeric, name, group)] if numeric else []
    for p in rule.ports:  # egress: named ports are each destination's
        if not isinstance(p.port, str):
            continue
        for number in resolver.port_numbers(p.port, p.protocol):
            variant = variant_group(group, p.port, p.protocol, number)
            if resolver.nonempty(variant):
                out.append(Fragment(ref, variant.variant, ((PROTOCOL_NUMBER[p.protocol], number, number),),
                                    variant.name, variant))
    return out


def endpoint_fragments(endpoint: Endpoint, direction: str, policies: Iterable[Policy],
                       resolver: Resolver) -> tuple[Fragment, ...]:
    """Everything ``policies`` (those isolating ``endpoint`` in
    ``direction``, in key order) allow it."""
    return tuple(f for policy in policies for i, rule in enumerate(policy.rules(direction))
                 for f in rule_fragments(RuleRef(policy.key, direction, i), policy, rule, endpoint, resolver))


# --- nft JSON expressions ---------------------------------------------------------
def _payload(protocol: str, field_name: str) -> dict:
    return {"payload": {"protocol": protocol, "field": field_name}}


def _match(left, right, op: str = "==") -> dict:
    return {"match": {"op": op, "left": left, "right": right}}


_L4PROTO = {"meta": {"key": "l4proto"}}
_PROTOCOL_KEYWORDS = {number: name.lower() for name, number in PROTOCOL_NUMBER.items()}


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


# --- profiles and classes ----------------------------------------------------------
# Both are per IP version: a pod's IPv4 address is judged by IPv4 chains
# looking peers up in IPv4 sets only, so a single-stack cluster loads half
# the rules and sets.
def class_name(version: int, cls: tuple[Fragment, ...]) -> str:
    """A class is named by its fragments (rules and peer groups), so pods
    and profiles share it and a name always stands for the same chain."""
    return "c_" + _digest(repr((CHAIN_FORMAT, version, [(f.rule.label, f.variant, f.group) for f in cls])))


def class_chain(version: int, cls: tuple[Fragment, ...]) -> tuple[Chain, tuple[str, ...]]:
    """The chain of a class and the groups it looks peers up in: the first
    fragment admitting the peer wins, and counts it; none is a drop."""
    direction = cls[0].rule.direction
    protocol = FAMILIES[version][0]
    rules, groups = [], []
    for f in cls:
        allowed = [{"counter": f.rule.counter}, {"return": None}]  # on to the other direction
        if f.group is None:
            rules.append(allowed)
            break
        groups.append(f.group)
        rules.append([_match(_payload(protocol, _peer_field(direction)), f"@{group_set(f.group, version)}"),
                      *allowed])
    else:
        rules.append([{"goto": {"target": deny_chain(direction)}}])
    return Chain(rules, by_content=True), tuple(dict.fromkeys(groups))


def profile_chain(direction: str, version: int, fragments: tuple[Fragment, ...],
                  target: Callable[[str, tuple[Fragment, ...]], str]) -> tuple[str, Chain]:
    """The chain judging pods' addresses of one IP version with these
    fragments, and its name: per protocol (TCP, UDP, SCTP), one lookup of
    the port -> class in a map of single ports, and a rule per port range,
    then every other packet -> the class of the fragments without ports
    (``target(direction, cls)`` names a class chain of that version, or the
    deny chain when ``cls`` is empty).  Ports whose class is that last one
    are left out: a miss falls through to it.  Pods with the same fragments
    share the profile.

    Why no map of ranges (or of protocol and port): libnftables fetches
    the elements of every interval set in the ruleset, anonymous ones
    included, before any command that changes elements, whoever runs it
    (the bridge plugin's ADD too): 24 ms per command with 1,200 such maps.
    A map of single ports is a hash and is not fetched; it also loads in a
    quarter of the time of a concatenated map of ranges."""
    other = target(direction, tuple(f for f in fragments if f.ports is None))
    segments: list[tuple[int, int, int, str]] = []
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
            chain = target(direction, cls)
            if chain == other:
                continue
            last = segments[-1] if segments else None
            if last and last[0] == protocol and last[3] == chain and last[2] == lo - 1:
                segments[-1] = (protocol, last[1], end - 1, chain)
            else:
                segments.append((protocol, lo, end - 1, chain))
    name = "p_" + _digest(repr((CHAIN_FORMAT, version, direction, segments, other)))
    rules = []
    for protocol, keyword in _PROTOCOL_KEYWORDS.items():
        ours = [(lo, hi, t) for proto, lo, hi, t in segments if proto == protocol]
        single = [[lo, {"goto": {"target": t}}] for lo, hi, t in ours if lo == hi]
        if single:
            rules.append([_match(_L4PROTO, keyword), {"vmap": {"key": _payload("th", "dport"), "data": {"set": single}}}])
        for lo, hi, t in ours:
            if (lo, hi) == ALL_PORTS:
                rules.append([_match(_L4PROTO, keyword), {"goto": {"target": t}}])
            elif lo != hi:
                rules.append([_match(_L4PROTO, keyword), _match(_payload("th", "dport"), {"range": [lo, hi]}),
                              {"goto": {"target": t}}])
    rules.append([{"goto": {"target": other}}])
    return name, Chain(rules, by_content=True)


def pod_elements(address: str, profile: str) -> tuple[int, tuple, tuple]:
    """(IP version, map key, map value) of one pod address's profile."""
    version, value = parse_address(address)
    return version, ((value, value),), ("goto", profile)


# --- the fixed part of the tables ------------------------------------------------------
def base_tables() -> tuple[Table, Table]:
    """Our two tables with what every ruleset has: the hooks, the per-pod
    maps and sets (empty), the deny chains and the guard."""
    inet = Table("inet", TABLE)
    bridge = Table("bridge", TABLE)
    for direction in DIRECTIONS:
        for version in FAMILIES:
            inet.sets[pods_map(direction, version)] = SetSpec((FAMILIES[version][1],), verdicts=True)
            inet.elements[pods_map(direction, version)] = {}
            bridge.sets[isolated_set(direction, version)] = SetSpec((FAMILIES[version][1],))
            bridge.elements[isolated_set(direction, version)] = {}

    mark = {"meta": {"key": "mark"}}
    inet.chains["forward"] = Chain([
        [{"mangle": {"key": mark, "value": {"|": [mark, JUDGED_MARK]}}}],
        [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), {"accept": None}],
        [_match(_payload("icmpv6", "type"), {"set": ND_TYPES}), {"accept": None}],
        [{"jump": {"target": _name(EGRESS)}}],
        [{"jump": {"target": _name(INGRESS)}}],
    ], FORWARD_HOOK)
    for direction in DIRECTIONS:
        inet.chains[_name(direction)] = Chain([
            [{"vmap": {"key": _payload(protocol, _pod_field(direction)), "data": f"@{pods_map(direction, version)}"}}]
            for version, (protocol, _) in FAMILIES.items()])
        counter = f"denied_{_name(direction)}"
        inet.counters[counter] = f"{_name(direction)} denied: no rule allows it"
        inet.chains[deny_chain(direction)] = Chain([[{"counter": counter}, {"drop": None}]])

    bridge.counters["unjudged"] = "bridged frames of isolated pods that skipped the inet hooks"
    guard = [[_match({"&": [mark, JUDGED_MARK]}, JUDGED_MARK), {"accept": None}]]
    for direction in DIRECTIONS:
        for version, (protocol, _) in FAMILIES.items():
            guard.append([_match(_payload(protocol, _pod_field(direction)), f"@{isolated_set(direction, version)}"),
                          {"counter": "unjudged"}, {"drop": None}])
    bridge.chains["guard"] = Chain(guard, GUARD_HOOK)
    return inet, bridge


def namespace_labeller(declared: Mapping[str, Mapping[str, str]]) -> Callable[[str], Mapping[str, str]]:
    """Labels of a namespace: a declared one's own (with its name label), an
    undeclared one only its name label."""
    def labels(name: str) -> Mapping[str, str]:
        found = declared.get(name)
        return found if found is not None else {NAMESPACE_NAME_LABEL: name}
    return labels


# --- the full compile -----------------------------------------------------------------
class _Reference:
    """Everything computed from scratch, straightforwardly: the reference."""

    def __init__(self, inputs: Inputs, node: str):
        self.world = World(inputs)
        self.node = node
        self.labels = namespace_labeller({n.name: n.effective_labels() for n in inputs.namespaces})
        self.endpoints = sorted(inputs.endpoints, key=lambda e: e.key)
        self.policies = sorted(inputs.policies, key=lambda p: p.key)
        self._numbers: dict = {}
        self._members: dict[str, list[str]] = {}
        self.classes: dict[str, tuple[int, tuple[Fragment, ...]]] = {}
        self.profiles: dict[str, Chain] = {}

    # the Resolver
    def port_numbers(self, name: str, protocol: str) -> list[int]:
        if (name, protocol) not in self._numbers:
            self._numbers[(name, protocol)] = sorted({n for e in self.endpoints
                                                      if (n := e.named_port(name, protocol))})
        return self._numbers[(name, protocol)]

    def members(self, group: GroupDef) -> list[str]:
        if group.name not in self._members:
            self._members[group.name] = [a for e in self.endpoints for a in group.members(e, self.labels)]
        return self._members[group.name]

    def nonempty(self, group: GroupDef) -> bool:
        return bool(self.members(group))

    def run(self) -> list[Table]:
        inet, bridge = base_tables()
        for policy in self.policies:
            inet.counters.update(policy_counters(policy))
        for endpoint in self.endpoints:  # an address two pods claim goes to the last in key order
            if endpoint.node != self.node:
                continue
            for direction in DIRECTIONS:
                policies = self.world.policies_for(endpoint, direction)
                if not policies:
                    continue
                fragments = endpoint_fragments(endpoint, direction, sorted(policies, key=lambda p: p.key), self)
                for address in endpoint.addresses:
                    version = parse_address(address)[0]
                    profile = self.profile(direction, version, fragments)
                    _, key, value = pod_elements(address, profile)
                    inet.elements[pods_map(direction, version)][key] = value
                    bridge.elements[isolated_set(direction, version)][key] = None
        groups = {}
        for name, (version, cls) in sorted(self.classes.items()):
            inet.chains[name], names = class_chain(version, cls)
            for group in names:
                groups[(group, version)] = next(f.definition for f in cls if f.group == group)
        for (_, version), group in sorted(groups.items()):
            set_name, spec, elements = group.set_of(version, self.members(group))
            inet.sets[set_name] = spec
            inet.elements[set_name] = elements
        inet.chains.update(sorted(self.profiles.items()))
        return [inet, bridge]

    def profile(self, direction: str, version: int, fragments: tuple[Fragment, ...]) -> str:
        def target(direction: str, cls: tuple[Fragment, ...]) -> str:
            if not cls:
                return deny_chain(direction)
            name = class_name(version, cls)
            self.classes[name] = (version, cls)
            return name

        name, chain = profile_chain(direction, version, fragments, target)
        self.profiles[name] = chain
        return name


def compile_tables(inputs: Inputs, node: str) -> list[Table]:
    """Our tables for ``node`` (endpoints whose ``node`` equals it are
    local); none at all when there is no policy."""
    if not inputs.policies:
        return []
    return _Reference(inputs, node).run()
