"""portmap: publish container ports on the host (a chained plugin).

``runtimeConfig.portMappings`` entries ({hostPort, containerPort, protocol,
hostIP}) become elements of the maps in our ``inet pycni_portmap`` table
(see portmap_nft.py): DNAT from any local address (or only ``hostIP``) to
the container address of the same family from prevResult, masquerade of
hairpin flows (a pod of the container's subnet reaching a published port
through the host) and of flows from 127.0.0.0/8 (with ``route_localnet`` on
the host interface towards the container, as the reference does).

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
import _socket as socket  # not `socket`: it imports selectors and enum at start-up
import sys

from .kernel import netlink, netns, nft
from .core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, KERNEL_FAILURE
from .portmap_nft import PROTOCOLS, TABLE, flush_conntrack, map_key, mapping_elements
from .core.request import Request
from .core.records import RecordStore


# --- config -------------------------------------------------------------------
def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"portmap: {msg}")


def _port(m: dict, key: str) -> int:
    value = m.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        raise _bad(f"invalid {key} {value!r} in port mapping {m}")
    return value


def parse_mappings(raw) -> list[dict]:
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise _bad("runtimeConfig.portMappings must be a list")
    out, seen = [], set()
    for m in raw:
        if not isinstance(m, dict):
            raise _bad(f"port mapping {m!r} is not an object")
        proto = m.get("protocol") or "tcp"
        if not isinstance(proto, str) or proto.lower() not in PROTOCOLS:
            raise _bad(f"unknown protocol {proto!r} in port mapping {m} (tcp, udp or sctp)")
        host_ip, family = m.get("hostIP") or "", None
        if host_ip:
            try:
                addr = ipaddress.ip_address(host_ip)
            except (ValueError, TypeError):
                raise _bad(f"invalid hostIP {host_ip!r} in port mapping {m}") from None
            family = addr.version
            host_ip = "" if addr.is_unspecified else addr.compressed  # 0.0.0.0: any IPv4 address
        mapping = {"hostPort": _port(m, "hostPort"), "containerPort": _port(m, "containerPort"),
                   "protocol": proto.lower(), "hostIP": host_ip, "family": family}
        key = (mapping["protocol"], mapping["hostPort"], host_ip, family)
        if key in seen:
            raise _bad(f"host port {mapping['protocol']}/{mapping['hostPort']} is mapped twice")
        seen.add(key)
        out.append(mapping)
    return out


def parse_config(req: Request) -> dict:
    c = req.config
    snat = c.get("snat", True)
    if snat is None:
        snat = True
    if not isinstance(snat, bool):
        raise _bad(f"'snat' must be a boolean, got {snat!r}")
    bit, chain = c.get("markMasqBit"), c.get("externalSetMarkChain")
    if bit is not None and (isinstance(bit, bool) or not isinstance(bit, int) or not 0 <= bit <= 31):
        raise _bad(f"markMasqBit must be an integer between 0 and 31, got {bit!r}")
    if chain is not None and not isinstance(chain, str):
        raise _bad("externalSetMarkChain must be a string")
    if bit is not None and chain:
        raise _bad("cannot set both markMasqBit and externalSetMarkChain")
    for key in ("conditionsV4", "conditionsV6"):
        if c.get(key):
            raise _bad(f"{key} (iptables match text) is not supported by this nftables implementation")
    backend = c.get("backend") or "nftables"
    if backend not in ("iptables", "nftables"):
        raise _bad(f"unknown backend {backend!r}")
    return {"network": c["name"], "snat": snat,
            "mappings": parse_mappings(req.runtime_config.get("portMappings"))}


def container_ips(prev: dict) -> dict:
    """{4: ip_interface, 6: ip_interface}: the first address of each family,
    preferring addresses on an interface inside the sandbox."""
    interfaces = prev.get("interfaces") or []
    ranked = []
    for ip in prev.get("ips") or []:
        try:
            iface = ipaddress.ip_interface(ip["address"])
        except (KeyError, ValueError, TypeError):
            raise _bad(f"prevResult has an invalid IP config {ip!r}") from None
        idx = ip.get("interface")
        in_sandbox = isinstance(idx, int) and 0 <= idx < len(interfaces) and bool(interfaces[idx].get("sandbox"))
        ranked.append((not in_sandbox, iface))
    out = {}
    for _, iface in sorted(ranked, key=lambda r: r[0]):
        out.setdefault(iface.version, iface)
    return out


# --- plan ---------------------------------------------------------------------
def make_plan(cfg: dict, prev: dict) -> dict:
    """Elements and conntrack filters for this container's mappings."""
    ips = container_ips(prev)
    elements, filters, localnet = [], [], []
    for m in cfg["mappings"]:
        for family, iface in sorted(ips.items()):
            if m["family"] not in (None, family):
                continue
            elements += mapping_elements(m, iface.ip, iface.network, cfg["snat"])
            filters.append({"family": family, "proto": PROTOCOLS[m["protocol"]], "dport": m["hostPort"],
                            "dst": m["hostIP"] or None, "reply_src": iface.ip.compressed})
            if family == 4 and cfg["snat"]:
                localnet.append(iface.ip.compressed)
    return {"elements": elements, "conntrack": filters, "localnet": sorted(set(localnet))}


