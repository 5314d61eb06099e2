"""Why a flow is allowed or denied, and what each policy does, from the
model (not from the kernel's ruleset): `explain` for ``pycni policy
explain``, `status` for ``pycni policy status`` (counters come from the
kernel, read by the caller).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import netaddr

from .addresses import AddressSet, union
from .compiler import RuleRef
from .model import EGRESS, INGRESS, PROTOCOL_NUMBER, Endpoint, Inputs, Policy, Rule, World


@dataclass
class Side:
    """One direction's judgement: the egress of the source or the ingress
    of the destination."""
    direction: str
    pod: str | None = None             # namespace/name judged, None if not a pod
    isolating: list[str] = field(default_factory=list)   # policies isolating it
    allowing: list[str] = field(default_factory=list)    # rules allowing the flow
    allowed: bool = True
    reason: str = ""


@dataclass
class Explanation:
    source: str
    destination: str
    port: int
    protocol: str
    egress: Side
    ingress: Side

    @property
    def allowed(self) -> bool:
        return self.egress.allowed and self.ingress.allowed

    def to_dict(self) -> dict:
        return {"source": self.source, "destination": self.destination, "port": self.port,
                "protocol": self.protocol, "allowed": self.allowed,
                "egress": self.egress.__dict__, "ingress": self.ingress.__dict__}

    def __str__(self) -> str:
        verdict = "ALLOWED" if self.allowed else "DENIED"
        lines = [f"{self.source} -> {self.destination} {self.port}/{self.protocol}: {verdict}"]
        for side in (self.egress, self.ingress):
            lines.append(f"  {side.direction.lower()} ({side.pod or 'not a pod'}): "
                         f"{'allowed' if side.allowed else 'denied'}: {side.reason}")
        return "\n".join(lines)


def rule_peers(world: World, policy: Policy, rule: Rule) -> AddressSet:
    """The addresses a rule's from/to list admits: every address when the
    list is empty, else the union of its peers."""
    if not rule.peers:
        return AddressSet.everything()
    return union(AddressSet.of_ip_block(peer.ip_block) if peer.ip_block else
                 AddressSet.of_addresses(a for e in world.peer_endpoints(policy, peer) for a in e.addresses)
                 for peer in rule.peers)


def _endpoint(world: World, ref: str) -> tuple[Endpoint | None, str | None]:
    """``namespace/name`` of a pod, or an address (a pod's, or any other)."""
    try:
        address = str(netaddr.IPAddress(ref))
    except (netaddr.AddrFormatError, ValueError):
        for e in world.inputs.endpoints:
            if e.key == ref:
                return e, (e.addresses[0] if e.addresses else None)
        raise ValueError(f"no pod {ref!r} (give namespace/name or an address)") from None
    for e in world.inputs.endpoints:
        if address in e.addresses:
            return e, address
    return None, address


def _judge(world: World, direction: str, pod: Endpoint, peer_address: str | None,
           destination: Endpoint | None, port: int, protocol: str) -> Side:
    side = Side(direction, pod.key)
    policies = world.policies_for(pod, direction)
    side.isolating = [p.key for p in policies]
    if not policies:
        side.reason = f"no policy selects {pod.key} for {direction.lower()}"
        return side
    number = PROTOCOL_NUMBER[protocol]
    for policy in sorted(policies, key=lambda p: p.key):
        for i, rule in enumerate(policy.rules(direction)):
            peer_ok = peer_address is not None and peer_address in rule_peers(world, policy, rule)
            ports_ok = not rule.ports or any(
                r is not None and r[0] == number and r[1] <= port <= r[2]
                for r in (p.resolve(destination) for p in rule.ports))
            if peer_ok and ports_ok:
                side.allowing.append(RuleRef(policy.key, direction, i).label)
    side.allowed = bool(side.allowing)
    side.reason = (f"allowed by {', '.join(side.allowing)}" if side.allowed else
                   f"isolated by {', '.join(side.isolating)} and no rule allows it")
    return side


def _side(world: World, direction: str, pod: Endpoint | None, peer: Endpoint | None, peer_address: str | None,
          destination: Endpoint | None, nodes: Mapping[str, list[str]], port: int, protocol: str) -> Side:
    """Judge ``pod``'s side of the flow (the source's egress, the
    destination's ingress) with ``peer`` at the other end."""
    if pod is None:
        end = "source" if direction == EGRESS else "destination"
        return Side(direction, reason=f"the {end} is not a pod: no {direction.lower()} policy applies")
    if peer is None and peer_address in nodes.get(pod.node, ()):
        way = "to" if direction == EGRESS else "from"
        return Side(direction, pod.key, reason=f"traffic {way} the pod's own node is always allowed")
    return _judge(world, direction, pod, peer_address, destination, port, protocol)


def explain(inputs: Inputs, source: str, destination: str, port: int, protocol: str = "TCP",
            node_addresses: Mapping[str, list[str]] | None = None) -> Explanation:
    """Judge one new connection.  ``source``/``destination``: namespace/name
    or an address.  ``node_addresses``: node name -> its addresses, for the
    rule that a pod's own node may always talk to it and it to its node."""
    if protocol not in PROTOCOL_NUMBER:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOL_NUMBER)}")
    world = World(inputs)
    nodes = node_addresses or {}
    src, src_address = _endpoint(world, source)
    dst, dst_address = _endpoint(world, destination)
    egress = _side(world, EGRESS, src, dst, dst_address, dst, nodes, port, protocol)
    ingress = _side(world, INGRESS, dst, src, src_address, dst, nodes, port, protocol)
    return Explanation(source, destination, port, protocol, egress, ingress)


@dataclass
class PolicyStatus:
    policy: str
    policy_types: list[str]
    selects: list[str]
    rules: list[dict]          # label, packets, bytes
    packets: int = 0
    bytes: int = 0


def status(inputs: Inputs, counters: Mapping[str, tuple[int, int]]) -> list[PolicyStatus]:
    """Per policy: the pods it selects and what its rules let through
    (``counters``: Kernel.counters("inet", TABLE); a flow allowed by several
    rules counts for the first, in policy name order)."""
    world = World(inputs)
    out = []
    for policy in sorted(inputs.policies, key=lambda p: p.key):
        rules = []
        for direction in sorted(policy.policy_types):
            for i, _ in enumerate(policy.rules(direction)):
                ref = RuleRef(policy.key, direction, i)
                packets, nbytes = counters.get(ref.counter, (0, 0))
                rules.append({"rule": ref.label, "packets": packets, "bytes": nbytes})
        out.append(PolicyStatus(policy.key, sorted(policy.policy_types),
                                sorted(e.key for e in world.selected(policy)), rules,
                                sum(r["packets"] for r in rules), sum(r["bytes"] for r in rules)))
    return out

