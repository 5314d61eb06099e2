"""Our nftables tables as plain data, the same shape whether compiled or
read back from the kernel, and the transaction that turns one into the
other.

Elements are kept canonical so a compiled table compares with the kernel's
listing: a key is a tuple of (lo, hi) integer pairs, one per concatenated
field (addresses as integers, protocols as numbers), whatever form nft
prints them in (single value, range or prefix; "tcp" or 6).  A value is
("drop",) or ("goto", chain) for verdict maps, None for plain sets.

Rules cannot be compared that way (the kernel prints them back in its own
normal form), so every rule of a fixed chain carries a comment with a
digest of the expression we generated: a chain is unchanged when its
digests are.  Chains named by a digest of what they hold (the compiler's
profiles and classes: ``by_content``) carry none (a comment per rule costs
libnftables a fifth of the time of loading thousands of them): one of
that name in the kernel is that chain, checked only by its rule count.

`transaction(live, desired)` is the reconcile step: element deletes and
adds for sets that stay, a chain rewritten (flush and refill) only when its
rules changed, objects added or deleted only when the structure changed.
An incompatible object (a set whose type changed, a base chain on another
hook) rebuilds the table, still inside the one atomic transaction.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import netaddr

from .addresses import parse_address

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58}
_ADDRESS_TYPES = {"ipv4_addr": 4, "ipv6_addr": 6}

Key = tuple  # of (lo, hi) per field
Value = tuple | None


@dataclass(frozen=True)
class SetSpec:
    """``key``: nft types of the concatenated fields; ``verdicts``: a
    verdict map (else a plain set); ``interval``: ranges allowed."""
    key: tuple[str, ...]
    verdicts: bool = False
    interval: bool = False


@dataclass
class Chain:
    rules: list[list[dict]] = field(default_factory=list)
    hook: dict | None = None  # base chains: type, hook, prio, policy
    by_content: bool = False  # its name is a digest of its rules

    def digests(self) -> list[str]:
        """What each rule's comment holds ("" for none)."""
        if self._digests is None:  # chains are not changed once built
            self._digests = [""] * len(self.rules) if self.by_content else [rule_digest(r) for r in self.rules]
        return self._digests

    _digests: list[str] | None = field(default=None, repr=False, compare=False)


@dataclass
class Table:
    family: str
    name: str
    counters: dict[str, str] = field(default_factory=dict)  # name -> comment
    sets: dict[str, SetSpec] = field(default_factory=dict)
    elements: dict[str, dict[Key, Value]] = field(default_factory=dict)
    chains: dict[str, Chain] = field(default_factory=dict)
    # read back from the kernel: each chain's rule digests
    live_digests: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ref(self) -> dict:
        return {"family": self.family, "table": self.name}

    def as_applied(self) -> Table:
        """This (compiled) table as the kernel holds it once applied: what
        the next transaction is computed against, without listing it back."""
        return dataclasses.replace(self, live_digests={n: c.digests() for n, c in self.chains.items()})


def rule_digest(expr: list[dict]) -> str:
    return hashlib.sha256(json.dumps(expr, sort_keys=True).encode()).hexdigest()[:16]


# --- encoding: canonical -> nft JSON --------------------------------------------
def _encode_field(kind: str, lo: int, hi: int):
    if kind in _ADDRESS_TYPES:
        version = _ADDRESS_TYPES[kind]
        lo_text, hi_text = str(netaddr.IPAddress(lo, version)), str(netaddr.IPAddress(hi, version))
        return lo_text if lo == hi else {"range": [lo_text, hi_text]}
    return lo if lo == hi else {"range": [lo, hi]}


def encode_key(spec: SetSpec, key: Key):
    fields = [_encode_field(kind, lo, hi) for kind, (lo, hi) in zip(spec.key, key)]
    return fields[0] if len(fields) == 1 else {"concat": fields}


def encode_value(value: Value) -> dict:
    if value[0] in ("goto", "jump"):
        return {value[0]: {"target": value[1]}}
    return {value[0]: None}


def encode_element(spec: SetSpec, key: Key, value: Value):
    return [encode_key(spec, key), encode_value(value)] if spec.verdicts else encode_key(spec, key)


# --- decoding: kernel JSON -> canonical -----------------------------------------
def _decode_scalar(kind: str, item) -> int:
    if kind in _ADDRESS_TYPES:
        return parse_address(item)[1]
    if isinstance(item, str):
        return PROTOCOL_NUMBERS[item]
    return int(item)


def _decode_field(kind: str, item) -> tuple[int, int]:
    if isinstance(item, dict) and "range" in item:
        lo, hi = item["range"]
        return _decode_scalar(kind, lo), _decode_scalar(kind, hi)
    if isinstance(item, dict) and "prefix" in item:
        network = netaddr.IPNetwork(f"{item['prefix']['addr']}/{item['prefix']['len']}")
        return network.first, network.last
    value = _decode_scalar(kind, item)
    return value, value


def decode_key(spec: SetSpec, key) -> Key:
    fields = key["concat"] if isinstance(key, dict) and "concat" in key else [key]
    return tuple(_decode_field(kind, f) for kind, f in zip(spec.key, fields))


def decode_element(spec: SetSpec, item) -> tuple[Key, Value]:
    key, value = (item[0], item[1]) if spec.verdicts else (item, None)
    canonical_key = decode_key(spec, key)
    if value is not None:
        (verdict, arg), = value.items()
        value = (verdict, arg["target"]) if isinstance(arg, dict) else (verdict,)
    return canonical_key, value


