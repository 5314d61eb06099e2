"""A small ctnetlink client on the standard library: dump the conntrack
table of the current netns and delete the entries matching a filter (what
libnetfilter_conntrack's delete-by-filter does in userspace).  portmap
flushes the entries of removed mappings with it."""
import errno
import ipaddress
import _socket as socket  # not `socket`: it imports selectors and enum at start-up
import struct

from .netlink import F_DUMP, NLA_F_NESTED, Netlink, attr, parse_attrs
from .nfnetlink import NETLINK_NETFILTER

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
