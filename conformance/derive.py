"""Making a deployed network config private to one suite run.

A config from /etc/cni/net.d names the machine's own things: its network
name, its bridge (cni0), its subnet (10.88.0.0/16) and the directories its
plugins keep state in.  ``derive`` returns a copy that names fresh ones
instead and keeps everything else as written, with the list of what it
changed, so the suite's namespaces never meet the machine's network.

Subnets move consistently: every address an IPAM config names inside a
subnet (range bounds, gateways, routes) keeps its offset in the fresh one,
which is a 10.2xx /24 (an IPv6 ULA /64) unless the offsets need more room.
``derive`` is pure; the run supplies fresh names and subnets in ``Fresh``
(and so knows every subnet it handed out).
"""
from __future__ import annotations

import copy
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Callable

from .knowledge import DATA_DIRS, DEFAULT_ROUTE_DEVICE, DERIVED_NAMES, HOST_DEVICES, known
from .netconf import ConfigError, place, plugin_entries

RELOCATED_IPAM = ("host-local", "static")
# family -> (prefix of a fresh subnet, shortest prefix the suite will hand out)
ROOM = {4: (24, 16), 6: (64, 48)}


@dataclass(frozen=True)
class Change:
    where: str
    before: str
    after: str

    def __str__(self) -> str:
        return f"{self.where}: {self.before} -> {self.after}"

    def to_json(self) -> dict:
        return {"where": self.where, "from": self.before, "to": self.after}


@dataclass
class Fresh:
    """One run's unique names.  ``subnet(prefixlen, family)`` returns an
    unused subnet of that size."""
    name: str
    bridge: str
    tmp: str
    subnet: Callable[[int, int], ipaddress._BaseNetwork]


@dataclass
class Derived:
    network: dict
    changes: list[Change] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    bridges: list[str] = field(default_factory=list)    # host bridges the run may create


def private_data_dir(tmp: str, plugin_type: str) -> str:
    return os.path.join(tmp, "ipam" if plugin_type == "host-local" else plugin_type)


def derive(network: dict, fresh: Fresh) -> Derived:
    net = copy.deepcopy(network)
    out = Derived(net)
    out.changes.append(Change("name", str(network.get("name")), fresh.name))
    net["name"] = fresh.name
    bridges: dict[str, str] = {}
    subnets = _Relocation()
    for where, plugin in plugin_entries(net):
        kind = plugin["type"]
        if kind in DERIVED_NAMES:
            key, default = DERIVED_NAMES[kind]
            old = plugin.get(key) or default
            new = bridges.setdefault(old, fresh.bridge + (f"b{len(bridges) + 1}" if bridges else ""))
            out.changes.append(Change(where + key, plugin.get(key) or f"(default {default})", new))
            plugin[key] = new
        if kind in DATA_DIRS:
            out.changes.append(_private_dir(plugin, where, kind, fresh.tmp))
        if kind in HOST_DEVICES:
            out.notes.append(_host_device_note(plugin, where, kind))
        if not known(kind):
            out.notes.append(f"{place(where)}: type {kind!r} is one the suite has no special knowledge of: "
                             "it gets the generic checks")
        ipam = plugin.get("ipam")
        if ipam is None:
            continue
        if ipam["type"] in DATA_DIRS:
            out.changes.append(_private_dir(ipam, where + "ipam.", ipam["type"], fresh.tmp))
        if ipam["type"] in RELOCATED_IPAM:
            subnets.collect(ipam, where + "ipam.")
        else:
            out.notes.append(f"{where}ipam: type {ipam['type']!r} is unknown to the suite: its settings "
                             "are kept as written (it relocates host-local and static)")
    out.changes += subnets.apply(fresh.subnet)
    out.bridges = list(bridges.values())
    return out


def check(network: dict) -> None:
    """Raise ConfigError if ``network`` cannot be derived (before any run)."""
    def any_subnet(prefixlen: int, family: int):
        return ipaddress.ip_network(("10.0.0.0" if family == 4 else "fd00::", prefixlen))

    derive(network, Fresh("check", "check", "/nonexistent", any_subnet))


def _private_dir(conf: dict, where: str, kind: str, tmp: str) -> Change:
    before = conf.get("dataDir") or f"(default {DATA_DIRS[kind]})"
    conf["dataDir"] = private_data_dir(tmp, kind)
    return Change(where + "dataDir", before, conf["dataDir"])


def _host_device_note(plugin: dict, where: str, kind: str) -> str:
    key, what = HOST_DEVICES[kind]
    if plugin.get(key):
        return f"{where}{key} {plugin[key]!r} kept: the host's device; the run {what}"
    if kind in DEFAULT_ROUTE_DEVICE:
        return f"{where}{key} unset: {kind} uses the device of the host's default route; the run {what}"
    return f"{where}{key} unset"


# --- subnets ----------------------------------------------------------------------------
@dataclass
class _Slot:
    """One value of an IPAM config that names an address or a network."""
    conf: dict
    key: str
    where: str
    value: object         # ip_address, ip_network or ip_interface
    defines: bool = False  # a subnet the IPAM allocates from (or a static address/prefix)


def _parse(conf: dict, key: str, where: str, parse, what: str):
    try:
        return parse(conf[key])
    except (TypeError, ValueError):
        raise ConfigError(f"{where}{key} {conf[key]!r} is not {what}: cannot relocate it") from None


def _network(conf, key, where):
    return _parse(conf, key, where, lambda v: ipaddress.ip_network(v, strict=False), "a subnet")


