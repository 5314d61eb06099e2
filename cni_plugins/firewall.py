"""firewall: let a container's traffic through the host's forward path, and
optionally isolate it to its own bridge (a chained plugin).

Everything lives in table ``inet pycni_firewall``: one base chain on the
forward hook (filter, priority -10, policy accept) with static rules and
per-container set elements:

* ``ctr4``/``ctr6``: the container's addresses.  Forwarded packets from
  them, and established/related packets to them, are accepted.
* ``samebridge4``/``samebridge6`` (``ifname . addr``) and ``isolated4``/
  ``isolated6`` (addr), for ``ingressPolicy: same-bridge``: a packet to an
  isolated container is accepted when it arrives from the container's own
  host interface (its bridge), when it belongs to an established flow, or
  when it was DNATed (a published port, see portmap); every other forwarded
  packet to it is dropped, so pods on other bridges (or anything routed in
  from elsewhere) cannot open connections to it.

In nftables an ``accept`` ends only the base chain it is in: every other
base chain on the hook still sees the packet, and a drop in any of them
wins.  So unlike the reference, which inserts ACCEPT rules into iptables'
FORWARD chain ahead of its policy, our accepts cannot open a host whose own
forward chain drops by default; what this table guarantees is that it never
drops container traffic itself except for isolation.  It runs at priority
-10, before the usual filter chains (0), so isolation is decided first.
The ``backend`` key (``iptables``, ``firewalld``) is accepted for
compatibility; we always use nftables.  ``iptablesAdminChainName`` and
``firewalldZone`` are accepted and ignored.
"""
import ipaddress
import _socket as socket  # not `socket`: it imports selectors and enum at start-up

from .kernel import netlink, nft
from .core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG
from .kernel.nft import concat, match, meta, payload
from .core.request import Request
from .core.records import RecordStore

_ACCEPT, _DROP = {"accept": None}, {"drop": None}
_EST = match({"ct": {"key": "state"}}, ["established", "related"], op="in")
_DNAT = match({"ct": {"key": "status"}}, "dnat", op="in")


def _rules(ip: str, v: str) -> list:
    src, dst = payload(ip, "saddr"), payload(ip, "daddr")
    return [
        [match(dst, f"@ctr{v}"), _EST, _ACCEPT],
        [match(concat(meta("iifname"), dst), f"@samebridge{v}"), _ACCEPT],
        [match(dst, f"@isolated{v}"), _DNAT, _ACCEPT],
        [match(dst, f"@isolated{v}"), _DROP],
        [match(src, f"@ctr{v}"), _ACCEPT],
        [match(dst, f"@ctr{v}"), _ACCEPT],
    ]


TABLE = nft.Table("inet", "pycni_firewall", sets={
    "ctr4": {"type": "ipv4_addr"},
    "ctr6": {"type": "ipv6_addr"},
    "isolated4": {"type": "ipv4_addr"},
    "isolated6": {"type": "ipv6_addr"},
    "samebridge4": {"type": ["ifname", "ipv4_addr"]},
    "samebridge6": {"type": ["ifname", "ipv6_addr"]},
}, chains={
    "forward": ({"type": "filter", "hook": "forward", "prio": -10, "policy": "accept"},
                _rules("ip", "4") + _rules("ip6", "6")),
})

POLICIES = ("open", "same-bridge")


# --- config -------------------------------------------------------------------
def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"firewall: {msg}")


def parse_config(req: Request) -> dict:
    c = req.config
    backend = c.get("backend") or "iptables"
    if backend not in ("iptables", "firewalld", "nftables"):
        raise _bad(f"unknown backend {backend!r}")
    policy = c.get("ingressPolicy") or "open"
    if policy not in POLICIES:
        raise _bad(f"unknown ingressPolicy {policy!r} (open or same-bridge)")
    for key in ("iptablesAdminChainName", "firewalldZone"):
        if c.get(key) is not None and not isinstance(c[key], str):
            raise _bad(f"{key} must be a string")
    return {"network": c["name"], "ingressPolicy": policy}



# --- plan ---------------------------------------------------------------------
def _host_ifname(host: netlink.Netlink, addr) -> str:
    best = None
    for r in host.routes(socket.AF_INET if addr.version == 4 else socket.AF_INET6):
        if addr in r["dst"] and r["oif"] and (best is None or r["dst"].prefixlen > best["dst"].prefixlen):
            best = r
    link = host.link_by_index(best["oif"]) if best else None
    return link.name if link else ""


def make_elements(cfg: dict, prev: dict) -> list[nft.Element]:
    addrs = []
    for ip in prev.get("ips") or []:
        try:
            addrs.append(ipaddress.ip_interface(ip["address"]).ip)
        except (KeyError, ValueError, TypeError):
            raise _bad(f"prevResult has an invalid IP config {ip!r}") from None
    elements = []
    isolate = cfg["ingressPolicy"] == "same-bridge"
    host = netlink.Netlink() if isolate and addrs else None
    try:
        for addr in addrs:
            v, a = str(addr.version), addr.compressed
            elements.append((TABLE, f"ctr{v}", a))
            if isolate:
                ifname = _host_ifname(host, addr)
                if not ifname:
                    raise _bad(f"same-bridge: no host interface routes to {a}")
                elements.append((TABLE, f"isolated{v}", a))
                elements.append((TABLE, f"samebridge{v}", concat(ifname, a)))
    finally:
        if host is not None:
            host.close()
    return elements


# --- CNI commands ---------------------------------------------------------------
def _store(req: Request) -> RecordStore:
    return RecordStore("firewall", req.config["name"])


def add(req: Request) -> dict:
    prev = req.require_prev_result("firewall")
    elements = make_elements(parse_config(req), prev)
    if elements:
        store = _store(req)
        store.save(req.container_id, req.ifname, {
            "containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "nft": nft.to_record(elements)})
        try:
            nft.add_elements(elements)
        except BaseException:
            store.remove(req.container_id, req.ifname)  # atomic: nothing went in
            raise
    return prev


def delete(req: Request) -> None:
    store = _store(req)
    record = store.load(req.container_id, req.ifname)
    if record is not None:
        elements = nft.from_record(record.get("nft", []))
    else:
        # no record: the addresses from prevResult (the bridge may be gone,
        # so every set is tried; removing an absent element is fine)
        elements = []
        try:
            cfg = {**parse_config(req), "ingressPolicy": "open"}
            prev = req.prev_result
            if prev is not None:
                elements = make_elements(cfg, prev)
                elements += [(TABLE, f"isolated{s[-1]}", e) for _, s, e in elements]
        except CNIError:
            elements = []
    nft.remove_elements(elements)
    store.remove(req.container_id, req.ifname)


def check(req: Request) -> None:
    prev = req.require_prev_result("firewall")
    elements = make_elements(parse_config(req), prev)
    have = nft.elements_of(TABLE)
    for _, s, e in elements:
        if e not in have.get(s, []):
            raise CNIError(CHECK_FAILED, f"firewall: element {e} missing from {TABLE.family} {TABLE.name} {s}")


def gc(req: Request) -> None:
    _store(req).collect(req.config, lambda record: nft.remove_elements(nft.from_record(record.get("nft", []))))
