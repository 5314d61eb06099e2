"""portmap: publish container ports on the host (a chained plugin).

``runtimeConfig.portMappings`` entries ({hostPort, containerPort, protocol,
hostIP}) become elements of the maps in our ``inet pycni_portmap`` table:
DNAT from any local address (or only ``hostIP``) to the container address
of the same family from prevResult, masquerade of hairpin flows (a pod of
the container's subnet reaching a published port through the host) and of
flows from 127.0.0.0/8 (with ``route_localnet`` on the host interface
towards the container, as the reference does).

The table (rules are static, containers are elements):

* ``prerouting`` (nat, dstnat) and ``output`` (nat, dstnat, for locally
  originated traffic, 127.0.0.1 included) jump to ``hostports`` when the
  destination is a local address (``fib daddr type local``).
* ``hostports`` DNATs with map lookups, so the cost does not grow with the
  number of mappings: first the hostIP-specific maps keyed on
  ``daddr . l4proto . dport``, then the wildcard maps keyed on
  ``l4proto . dport``.  Address and port come from two maps looked up with
  the same key (``dnat to KEY map @addr : KEY map @port``): libnftables
  1.0.6 cannot express concatenated map data in JSON.
* ``postrouting`` (nat, srcnat) masquerades DNATed flows whose
  ``saddr . daddr . l4proto . dport`` is in ``snat4``/``snat6``: per
  mapping one element for the container's own subnet (hairpin) and, for
  IPv4, one for 127.0.0.0/8 (the host reaching it on localhost).

Config keys: ``snat`` (default true: the hairpin/localhost masquerade);
``markMasqBit`` (0-31) and ``externalSetMarkChain`` are validated as the
reference does (not both) but mark nothing: our masquerade decision is made
from conntrack (the flow was DNATed) and a set lookup in our own postrouting
chain, so no packet mark bit is needed or touched, and no iptables chain can
be jumped to from nftables.  ``conditionsV4``/``conditionsV6`` hold iptables
match text, which we cannot apply: a non-empty list is refused.  ``backend``
may be ``iptables`` or ``nftables``; either way we use nftables.

DEL removes what our record says and flushes the conntrack entries of the
removed mappings (so a UDP flow does not stay pinned to the old container);
ADD flushes UDP entries to its host ports (a flow that hit the host while
no mapping existed would otherwise never reach the container).
"""
import ipaddress
import json
import sys

from .core.attachment import commit, release, replace, store_for
from .core.config import bad_config, fold_keys
from .core.errors import KERNEL_FAILURE, CNIError, require_same
from .core.plain import plain
from .core.request import Request
from .kernel import netns, nft
from .kernel.conntrack import flush_conntrack
from .kernel.errors import NftError
from .kernel.netlink import Netlink
from .kernel.nft import concat, match, meta, payload, prefix

PLUGIN = "portmap"
PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}
_MAPPING_KEYS = ("hostPort", "containerPort", "protocol", "hostIP")


# --- the table --------------------------------------------------------------------
_KEY = concat(meta("l4proto"), payload("th", "dport"))
_LOCAL = match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")
_SVC = ["inet_proto", "inet_service"]


def _hkey(ip):
    return concat(payload(ip, "daddr"), meta("l4proto"), payload("th", "dport"))


def _dnat(family, key, addr_map, port_map):
    return {"dnat": {"family": family, "addr": {"map": {"key": key, "data": f"@{addr_map}"}},
                     "port": {"map": {"key": key, "data": f"@{port_map}"}}}}


def _snat_rule(ip, set_name):
    return [match({"ct": {"key": "status"}}, "dnat", op="in"),
            match(concat(payload(ip, "saddr"), payload(ip, "daddr"), meta("l4proto"), payload("th", "dport")),
                  f"@{set_name}"),
            {"masquerade": None}]