def _address(conf, key, where):
    return _parse(conf, key, where, ipaddress.ip_address, "an IP address")


def _address_with_prefix(value):
    if "/" not in value:
        raise ValueError(value)
    return ipaddress.ip_interface(value)


def _interface(conf, key, where):
    return _parse(conf, key, where, _address_with_prefix, "an address/prefix")


def _inside(inner, outer) -> bool:
    if inner.version != outer.version:
        return False
    if isinstance(inner, ipaddress._BaseNetwork):
        return inner.subnet_of(outer)
    return inner in outer


def _list_of(conf: dict, key: str, where: str, kind=dict) -> list:
    items = conf.get(key) or []
    if not isinstance(items, list) or not all(isinstance(i, kind) for i in items):
        raise ConfigError(f"{where}{key} is not a list of {'objects' if kind is dict else 'range sets'}: "
                          "cannot relocate it")
    return items


class _Relocation:
    """Moves the subnets named by IPAM configs (host-local ranges, static
    addresses) into fresh ones; every address or route inside a moved
    subnet keeps its offset."""

    def __init__(self):
        self.slots: list[_Slot] = []
        self.moves: dict = {}              # original outermost subnet -> fresh subnet

    def collect(self, ipam: dict, where: str) -> None:
        ranges = [(ipam, where)] if "subnet" in ipam else []   # host-local's pre-"ranges" form
        for i, rset in enumerate(_list_of(ipam, "ranges", where, list)):
            for j, r in enumerate(rset):
                if not isinstance(r, dict):
                    raise ConfigError(f"{where}ranges[{i}][{j}] is not an object: cannot relocate it")
                ranges.append((r, f"{where}ranges[{i}][{j}]."))
        for r, w in ranges:
            if "subnet" not in r:
                raise ConfigError(f"{w}subnet is missing: cannot relocate the range")
            net = _network(r, "subnet", w)
            self.slots.append(_Slot(r, "subnet", w + "subnet", net, defines=True))
            for key in ("rangeStart", "rangeEnd", "gateway"):
                if key in r:
                    addr = _address(r, key, w)
                    if not _inside(addr, net):
                        raise ConfigError(f"{w}{key} {addr} lies outside {w}subnet {net}: cannot relocate the range")
                    self.slots.append(_Slot(r, key, w + key, addr))
        for i, a in enumerate(_list_of(ipam, "addresses", where)):       # static
            w = f"{where}addresses[{i}]."
            if "address" in a:
                self.slots.append(_Slot(a, "address", w + "address", _interface(a, "address", w), defines=True))
            if "gateway" in a:
                self.slots.append(_Slot(a, "gateway", w + "gateway", _address(a, "gateway", w)))
        for i, r in enumerate(_list_of(ipam, "routes", where)):
            w = f"{where}routes[{i}]."
            if "dst" in r:
                self.slots.append(_Slot(r, "dst", w + "dst", _network(r, "dst", w)))
            if "gw" in r:
                self.slots.append(_Slot(r, "gw", w + "gw", _address(r, "gw", w)))

    @staticmethod
    def _net(value):
        return value.network if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)) else value

    def _outer(self, value):
        return next((o for o in self.moves if _inside(value, o)), None)

    def apply(self, pick) -> list[Change]:
        nets = list(dict.fromkeys(self._net(s.value) for s in self.slots if s.defines))
        outermost = [n for n in nets if not any(m != n and _inside(n, m) for m in nets)]
        for o in outermost:
            self.moves[o] = pick(self._prefix(o), o.version)
        changes = []
        for slot in self.slots:
            new = self._moved(slot.value)
            if new is not None and str(new) != str(slot.conf[slot.key]):
                changes.append(Change(slot.where, str(slot.conf[slot.key]), str(new)))
                slot.conf[slot.key] = str(new)
        return changes

    def _prefix(self, outer) -> int:
        """The fresh subnet's prefix: the usual size, or more room when the
        addresses named inside ``outer`` lie further in (never less than
        the original, never more than the suite hands out)."""
        base = int(outer.network_address)
        furthest = -1
        for slot in self.slots:
            value = slot.value
            if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
                value = value.ip
            if isinstance(value, ipaddress._BaseNetwork):
                if value == outer or not _inside(value, outer):
                    continue
                value = value.broadcast_address
            if _inside(value, outer):
                furthest = max(furthest, int(value) - base)
        usual, shortest = ROOM[outer.version]
        needed = outer.max_prefixlen - (furthest + 1).bit_length()
        prefix = max(outer.prefixlen, min(usual, needed))
        if prefix < shortest:
            where = next(s.where for s in self.slots if s.defines and self._net(s.value) == outer)
            raise ConfigError(f"{where} {outer}: the addresses named in it span more than a /{shortest}, "
                              "the largest test subnet the suite hands out: cannot relocate it")
        return prefix

    def _moved(self, value):
        """``value`` in its fresh subnet, or None when it lies in none."""
        if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
            net = self._moved(value.network)
            return ipaddress.ip_interface((self._moved(value.ip), net.prefixlen))
        outer = self._outer(value)
        if outer is None:
            return None
        fresh = self.moves[outer]
        if value == outer:
            return fresh
        if isinstance(value, ipaddress._BaseNetwork):
            return ipaddress.ip_network((self._moved(value.network_address), value.prefixlen))
        return ipaddress.ip_address(int(fresh.network_address) + int(value) - int(outer.network_address))
