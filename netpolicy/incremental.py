"""The compiler the agent runs: the tables of compiler.py, kept up to date
one change at a time, so registering a pod costs what that pod touches.

It keeps, besides the inputs:

- indexes: policies by namespace and pod selector (which policies select
  a pod), peer groups by the selectors of their peers (which groups a pod
  joins, selectors.py), pods by named port number;
- every peer group some rule names (and, for egress rules with a named
  port, one per number the name stands for), with its members counted per
  address, and for each endpoint the groups it is in;
- per local isolated pod and direction, its profile; profiles, classes
  and groups with reference counts (a group's sets exist while a class
  looks peers up in them).

A change marks what it affects: the endpoint itself, the pods a changed
policy selects, and the pods whose egress named ports now resolve
differently (a variant group turning empty or not).  `commit()` computes
those pods' profiles once, drops what nothing references, and returns the
difference as partial tables (only what changed, before and after) for
`ruleset.transaction`.  `compiler.compile_tables` of the same inputs is
the reference: the tests hold every sequence of changes to it.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .addresses import parse_address
from .compiler import (DIRECTIONS, Fragment, GroupDef, RuleRef, class_chain, class_name, deny_chain,
                       group_of, group_set, isolated_set, named_port_variants, namespace_labeller, pod_elements,
                       pods_map, policy_counters, profile_chain, rule_fragments, rule_refs, variant_group)
from .journal import ABSENT, Delta, JournalledTables
from .model import Endpoint, Inputs, Namespace, Policy
from .ruleset import Chain, Table
from .selectors import PeerIndex, SelectorIndex


@dataclass
class _Group:
    definition: GroupDef
    wanted: set[RuleRef] = field(default_factory=set)     # the rules naming it
    members: dict[str, int] = field(default_factory=dict)  # address -> endpoints contributing it
    pods: set[str] = field(default_factory=set)            # the endpoints in it
    refs: dict[int, int] = field(default_factory=dict)     # IP version -> classes looking peers up in it
    live: set[int] = field(default_factory=set)            # IP versions whose set is in the table


@dataclass
class _Profile:
    chain: Chain
    version: int
    classes: dict[str, tuple[Fragment, ...]]
    keys: set = field(default_factory=set)   # (direction, version, fragments) naming it (the cache's keys)
    refs: int = 0                            # pod addresses judged by it
    live: bool = False                       # its chain is in the table, its classes referenced


@dataclass
class _Class:
    chain: Chain
    groups: tuple[str, ...]
    version: int
    refs: int = 0                            # profiles sending packets to it
    live: bool = False


class IncrementalCompiler:
    def __init__(self, node: str):
        self.node = node
        self.policies: dict[str, Policy] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.endpoints: dict[str, Endpoint] = {}
        self._declared_labels: dict[str, dict] = {}
        self.namespace_labels = namespace_labeller(self._declared_labels)
        self._in_namespace: dict[str, dict[str, Endpoint]] = {}
        self._labelled: dict[tuple[str, str, str], set[str]] = {}   # (namespace, key, value) -> pods
        self._policy_index: dict[str, SelectorIndex] = {}
        self._peer_index = PeerIndex(self.namespace_labels)
        self._named: dict[tuple[str, str], dict[int, set[str]]] = {}      # (name, protocol) -> number -> pods
        self._variant_uses: dict[tuple[str, str], dict[RuleRef, GroupDef | None]] = {}
        self._variant_groups: dict[tuple[str, str, int], set[str]] = {}   # (name, protocol, number) -> groups
        self.groups: dict[str, _Group] = {}
        self._member_of: dict[str, dict[str, tuple[str, ...]]] = {}       # pod -> group -> its addresses there
        self._isolation: dict[tuple[str, str], dict[str, str]] = {}  # (pod, direction) -> address -> profile
        self._owners: dict[tuple[str, int, tuple], dict[str, str]] = {}   # (direction, version, key) -> pod -> profile
        self._profile_of: dict[tuple[str, int, tuple[Fragment, ...]], str] = {}
        self.profiles: dict[str, _Profile] = {}
        self.classes: dict[str, _Class] = {}
        self._match_cache: dict = {}
        self._unnamed: dict[tuple[str, str], list] = {}   # (policy, direction) -> per rule: its fragments, None if it names ports
        self._dirty: set[str] = set()
        self._counters: dict[str, dict[str, str]] = {}   # policy -> its counters in the table
        self._dirty_policies: set[str] = set()
        self._dirty_intervals: set[str] = set()
        self._unreferenced: set[tuple[str, object]] = set()   # ("profile"|"class"|"group", name), ("set", (group, version))
        self.out = JournalledTables()

    # --- inputs ---------------------------------------------------------------------------
    def load(self, inputs: Inputs) -> Delta:
        """Bring everything to ``inputs``, changing only what differs."""
        self._sync(self.namespaces, {n.name: n for n in inputs.namespaces}, self.set_namespace)
        self._sync(self.endpoints, {e.key: e for e in inputs.endpoints}, self.set_endpoint)
        self._sync(self.policies, {p.key: p for p in inputs.policies}, self.set_policy)
        return self.commit()

    @staticmethod
    def _sync(current: dict, wanted: dict, setter) -> None:
        for key in [k for k in current if k not in wanted]:
            setter(key, None)
        for key, obj in wanted.items():
            if current.get(key) != obj:
                setter(key, obj)

    def tables(self) -> list[Table]:
        """The tables as compiled now ([] when there is no policy)."""
        return self.out.tables()

    def set_namespace(self, name: str, namespace: Namespace | None) -> None:
        old = self.namespace_labels(name)
        if namespace is None:
            self.namespaces.pop(name, None)
            self._declared_labels.pop(name, None)
        else:
            self.namespaces[name] = namespace
            self._declared_labels[name] = namespace.effective_labels()
        if self.namespace_labels(name) == old:
            return
        self._peer_index.namespace_changed(name)
        self._match_cache.clear()
        for endpoint in list(self._in_namespace.get(name, {}).values()):
            self._leave(endpoint.key)
            self._join(endpoint)

    def set_endpoint(self, key: str, endpoint: Endpoint | None) -> None:
        old = self.endpoints.get(key)
        if old == endpoint:
            return
        self._match_cache.clear()
        if old is not None:
            self._leave(key)
            del self._in_namespace[old.namespace][key]
            if not self._in_namespace[old.namespace]:
                del self._in_namespace[old.namespace]
            for label in old.labels.items():
                pods = self._labelled[(old.namespace, *label)]
                pods.discard(key)
                if not pods:
                    del self._labelled[(old.namespace, *label)]
            del self.endpoints[key]
            for port in old.ports:
                self._number_gone(port.name, port.protocol, port.port, key)
        if endpoint is not None:
            self.endpoints[key] = endpoint
            self._in_namespace.setdefault(endpoint.namespace, {})[key] = endpoint
            for label in endpoint.labels.items():
                self._labelled.setdefault((endpoint.namespace, *label), set()).add(key)
            for port in endpoint.ports:
                self._number_seen(port.name, port.protocol, port.port, key)
            self._join(endpoint)
        self._dirty.add(key)

    def set_policy(self, key: str, policy: Policy | None) -> None:
        old = self.policies.get(key)
        if old == policy:
            return
        for direction in DIRECTIONS:
            self._unnamed.pop((key, direction), None)
        if old is not None:
            self._dirty.update(self._selected(old))
            del self.policies[key]
            self._policy_index[old.namespace].remove(key)
            for ref, rule in rule_refs(old):
                if (group := group_of(old.namespace, rule)) is not None:
                    self._unwant(group, ref)
            for ref, base, port, protocol in named_port_variants(old):
                uses = self._variant_uses.get((port, protocol), {})  # a rule may name a port twice
                uses.pop(ref, None)
                if not uses:
                    self._variant_uses.pop((port, protocol), None)
                for number in self._named.get((port, protocol), {}):
                    self._unwant(variant_group(base, port, protocol, number), ref)
        if policy is not None:
            self.policies[key] = policy
            self._policy_index.setdefault(policy.namespace, SelectorIndex()).add(policy.pod_selector, key)
            for ref, rule in rule_refs(policy):
                if (group := group_of(policy.namespace, rule)) is not None:
                    self._want(group, ref)
            for ref, base, port, protocol in named_port_variants(policy):
                self._variant_uses.setdefault((port, protocol), {})[ref] = base
                for number in self._named.get((port, protocol), {}):
                    self._want(variant_group(base, port, protocol, number), ref)
            self._dirty.update(self._selected(policy))
        self._dirty_policies.add(key)

    # --- selection ------------------------------------------------------------------------
    def _selected(self, policy: Policy) -> list[str]:
        """The pods a policy selects."""
        return [e.key for e in self._pods_matching(policy.namespace, policy.pod_selector)]

    def _pods_matching(self, namespace: str, selector) -> list[Endpoint]:
        """Pods of a namespace a selector matches (remembered until a pod
        or namespace changes: a bulk load asks the same many times)."""
        key = (namespace, selector)
        if key not in self._match_cache:
            pods = self._in_namespace.get(namespace, {})
            label = next(iter(selector.match_labels), None)
            candidates = (pods[k] for k in self._labelled.get((namespace, *label), ())) if label else pods.values()
            self._match_cache[key] = [e for e in candidates if selector.matches(e.labels)]
        return self._match_cache[key]

    def _selecting(self, endpoint: Endpoint, direction: str) -> list[Policy]:
        index = self._policy_index.get(endpoint.namespace)
        keys = index.matching(endpoint.labels) if index else []
        return [self.policies[k] for k in sorted(keys) if direction in self.policies[k].policy_types]

    # the Resolver fragments are computed with
    def port_numbers(self, name: str, protocol: str) -> list[int]:
        return sorted(self._named.get((name, protocol), ()))

    def nonempty(self, group: GroupDef) -> bool:
        return bool(self.groups[group.name].members)

    # --- peer groups ------------------------------------------------------------------------
    def _want(self, definition: GroupDef, ref: RuleRef) -> None:
        group = self.groups.get(definition.name)
        if group is not None:
            group.wanted.add(ref)
            return
        group = self.groups[definition.name] = _Group(definition, {ref})
        if definition.variant:
            self._variant_groups.setdefault(definition.variant, set()).add(definition.name)
        else:
            for peer in definition.selectors:
                self._peer_index.add(definition.name, peer)
        for key, addresses in self._initial_members(definition).items():
            self._member_of.setdefault(key, {})[definition.name] = addresses
            self._add_members(group, key, addresses)

    def _unwant(self, definition: GroupDef, ref: RuleRef) -> None:
        group = self.groups[definition.name]
        group.wanted.discard(ref)
        if not group.wanted:
            self._unreferenced.add(("group", definition.name))   # dropped at commit if no class uses it

    def _initial_members(self, definition: GroupDef) -> dict[str, tuple[str, ...]]:
        """The pods in a new group: pod -> the addresses it puts there."""
        if definition.variant:  # among the pods with that port number...
            keys = self._named.get(definition.variant[:2], {}).get(definition.variant[2], set())
            if not definition.selectors and not definition.blocks:
                return {k: self.endpoints[k].addresses for k in keys}
            # ...those in the rule's own group (its selectors), and the addresses in its blocks
            base = self.groups[GroupDef(definition.selectors, definition.blocks).name]
            found = {k: self.endpoints[k].addresses for k in keys & base.pods}
            for k in keys - base.pods if definition.blocks else ():
                if inside := tuple(a for a in self.endpoints[k].addresses if a in definition.static):
                    found[k] = inside
            return found
        found = {}
        for peer in definition.selectors:
            namespaces = [peer.namespace] if peer.namespace is not None else [
                ns for ns in self._in_namespace if peer.namespace_selector.matches(self.namespace_labels(ns))]
            for ns in namespaces:
                found.update((e.key, e.addresses) for e in self._pods_matching(ns, peer.pod_selector))
        return found

    def _drop_group(self, name: str) -> None:
        group = self.groups.pop(name)
        definition = group.definition
        if definition.variant:
            names = self._variant_groups[definition.variant]
            names.discard(name)
            if not names:
                del self._variant_groups[definition.variant]
        else:
            for peer in definition.selectors:
                self._peer_index.remove(name, peer)
        for key in group.pods:
            del self._member_of[key][name]
            if not self._member_of[key]:
                del self._member_of[key]

    def _join(self, endpoint: Endpoint) -> None:
        """Put the endpoint in every group it is a member of."""
        found = {}
        for name in self._peer_index.groups(endpoint.namespace, endpoint.labels):
            found[name] = endpoint.addresses
        for port in endpoint.ports:
            for name in self._variant_groups.get((port.name, port.protocol, port.port), ()):
                addresses = self.groups[name].definition.members(endpoint, self.namespace_labels)
                if addresses:
                    found[name] = addresses
        for name, addresses in found.items():
            self._add_members(self.groups[name], endpoint.key, addresses)
        if found:
            self._member_of[endpoint.key] = found

    def _leave(self, key: str) -> None:
        for name, addresses in self._member_of.pop(key, {}).items():
            self._remove_members(self.groups[name], key, addresses)

    def _add_members(self, group: _Group, key: str, addresses: tuple[str, ...]) -> None:
        was_empty = not group.members
        group.pods.add(key)
        for address in addresses:
            count = group.members.get(address, 0)
            group.members[address] = count + 1
            if not count and group.live:
                self._group_member(group, address, None)
        if was_empty and group.members and group.definition.variant:
            self._variant_flipped(group)

    def _remove_members(self, group: _Group, key: str, addresses: tuple[str, ...]) -> None:
        group.pods.discard(key)
        for address in addresses:
            count = group.members[address] - 1
            if count:
                group.members[address] = count
            else:
                del group.members[address]
                if group.live:
                    self._group_member(group, address, ABSENT)
        if not group.members and group.definition.variant:
            self._variant_flipped(group)

    def _group_member(self, group: _Group, address: str, value) -> None:
        version, number = parse_address(address)
        if version not in group.live:
            return
        if group.definition.interval:  # ranges merge: recomputed once at commit
            self._dirty_intervals.add(group.definition.name)
            return
        self.out.element("inet", group_set(group.definition.name, version), ((number, number),), value)

    def _variant_flipped(self, group: _Group) -> None:
        """A variant group turned empty or not: the egress fragments of the
        pods the rules naming it select gain or lose it."""
        for ref in group.wanted:
            self._dirty.update(self._selected(self.policies[ref.policy]))

    # --- named port numbers -------------------------------------------------------------------
    def _number_seen(self, port: str, protocol: str, number: int, key: str) -> None:
        numbers = self._named.setdefault((port, protocol), {})
        if number not in numbers:
            numbers[number] = set()
            for ref, base in self._variant_uses.get((port, protocol), {}).items():
                self._want(variant_group(base, port, protocol, number), ref)
        numbers[number].add(key)

    def _number_gone(self, port: str, protocol: str, number: int, key: str) -> None:
        numbers = self._named[(port, protocol)]
        numbers[number].discard(key)
        if numbers[number]:
            return
        del numbers[number]
        if not numbers:
            del self._named[(port, protocol)]
        for ref, base in self._variant_uses.get((port, protocol), {}).items():
            self._unwant(variant_group(base, port, protocol, number), ref)

    # --- commit: profiles, references, the difference -------------------------------------------
    def commit(self) -> Delta:
        """Compute the profiles of the pods changes touched, drop what is no
        longer referenced, and return what changed since the last commit."""
        if self.policies and not self.out.exists:
            self.out.create()
        dirty, self._dirty = sorted(self._dirty), set()
        for key in dirty:
            self._isolate(key)
        for key in sorted(self._dirty_policies):
            self._policy_counters(key)
        self._dirty_policies.clear()
        self._collect()
        for name in sorted(self._dirty_intervals):
            self._refresh_interval_group(name)
        self._dirty_intervals.clear()
        if not self.policies and self.out.exists:
            self.out.drop()
        return self.out.take()

    def _isolate(self, key: str) -> None:
        endpoint = self.endpoints.get(key)
        for direction in DIRECTIONS:
            old = self._isolation.pop((key, direction), {})
            new = {}
            if endpoint is not None and endpoint.node == self.node:
                policies = self._selecting(endpoint, direction)
                if policies:
                    fragments = self._fragments(endpoint, direction, policies)
                    new = {a: self._profile(direction, parse_address(a)[0], fragments) for a in endpoint.addresses}
            if new:
                self._isolation[(key, direction)] = new
            if new == old:
                continue
            for address, profile in new.items():
                self._reference_profile(profile)
                self._pod(direction, address, key, profile)
            for address, profile in old.items():
                if address not in new:
                    self._pod(direction, address, key, None)
                self._release("profile", profile)

    def _fragments(self, endpoint: Endpoint, direction: str, policies: list[Policy]) -> tuple[Fragment, ...]:
        """endpoint_fragments, with what rules naming no port allow
        remembered per policy: the same for every pod it selects."""
        out = []
        for policy in policies:
            cached = self._unnamed.get((policy.key, direction))
            if cached is None:
                cached = self._unnamed[(policy.key, direction)] = [
                    None if any(isinstance(p.port, str) for p in rule.ports)
                    else rule_fragments(RuleRef(policy.key, direction, i), policy, rule, endpoint, self)
                    for i, rule in enumerate(policy.rules(direction))]
            for i, fragments in enumerate(cached):
                if fragments is None:
                    fragments = rule_fragments(RuleRef(policy.key, direction, i), policy, policy.rules(direction)[i],
                                               endpoint, self)
                out.extend(fragments)
        return tuple(out)

    def _pod(self, direction: str, address: str, key: str, profile: str | None) -> None:
        """One pod's profile for one of its addresses; two pods claiming an
        address: the last in key order has it."""
        version, element, _ = pod_elements(address, "")
        owners = self._owners.setdefault((direction, version, element), {})
        if profile is None:
            owners.pop(key, None)
        else:
            owners[key] = profile
        if owners:
            self.out.element("inet", pods_map(direction, version), element, ("goto", owners[max(owners)]))
            self.out.element("bridge", isolated_set(direction, version), element, None)
        else:
            del self._owners[(direction, version, element)]
            self.out.element("inet", pods_map(direction, version), element, ABSENT)
            self.out.element("bridge", isolated_set(direction, version), element, ABSENT)

    def _profile(self, direction: str, version: int, fragments: tuple[Fragment, ...]) -> str:
        key = (direction, version, fragments)  # no fragment at all: a profile per direction
        name = self._profile_of.get(key)
        if name is not None:
            return name
        classes: dict[str, tuple[Fragment, ...]] = {}

        def target(direction: str, cls: tuple[Fragment, ...]) -> str:
            if not cls:
                return deny_chain(direction)
            name = class_name(version, cls)
            classes.setdefault(name, cls)
            return name

        name, chain = profile_chain(direction, version, fragments, target)
        profile = self.profiles.get(name)
        if profile is None:
            profile = self.profiles[name] = _Profile(chain, version, classes)
        profile.keys.add(key)
        self._profile_of[key] = name
        return name

    # A referenced object goes live (into the tables, referencing what it
    # needs) at once; one no longer referenced leaves at the end of the
    # commit, unless referenced again meanwhile.
    def _reference_profile(self, name: str) -> None:
        profile = self.profiles[name]
        profile.refs += 1
        if profile.live:
            return
        profile.live = True
        self.out.chain(name, profile.chain)
        for cls_name, cls in profile.classes.items():
            if cls_name not in self.classes:
                self.classes[cls_name] = _Class(*class_chain(profile.version, cls), profile.version)
            self._reference_class(cls_name)

    def _reference_class(self, name: str) -> None:
        cls = self.classes[name]
        cls.refs += 1
        if cls.live:
            return
        cls.live = True
        self.out.chain(name, cls.chain)
        for group in cls.groups:
            self._reference_group(group, cls.version)

    def _reference_group(self, name: str, version: int) -> None:
        group = self.groups[name]
        group.refs[version] = group.refs.get(version, 0) + 1
        if version in group.live:
            return
        group.live.add(version)
        self.out.declare_set(*group.definition.set_of(version, group.members))

    def _release(self, kind: str, name: str) -> None:
        """One reference fewer; what reaches none goes at the end of the commit."""
        obj = {"profile": self.profiles, "class": self.classes}[kind][name]
        obj.refs -= 1
        if not obj.refs:
            self._unreferenced.add((kind, name))

    def _release_set(self, name: str, version: int) -> None:
        group = self.groups[name]
        group.refs[version] -= 1
        if not group.refs[version]:
            del group.refs[version]
            self._unreferenced.add(("set", (name, version)))

    def _collect(self) -> None:
        """Drop profiles, classes, group sets and groups nothing references
        any more (in that order: each releases the next)."""
        for kind in ("profile", "class", "set", "group"):
            for _, name in sorted(n for n in self._unreferenced if n[0] == kind):
                self._unreferenced.discard((kind, name))
                if kind == "profile":
                    profile = self.profiles.get(name)
                    if profile is None or profile.refs:
                        continue
                    del self.profiles[name]
                    for key in profile.keys:
                        del self._profile_of[key]
                    self.out.chain(name, None)
                    for cls_name in profile.classes:
                        self._release("class", cls_name)
                elif kind == "class":
                    cls = self.classes.get(name)
                    if cls is None or cls.refs:
                        continue
                    del self.classes[name]
                    self.out.chain(name, None)
                    for group in cls.groups:
                        self._release_set(group, cls.version)
                elif kind == "set":
                    group, version = name
                    found = self.groups.get(group)
                    if found is not None and not found.refs.get(version) and version in found.live:
                        found.live.discard(version)
                        self.out.declare_set(group_set(group, version), None, None)
                else:
                    group = self.groups.get(name)
                    if group is not None and not group.refs and not group.wanted:
                        self._drop_group(name)

    def _refresh_interval_group(self, name: str) -> None:
        group = self.groups.get(name)
        if group is None:
            return
        for version in sorted(group.live):
            set_name, _, elements = group.definition.set_of(version, group.members)
            current = self.out.inet.elements[set_name]
            for key in [k for k in current if k not in elements]:
                self.out.element("inet", set_name, key, ABSENT)
            for key in elements:
                if key not in current:
                    self.out.element("inet", set_name, key, None)

    def _policy_counters(self, key: str) -> None:
        """One counter per rule of the policy, in the table while it exists."""
        old = self._counters.pop(key, {})
        new = policy_counters(self.policies[key]) if key in self.policies else {}
        if new:
            self._counters[key] = new
        if not self.out.exists:
            return
        for name in old:
            if name not in new:
                self.out.counter(name, None)
        for name, comment in new.items():
            if name not in old:
                self.out.counter(name, comment)