# --- kernel -------------------------------------------------------------------
def _host_ifname(host: netlink.Netlink, address: str) -> str:
    """The host interface routing to a container address (the bridge)."""
    addr = ipaddress.ip_address(address)
    best = None
    for r in host.routes(socket.AF_INET if addr.version == 4 else socket.AF_INET6):
        if addr in r["dst"] and r["oif"] and (best is None or r["dst"].prefixlen > best["dst"].prefixlen):
            best = r
    if best is None:
        return ""
    link = host.link_by_index(best["oif"])
    return link.name if link else ""


def enable_localnet(addresses: list[str]) -> None:
    """Let 127.0.0.0/8-sourced (then masqueraded) packets leave towards the
    container: route_localnet on the interface that routes to it."""
    if not addresses:
        return
    with netlink.Netlink() as host:
        names = {_host_ifname(host, a) for a in addresses} - {""}
    for name in names:
        try:
            netns.write_sysctl(f"net.ipv4.conf.{name}.route_localnet", "1")
        except OSError as e:
            raise CNIError(KERNEL_FAILURE, f"portmap: enabling route_localnet on {name}: {e}") from None


def _canon(value) -> str:
    """Elements as nftables lists them, comparable with ours."""
    def norm(v):
        if isinstance(v, dict) and "prefix" in v:
            p = v["prefix"]
            addr = ipaddress.ip_address(p["addr"])
            if p["len"] == addr.max_prefixlen:
                return addr.compressed
            return {"prefix": {"addr": addr.compressed, "len": p["len"]}}
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, str):
            try:
                return ipaddress.ip_address(v).compressed
            except ValueError:
                return v
        return v
    return json.dumps(norm(value), sort_keys=True)


def _present(elements: list) -> list[bool]:
    have = {name: {_canon(e) for e in elems} for name, elems in nft.elements_of(TABLE).items()}
    return [_canon(e) in have.get(s, ()) for _, s, e in elements]


def _conflicts(elements: list) -> list[str]:
    """Our map keys that the table holds with another container's value."""
    current = nft.elements_of(TABLE)
    taken = {(name, _canon(e[0])): _canon(e[1]) for name, elems in current.items()
             for e in elems if isinstance(e, list)}
    out = []
    for _, s, e in elements:
        if map_key((TABLE, s, e)) is not None:
            other = taken.get((s, _canon(e[0])))
            if other is not None and other != _canon(e[1]):
                out.append(f"{json.dumps(e[0])} is already mapped to {other}")
    return out


def remove(elements: list) -> None:
    """Remove our elements; a map key now held by another container (its
    value differs from ours) is left alone."""
    try:
        nft.remove_elements(elements)
    except CNIError:
        present = _present(elements)
        # a key whose address is not ours belongs to someone else: keep its port too
        taken = {_canon(e[0]) for (_, s, e), p in zip(elements, present)
                 if not p and s.startswith(("addr", "haddr"))}
        nft.remove_elements([el for el, p in zip(elements, present)
                             if p and not (isinstance(el[2], list) and _canon(el[2][0]) in taken)])


def flush(filters: list[dict], udp_only: bool = False) -> None:
    """Flush conntrack entries; trouble here is reported, never fatal."""
    if udp_only:
        filters = [{**f, "reply_src": None} for f in filters if f["proto"] == PROTOCOLS["udp"]]
    try:
        flush_conntrack(filters)
    except OSError as e:
        print(f"portmap: flushing conntrack entries: {e}", file=sys.stderr)


# --- CNI commands ---------------------------------------------------------------
def _store(req: Request) -> RecordStore:
    return RecordStore("portmap", req.config["name"])



def add(req: Request) -> dict:
    prev = req.require_prev_result("portmap")
    cfg = parse_config(req)
    plan = make_plan(cfg, prev)
    if plan["elements"]:
        store = _store(req)
        record = {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
                  "nft": nft.to_record(plan["elements"]), "conntrack": plan["conntrack"]}
        store.save(req.container_id, req.ifname, record)  # before touching the kernel
        try:
            enable_localnet(plan["localnet"])
            nft.add_elements(plan["elements"])
        except CNIError as e:
            # the transaction is atomic: nothing of ours went in
            store.remove(req.container_id, req.ifname)
            conflicts = _conflicts(plan["elements"])
            if conflicts:
                raise _bad("host port already in use: " + "; ".join(conflicts)) from None
            raise e
        flush(plan["conntrack"], udp_only=True)
    return prev  # chained: the previous result, unchanged


def _record_from_request(req: Request) -> dict | None:
    """No record (lost state dir, older version): rebuild from prevResult."""
    prev = req.prev_result
    if prev is None:
        return None
    try:
        plan = make_plan(parse_config(req), prev)
    except CNIError:
        return None
    return {"nft": nft.to_record(plan["elements"]), "conntrack": plan["conntrack"]}


def undo(record: dict) -> None:
    remove(nft.from_record(record.get("nft", [])))
    flush(record.get("conntrack", []))


def delete(req: Request) -> None:
    store = _store(req)
    record = store.load(req.container_id, req.ifname) or _record_from_request(req)
    if record is not None:
        undo(record)
    store.remove(req.container_id, req.ifname)


def check(req: Request) -> None:
    prev = req.require_prev_result("portmap")
    plan = make_plan(parse_config(req), prev)
    missing = [e for e, present in zip(plan["elements"], _present(plan["elements"])) if not present]
    if missing:
        _, s, e = missing[0]
        raise CNIError(CHECK_FAILED, f"portmap: {len(missing)} nftables element(s) missing, e.g. "
                       f"{json.dumps(e)} in {TABLE.family} {TABLE.name} {s}")


def gc(req: Request) -> None:
    _store(req).collect(req.config, undo)