TABLE = nft.Table("inet", "pycni_portmap", sets={
    # wildcard host address: l4proto . hostPort -> container address / port
    "addr4": {"type": _SVC, "map": "ipv4_addr"},
    "port4": {"type": _SVC, "map": "inet_service"},
    "addr6": {"type": _SVC, "map": "ipv6_addr"},
    "port6": {"type": _SVC, "map": "inet_service"},
    # a given hostIP: hostIP . l4proto . hostPort -> container address / port
    "haddr4": {"type": ["ipv4_addr", *_SVC], "map": "ipv4_addr"},
    "hport4": {"type": ["ipv4_addr", *_SVC], "map": "inet_service"},
    "haddr6": {"type": ["ipv6_addr", *_SVC], "map": "ipv6_addr"},
    "hport6": {"type": ["ipv6_addr", *_SVC], "map": "inet_service"},
    # source range . container address . l4proto . containerPort to masquerade
    "snat4": {"type": ["ipv4_addr", "ipv4_addr", *_SVC], "flags": ["interval"]},
    "snat6": {"type": ["ipv6_addr", "ipv6_addr", *_SVC], "flags": ["interval"]},
}, chains={
    "hostports": (None, [
        [_dnat("ip", _hkey("ip"), "haddr4", "hport4")],
        [_dnat("ip6", _hkey("ip6"), "haddr6", "hport6")],
        [match(meta("nfproto"), "ipv4"), _dnat("ip", _KEY, "addr4", "port4")],
        [match(meta("nfproto"), "ipv6"), _dnat("ip6", _KEY, "addr6", "port6")],
    ]),
    "prerouting": ({"type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"},
                   [[_LOCAL, {"jump": {"target": "hostports"}}]]),
    "output": ({"type": "nat", "hook": "output", "prio": -100, "policy": "accept"},
               [[_LOCAL, {"jump": {"target": "hostports"}}]]),
    "postrouting": ({"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
                    [_snat_rule("ip", "snat4"), _snat_rule("ip6", "snat6")]),
})


def mapping_elements(m: dict, container_ip, subnet, snat: bool) -> list[nft.Element]:
    """The elements of one port mapping to one container address.

    ``m`` is a validated mapping: hostPort, containerPort, protocol (name),
    hostIP ('' for any); ``container_ip``/``subnet`` are ipaddress objects."""
    v = "6" if container_ip.version == 6 else "4"
    proto, cip = m["protocol"], container_ip.compressed
    if m["hostIP"]:
        key = concat(m["hostIP"], proto, m["hostPort"])
        out = [(TABLE, f"haddr{v}", [key, cip]), (TABLE, f"hport{v}", [key, m["containerPort"]])]
    else:
        key = concat(proto, m["hostPort"])
        out = [(TABLE, f"addr{v}", [key, cip]), (TABLE, f"port{v}", [key, m["containerPort"]])]
    if snat:
        sources = [subnet.with_prefixlen] + (["127.0.0.0/8"] if v == "4" else [])
        for src in sources:
            out.append((TABLE, f"snat{v}", concat(prefix(src), cip, proto, m["containerPort"])))
    return out


# --- config -------------------------------------------------------------------
@plain
class PortmapConfig:
    network: str
    snat: bool = True
    mappings: list[dict] = []


def _port(m: dict, key: str) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise bad_config(PLUGIN, f"invalid {key} {value!r} in port mapping {m}")
    return value


def parse_mappings(raw) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise bad_config(PLUGIN, "runtimeConfig.portMappings must be a list")
    out, seen = [], set()
    for m in raw:
        if not isinstance(m, dict):
            raise bad_config(PLUGIN, f"port mapping {m!r} is not an object")
        m = fold_keys(m, _MAPPING_KEYS)
        proto = m.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise bad_config(PLUGIN, f"unknown protocol {proto!r} in port mapping {m} (tcp, udp or sctp)")
        host_ip, family = m.get("hostIP") or "", None
        if host_ip:
            try:
                addr = ipaddress.ip_address(host_ip)
            except (ValueError, TypeError):
                raise bad_config(PLUGIN, f"invalid hostIP {host_ip!r} in port mapping {m}") from None
            family = addr.version
            host_ip = "" if addr.is_unspecified else addr.compressed  # 0.0.0.0: any IPv4 address
        mapping = {"hostPort": _port(m, "hostPort"), "containerPort": _port(m, "containerPort"),
                   "protocol": proto.lower(), "hostIP": host_ip, "family": family}
        key = (mapping["protocol"], mapping["hostPort"], host_ip, family)
        if key in seen:
            raise bad_config(PLUGIN, f"host port {mapping['protocol']}/{mapping['hostPort']} is mapped twice")
        seen.add(key)
        out.append(mapping)
    return out


def parse_config(req: Request) -> PortmapConfig:
    c = req.config
    snat = c.get("snat", True)
    if snat is None:
        snat = True
    if not isinstance(snat, bool):
        raise bad_config(PLUGIN, f"'snat' must be a boolean, got {snat!r}")
    bit, chain = c.get("markMasqBit"), c.get("externalSetMarkChain")
    if bit is not None and (isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31):
        raise bad_config(PLUGIN, f"markMasqBit must be an integer between 0 and 31, got {bit!r}")
    if chain is not None and not isinstance(chain, str):
        raise bad_config(PLUGIN, "externalSetMarkChain must be a string")
    if bit is not None and chain:
        raise bad_config(PLUGIN, "cannot set both markMasqBit and externalSetMarkChain")
    for key in ("conditionsV4", "conditionsV6"):
        if c.get(key):
            raise bad_config(PLUGIN, f"{key} (iptables match text) is not supported by this nftables implementation")
    backend = c.get("backend") or "nftables"
    if backend not in ("iptables", "nftables"):
        raise bad_config(PLUGIN, f"unknown backend {backend!r}")
    return PortmapConfig(network=c["name"], snat=snat,
                         mappings=parse_mappings(req.runtime_config.get("portMappings")))


def container_ips(prev: dict) -> dict:
    """{4: ip_interface, 6: ip_interface}: the first address of each family,
    preferring addresses on an interface inside the sandbox."""
    interfaces = prev.get("interfaces") or []
    ranked = []
    for ip in prev.get("ips") or []:
        try:
            iface = ipaddress.ip_interface(ip["address"])
        except (KeyError, ValueError, TypeError):
            raise bad_config(PLUGIN, f"prevResult has an invalid IP config {ip!r}") from None
        idx = ip.get("interface")
        in_sandbox = isinstance(idx, int) and 0 <= idx < len(interfaces) and bool(interfaces[idx].get("sandbox"))
        ranked.append((not in_sandbox, iface))
    out = {}
    for _, iface in sorted(ranked, key=lambda r: r[0]):
        out.setdefault(iface.version, iface)
    return out


# --- plan ---------------------------------------------------------------------
@plain
class Plan:
    elements: list          # nft elements
    conntrack: list[dict]   # filters of the entries DEL flushes (kernel.conntrack)
    localnet: list[str]     # container addresses whose host interface needs route_localnet


def make_plan(cfg: PortmapConfig, prev: dict) -> Plan:
    ips = container_ips(prev)
    elements, filters, localnet = [], [], []
    for m in cfg.mappings:
        for family, iface in sorted(ips.items()):
            if m["family"] not in (None, family):
                continue
            elements += mapping_elements(m, iface.ip, iface.network, cfg.snat)
            filters.append({"family": family, "proto": PROTOCOLS[m["protocol"]], "dport": m["hostPort"],
                            "dst": m["hostIP"] or None, "reply_src": iface.ip.compressed})
            if family == 4 and cfg.snat:
                localnet.append(iface.ip.compressed)
    return Plan(elements=elements, conntrack=filters, localnet=sorted(set(localnet)))


def record_of(req: Request, plan: Plan) -> dict:
    return {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "nft": nft.to_record(plan.elements), "conntrack": plan.conntrack}


def record_from_prev_result(req: Request) -> dict | None:
    """No record (lost state dir, older version): rebuild from prevResult."""
    prev = req.prev_result
    if prev is None:
        return None
    try:
        plan = make_plan(parse_config(req), prev)
    except CNIError:
        return None
    return {"nft": nft.to_record(plan.elements), "conntrack": plan.conntrack}


# --- kernel -------------------------------------------------------------------
def enable_localnet(addresses: list[str]) -> None:
    """Let 127.0.0.0/8-sourced (then masqueraded) packets leave towards the
    container: route_localnet on the interface that routes to it."""
    if not addresses:
        return
    with Netlink() as host:
        names = {host.route_ifname(a) for a in addresses} - {""}
    for name in names:
        try:
            netns.write_sysctl(f"net.ipv4.conf.{name}.route_localnet", "1")
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"portmap: enabling route_localnet on {name}: {e}") from None