def decode_table(family: str, name: str, listing: list[dict]) -> Table | None:
    """A Table from ``nft -j list table`` output items; None if absent."""
    table = None
    for item in listing:
        if "table" in item:
            table = Table(family, name)
    if table is None:
        return None
    for item in listing:
        if "counter" in item:
            table.counters[item["counter"]["name"]] = item["counter"].get("comment", "")
        for kind in ("set", "map"):
            if kind in item:
                s = item[kind]
                key = tuple(s["type"]) if isinstance(s["type"], list) else (s["type"],)
                spec = SetSpec(key, kind == "map" and s.get("map") == "verdict", "interval" in s.get("flags", []))
                table.sets[s["name"]] = spec
                table.elements[s["name"]] = dict(decode_element(spec, e) for e in s.get("elem", []))
        if "chain" in item:
            c = item["chain"]
            hook = ({k: c[k] for k in ("type", "hook", "prio", "policy")} if "hook" in c else None)
            table.chains[c["name"]] = Chain([], hook)
            table.live_digests[c["name"]] = []
        if "rule" in item:
            table.live_digests[item["rule"]["chain"]].append(item["rule"].get("comment", ""))
    return table


# --- the transaction ------------------------------------------------------------
def _set_command(table: Table, name: str, spec: SetSpec) -> dict:
    body = {**table.ref, "name": name, "type": list(spec.key) if len(spec.key) > 1 else spec.key[0]}
    if spec.interval:
        body["flags"] = ["interval"]
    if spec.verdicts:
        body["map"] = "verdict"
    return {"map" if spec.verdicts else "set": body}


def _chain_body(table: Table, name: str, chain: Chain) -> dict:
    return {**table.ref, "name": name, **(chain.hook or {})}


def _rule_commands(table: Table, name: str, chain: Chain) -> list[dict]:
    return [{"add": {"rule": {**table.ref, "chain": name, "expr": expr, **({"comment": digest} if digest else {})}}}
            for expr, digest in zip(chain.rules, chain.digests())]


def _element_command(op: str, table: Table, set_name: str, spec: SetSpec, items) -> dict:
    # a delete names keys only
    elem = ([encode_element(spec, k, v) for k, v in items] if op == "add"
            else [encode_key(spec, k) for k, _ in items])
    return {op: {"element": {**table.ref, "name": set_name, "elem": elem}}}


def build(desired: Table) -> list[dict]:
    """Commands creating ``desired`` from nothing (chains before sets: nft
    1.0.6 sends an interval map's elements with the map's declaration, and a
    verdict naming a chain declared later in the batch fails)."""
    cmds = [{"add": {"table": {"family": desired.family, "name": desired.name}}}]
    cmds += [{"add": {"counter": {**desired.ref, "name": n, "comment": c}}} for n, c in desired.counters.items()]
    cmds += [{"add": {"chain": _chain_body(desired, n, c)}} for n, c in desired.chains.items()]
    cmds += [{"add": _set_command(desired, n, s)} for n, s in desired.sets.items()]
    for name, chain in desired.chains.items():
        cmds += _rule_commands(desired, name, chain)
    for name, elements in desired.elements.items():
        if elements:
            cmds.append(_element_command("add", desired, name, desired.sets[name], elements.items()))
    return cmds


def _compatible(live: Table, desired: Table) -> bool:
    return (all(live.sets[n] == s for n, s in desired.sets.items() if n in live.sets)
            and all(live.chains[n].hook == c.hook for n, c in desired.chains.items() if n in live.chains))


def transaction(live: Table | None, desired: Table | None) -> list[dict]:
    """The minimal commands turning ``live`` into ``desired`` (either may be
    None: table absent)."""
    if desired is None:
        return [] if live is None else [{"delete": {"table": {"family": live.family, "name": live.name}}}]
    if live is None:
        return build(desired)
    if not _compatible(live, desired):
        return [{"delete": {"table": {"family": live.family, "name": live.name}}}] + build(desired)
    ref = desired.ref
    new_chains = [n for n in desired.chains if n not in live.chains]
    new_sets = [n for n in desired.sets if n not in live.sets]
    old_chains = [n for n in live.chains if n not in desired.chains]
    old_sets = [n for n in live.sets if n not in desired.sets]

    cmds = [{"add": {"counter": {**ref, "name": n, "comment": c}}}
            for n, c in desired.counters.items() if n not in live.counters]
    cmds += [{"add": {"chain": _chain_body(desired, n, desired.chains[n])}} for n in new_chains]
    cmds += [{"add": _set_command(desired, n, desired.sets[n])} for n in new_sets]

    adds = {}
    for name, spec in desired.sets.items():
        want, have = desired.elements.get(name, {}), live.elements.get(name, {})
        gone = [(k, v) for k, v in have.items() if k not in want or want[k] != v]
        if gone:
            cmds.append(_element_command("delete", desired, name, spec, gone))
        adds[name] = [(k, v) for k, v in want.items() if k not in have or have[k] != v]

    for name, chain in desired.chains.items():
        if name in new_chains:
            cmds += _rule_commands(desired, name, chain)
        elif live.live_digests.get(name) != chain.digests():
            cmds.append({"flush": {"chain": {**ref, "name": name}}})
            cmds += _rule_commands(desired, name, chain)

    for name, items in adds.items():
        if items:
            cmds.append(_element_command("add", desired, name, desired.sets[name], items))

    # What goes: chains emptied first (their rules hold references to sets,
    # chains and counters), then sets (their elements reference chains),
    # then the chains and counters themselves.
    cmds += [{"flush": {"chain": {**ref, "name": n}}} for n in old_chains]
    cmds += [{"delete": {"map" if live.sets[n].verdicts else "set": {**ref, "name": n}}} for n in old_sets]
    cmds += [{"delete": {"chain": {**ref, "name": n}}} for n in old_chains]
    cmds += [{"delete": {"counter": {**ref, "name": n}}} for n in live.counters if n not in desired.counters]
    return cmds
