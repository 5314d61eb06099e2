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

config -> plan -> kernel: the plan is the list of set elements, computed
from the config, prevResult's addresses and (for same-bridge) the host
interface that routes to each address, looked up before planning.
"""
import ipaddress

from .core.attachment import commit, release, replace, store_for
from .core.config import bad_config
from .core.errors import CNIError, require_same
from .core.plain import plain
from .core.request import Request
from .kernel import nft
from .kernel.netlink import Netlink
from .kernel.nft import concat, match, meta, payload

PLUGIN = "firewall"
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
@plain
class FirewallConfig:
    network: str
    ingress_policy: str = "open"


def parse_config(req: Request) -> FirewallConfig:
    c = req.config
    backend = c.get("backend") or "iptables"
    if backend not in ("iptables", "firewalld", "nftables"):
        raise bad_config(PLUGIN, f"unknown backend {backend!r}")
    policy = c.get("ingressPolicy") or "open"
    if policy not in POLICIES:
        raise bad_config(PLUGIN, f"unknown ingressPolicy {policy!r} (open or same-bridge)")
    for key in ("iptablesAdminChainName", "firewalldZone"):
        if c.get(key) is not None and not isinstance(c[key], str):
            raise bad_config(PLUGIN, f"{key} must be a string")
    return FirewallConfig(network=c["name"], ingress_policy=policy)


# --- plan ---------------------------------------------------------------------
def container_addresses(prev: dict) -> list:
    addrs = []
    for ip in prev.get("ips") or []:
        try:
            addrs.append(ipaddress.ip_interface(ip["address"]).ip)
        except (KeyError, ValueError, TypeError):
            raise bad_config(PLUGIN, f"prevResult has an invalid IP config {ip!r}") from None
    return addrs


def host_interfaces(cfg: FirewallConfig, addrs: list) -> dict:
    """address -> the host interface routing to it (its bridge); only
    same-bridge isolation needs them."""
    if cfg.ingress_policy != "same-bridge" or not addrs:
        return {}
    with Netlink() as host:
        return {addr: host.route_ifname(addr) for addr in addrs}


def make_elements(cfg: FirewallConfig, addrs: list, ifnames: dict) -> list[nft.Element]:
    elements = []
    for addr in addrs:
        v, a = str(addr.version), addr.compressed
        elements.append((TABLE, f"ctr{v}", a))
        if cfg.ingress_policy == "same-bridge":
            if not ifnames.get(addr):
                raise bad_config(PLUGIN, f"same-bridge: no host interface routes to {a}")
            elements.append((TABLE, f"isolated{v}", a))
            elements.append((TABLE, f"samebridge{v}", concat(ifnames[addr], a)))
    return elements


def plan(req: Request, prev: dict) -> list[nft.Element]:
    cfg = parse_config(req)
    addrs = container_addresses(prev)
    return make_elements(cfg, addrs, host_interfaces(cfg, addrs))


def record_from_prev_result(req: Request) -> dict | None:
    """No record: every set the addresses from prevResult may be in (the
    bridge may be gone, so no route lookup; removing an absent element is fine)."""
    prev = req.prev_result
    try:
        addrs = container_addresses(prev) if prev is not None else []
        parse_config(req)
    except CNIError:  # DEL must succeed on whatever it was given
        return None
    elements = make_elements(FirewallConfig(network=req.network), addrs, {})
    elements += [(TABLE, f"isolated{s[-1]}", e) for _, s, e in elements]
    return {"nft": nft.to_record(elements)}


def undo(record: dict) -> None:
    nft.remove_elements(nft.from_record(record.get("nft", [])))


# --- CNI commands ---------------------------------------------------------------
def add(req: Request) -> dict:
    prev = req.require_prev_result(PLUGIN)
    elements = plan(req, prev)
    store = store_for(req, PLUGIN)
    replace(store, req, undo)
    if elements:
        record = {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
                  "nft": nft.to_record(elements)}
        # one atomic transaction: if it fails, nothing of ours went in
        commit(store, req, record, lambda: nft.add_elements(elements), lambda r: None)
    return prev


def delete(req: Request) -> None:
    release(store_for(req, PLUGIN), req, undo, fallback=record_from_prev_result)


def check(req: Request) -> None:
    elements = plan(req, req.require_prev_result(PLUGIN))
    require_same(PLUGIN, [f"element {e} missing from {TABLE.family} {TABLE.name} {s}"
                          for (_, s, e), here in zip(elements, nft.present(elements)) if not here])


def gc(req: Request) -> None:
    store_for(req, PLUGIN).collect(req.config, undo)