def _conflicts(elements: list) -> list[str]:
    """Our map keys that the table holds with another container's value."""
    current = nft.elements_of(TABLE)
    taken = {(name, nft.canonical(e[0])): nft.canonical(e[1]) for name, elems in current.items()
             for e in elems if isinstance(e, list)}
    out = []
    for _, s, e in elements:
        if isinstance(e, list):
            other = taken.get((s, nft.canonical(e[0])))
            if other is not None and other != nft.canonical(e[1]):
                out.append(f"{json.dumps(e[0])} is already mapped to {other}")
    return out


def apply(plan: Plan) -> None:
    enable_localnet(plan.localnet)
    try:
        nft.add_elements(plan.elements)
    except NftError:
        conflicts = _conflicts(plan.elements)
        if conflicts:
            raise bad_config(PLUGIN, "host port already in use: " + "; ".join(conflicts)) from None
        raise
    flush(plan.conntrack, udp_only=True)


def flush(filters: list[dict], udp_only: bool = False) -> None:
    """Flush conntrack entries; trouble here is reported, never fatal."""
    if udp_only:
        filters = [{**f, "reply_src": None} for f in filters if f["proto"] == PROTOCOLS["udp"]]
    try:
        flush_conntrack(filters)
    except OSError as e:
        print(f"portmap: flushing conntrack entries: {e}", file=sys.stderr)


