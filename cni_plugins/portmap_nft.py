"""The portmap plugin's kernel state: one nftables table of maps, and a
small ctnetlink client to flush the conntrack entries of removed mappings.

Table ``inet pycni_portmap`` (rules are static, containers are elements):

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
  mapping one element for the container's own subnet (hairpin: a pod
  reaching its own or a neighbour's published port through the host) and,
  for IPv4, one for 127.0.0.0/8 (the host reaching it on localhost).
"""
import errno
import ipaddress
import _socket as socket  # not `socket`: it imports selectors and enum at start-up
import struct

from .kernel import nft
from .kernel.netlink import F_DUMP, NLA_F_NESTED, Netlink, attr, parse_attrs
from .kernel.nft import concat, match, meta, payload, prefix

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132}

_KEY = concat(meta("l4proto"), payload("th", "dport"))


def _hkey(ip):
    return concat(payload(ip, "daddr"), meta("l4proto"), payload("th", "dport"))


def _dnat(family, key, addr_map, port_map):
    return {"dnat": {"family": family, "addr": {"map": {"key": key, "data": f"@{addr_map}"}},
                     "port": {"map": {"key": key, "data": f"@{port_map}"}}}}


def _nfproto(name):
    return match(meta("nfproto"), name)


_LOCAL = match({"fib": {"result": "type", "flags": ["daddr"]}}, "local")


def _snat_rule(ip, set_name):
    return [match({"ct": {"key": "status"}}, "dnat", op="in"),
            match(concat(payload(ip, "saddr"), payload(ip, "daddr"), meta("l4proto"), payload("th", "dport")),
                  f"@{set_name}"),
            {"masquerade": None}]


_SVC = ["inet_proto", "inet_service"]

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
        [_nfproto("ipv4"), _dnat("ip", _KEY, "addr4", "port4")],
        [_nfproto("ipv6"), _dnat("ip6", _KEY, "addr6", "port6")],
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


def map_key(element) -> tuple | None:
    """(set name, key as JSON) of a map element, None for a set element."""
    _, set_name, elem = element
    if isinstance(elem, list):
        return set_name, repr(elem[0])
    return None


# --- conntrack ----------------------------------------------------------------
# A stdlib ctnetlink client: dump the table and delete entries matching a
# filter (what libnetfilter_conntrack's delete-by-filter does in userspace).
NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_GET, IPCTNL_MSG_CT_DELETE = 1, 2
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_ZONE = 1, 2, 18
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
_NFGEN = struct.Struct("=BBH")


def _tuple(raw: bytes) -> dict:
    attrs = parse_attrs(raw)
    ip = parse_attrs(attrs.get(CTA_TUPLE_IP, b""))
    proto = parse_attrs(attrs.get(CTA_TUPLE_PROTO, b""))
    src = ip.get(CTA_IP_V4_SRC) or ip.get(CTA_IP_V6_SRC)
    dst = ip.get(CTA_IP_V4_DST) or ip.get(CTA_IP_V6_DST)
    return {
        "src": ipaddress.ip_address(src) if src else None,
        "dst": ipaddress.ip_address(dst) if dst else None,
        "proto": proto[CTA_PROTO_NUM][0] if CTA_PROTO_NUM in proto else 0,
        "sport": struct.unpack("!H", proto[CTA_PROTO_SRC_PORT])[0] if CTA_PROTO_SRC_PORT in proto else 0,
        "dport": struct.unpack("!H", proto[CTA_PROTO_DST_PORT])[0] if CTA_PROTO_DST_PORT in proto else 0,
    }


def _matches(orig: dict, reply: dict, f: dict) -> bool:
    if orig["proto"] != f["proto"] or orig["dport"] != f["dport"]:
        return False
    if f.get("dst") and orig["dst"] != ipaddress.ip_address(f["dst"]):
        return False
    if f.get("reply_src") and reply["src"] != ipaddress.ip_address(f["reply_src"]):
        return False
    return True


class Conntrack:
    """ctnetlink over a NETLINK_NETFILTER socket in the current netns."""

    def __init__(self):
        self.nl = Netlink(NETLINK_NETFILTER)

    def close(self) -> None:
        self.nl.close()

    def _request(self, msg: int, flags: int, family: int, body: bytes = b"") -> list[bytes]:
        return self.nl.request((NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, _NFGEN.pack(family, 0, 0) + body)

    def entries(self, family: int) -> list[tuple[dict, dict, dict]]:
        """(original tuple, reply tuple, raw attributes) of every entry."""
        out = []
        af = socket.AF_INET6 if family == 6 else socket.AF_INET
        for entry in self._request(IPCTNL_MSG_CT_GET, F_DUMP, af):
            attrs = parse_attrs(entry, _NFGEN.size)
            if CTA_TUPLE_ORIG in attrs and CTA_TUPLE_REPLY in attrs:
                out.append((_tuple(attrs[CTA_TUPLE_ORIG]), _tuple(attrs[CTA_TUPLE_REPLY]), attrs))
        return out

    def delete_matching(self, filters: list[dict]) -> int:
        """Delete every entry matching any filter ({family 4|6, proto number,
        dport: original destination port, optional dst: original destination
        address, optional reply_src: the address the flow was DNATed to}).
        Returns how many were deleted."""
        deleted = 0
        for family in sorted({f["family"] for f in filters}):
            af = socket.AF_INET6 if family == 6 else socket.AF_INET
            mine = [f for f in filters if f["family"] == family]
            for orig, reply, attrs in self.entries(family):
                if not any(_matches(orig, reply, f) for f in mine):
                    continue
                body = attr(CTA_TUPLE_ORIG | NLA_F_NESTED, attrs[CTA_TUPLE_ORIG])
                if CTA_ZONE in attrs:
                    body += attr(CTA_ZONE, attrs[CTA_ZONE])
                try:
                    self._request(IPCTNL_MSG_CT_DELETE, 0, af, body)
                    deleted += 1
                except OSError as e:
                    if e.errno != errno.ENOENT:  # it expired meanwhile
                        raise
        return deleted


def flush_conntrack(filters: list[dict]) -> int:
    if not filters:
        return 0
    ct = Conntrack()
    try:
        return ct.delete_matching(filters)
    finally:
        ct.close()