def undo(record: dict) -> None:
    """Remove our elements (a map key another container holds now keeps
    its value: see nft.remove_elements) and flush their conntrack entries."""
    nft.remove_elements(nft.from_record(record.get("nft", [])))
    flush(record.get("conntrack", []))


# --- CNI commands ---------------------------------------------------------------
def add(req: Request) -> dict:
    prev = req.require_prev_result(PLUGIN)
    plan = make_plan(parse_config(req), prev)
    store = store_for(req, PLUGIN)
    replace(store, req, undo)
    if plan.elements:
        # the nft transaction is atomic: on failure nothing of ours went in
        commit(store, req, record_of(req, plan), lambda: apply(plan), lambda r: None)
    return prev  # chained: the previous result, unchanged


def delete(req: Request) -> None:
    release(store_for(req, PLUGIN), req, undo, fallback=record_from_prev_result)


def check(req: Request) -> None:
    plan = make_plan(parse_config(req), req.require_prev_result(PLUGIN))
    missing = [(s, e) for (_, s, e), here in zip(plan.elements, nft.present(plan.elements)) if not here]
    if missing:
        s, e = missing[0]
        require_same(PLUGIN, [f"{len(missing)} nftables element(s) missing, e.g. "
                              f"{json.dumps(e)} in {TABLE.family} {TABLE.name} {s}"])


def gc(req: Request) -> None:
    store_for(req, PLUGIN).collect(req.config, undo)
