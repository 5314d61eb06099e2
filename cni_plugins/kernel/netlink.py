"""A small rtnetlink client on the standard library's socket module.

Just what the plugins need: links (veth, bridge, bridge-port options, VLANs),
addresses and routes.  pyroute2 does all of this and more, but importing it
costs more than a whole ADD is allowed to take, and this module runs on every
container start.  Tests observe the kernel independently, with iproute2.
"""
import errno
import ipaddress
import os
import _socket as socket  # not `socket`: it imports selectors and enum at start-up
import struct

from .errors import NetlinkError

# Message types and flags (linux/netlink.h, linux/rtnetlink.h).
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWLINK, RTM_DELLINK, RTM_GETLINK, RTM_SETLINK = 16, 17, 18, 19
RTM_NEWADDR, RTM_DELADDR, RTM_GETADDR = 20, 21, 22
RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
F_REQUEST, F_MULTI, F_ACK = 0x1, 0x2, 0x4
F_DUMP, F_REPLACE, F_EXCL, F_CREATE = 0x300, 0x100, 0x200, 0x400
NLA_F_NESTED = 0x8000
SOL_NETLINK, NETLINK_EXT_ACK = 270, 11
NLMSGERR_ATTR_MSG = 1

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_MASTER = 1, 3, 4, 10
IFLA_LINKINFO, IFLA_NET_NS_FD, IFLA_AF_SPEC = 18, 28, 26
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
VETH_INFO_PEER = 1
IFLA_BR_VLAN_FILTERING = 7
IFLA_BRPORT_MODE, IFLA_BRPORT_ISOLATED = 4, 33
IFLA_BRIDGE_VLAN_INFO = 2
BRIDGE_VLAN_INFO_PVID, BRIDGE_VLAN_INFO_UNTAGGED = 0x2, 0x4
BRIDGE_VLAN_INFO_RANGE_BEGIN, BRIDGE_VLAN_INFO_RANGE_END = 0x8, 0x10
IFF_UP, IFF_PROMISC = 0x1, 0x100
IFF_ALLMULTI = 0x200
IFLA_LINK, IFLA_TXQLEN = 5, 13

IFA_ADDRESS, IFA_LOCAL, IFA_BROADCAST, IFA_FLAGS = 1, 2, 4, 8
IFA_F_NODAD = 0x2
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_METRICS, RTA_TABLE = 1, 4, 5, 6, 8, 15
RTAX_MTU, RTAX_ADVMSS = 2, 8
RT_TABLE_MAIN, RTPROT_BOOT, RTN_UNICAST = 254, 3, 1
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK, RT_SCOPE_HOST = 0, 253, 254

_IFINFO = struct.Struct("=BxHiII")
_IFADDR = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLHDR = struct.Struct("=IHHII")
_RTA = struct.Struct("=HH")


def _align(n: int) -> int:
    return (n + 3) & ~3


def attr(kind: int, payload: bytes) -> bytes:
    length = _RTA.size + len(payload)
    return _RTA.pack(length, kind) + payload + b"\0" * (_align(length) - length)


def nested(kind: int, *attrs: bytes) -> bytes:
    return attr(kind | NLA_F_NESTED, b"".join(attrs))


def attr_str(kind: int, value: str) -> bytes:
    return attr(kind, value.encode() + b"\0")


def attr_u8(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=B", value))


def attr_u16(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=H", value))


def attr_u32(kind: int, value: int) -> bytes:
    return attr(kind, struct.pack("=I", value))


def iter_attrs(data: bytes, offset: int = 0):
    """(type, payload) of each attribute, in order (a list attribute
    repeats its type)."""
    while offset + _RTA.size <= len(data):
        length, kind = _RTA.unpack_from(data, offset)
        if length < _RTA.size:
            break
        yield kind & 0x3FFF, data[offset + _RTA.size : offset + length]
        offset += _align(length)


def parse_attrs(data: bytes, offset: int = 0) -> dict[int, bytes]:
    return dict(iter_attrs(data, offset))


def cstr(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


def mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


def mac_str(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


class Link:
    """What we read back about one interface."""

    __slots__ = ("index", "name", "flags", "mtu", "mac", "master", "kind", "attrs")

    def __init__(self, payload: bytes):
        _, _, self.index, self.flags, _ = _IFINFO.unpack_from(payload)
        self.attrs = parse_attrs(payload, _IFINFO.size)
        self.name = cstr(self.attrs.get(IFLA_IFNAME, b""))
        self.mtu = struct.unpack("=I", self.attrs[IFLA_MTU])[0] if IFLA_MTU in self.attrs else 0
        self.mac = mac_str(self.attrs.get(IFLA_ADDRESS, b""))
        self.master = struct.unpack("=I", self.attrs[IFLA_MASTER])[0] if IFLA_MASTER in self.attrs else 0
        info = parse_attrs(self.attrs.get(IFLA_LINKINFO, b""))
        self.kind = cstr(info.get(IFLA_INFO_KIND, b""))

    @property
    def up(self) -> bool:
        return bool(self.flags & IFF_UP)

    @property
    def promisc(self) -> bool:
        return bool(self.flags & IFF_PROMISC)

    @property
    def allmulti(self) -> bool:
        return bool(self.flags & IFF_ALLMULTI)

    @property
    def txqlen(self) -> int:
        raw = self.attrs.get(IFLA_TXQLEN)
        return struct.unpack("=I", raw)[0] if raw else 0

    @property
    def peer_index(self) -> int:
        """IFLA_LINK: for a veth, its peer's ifindex (in the peer's netns)."""
        raw = self.attrs.get(IFLA_LINK)
        return struct.unpack("=I", raw)[0] if raw else 0


def error_of(payload: bytes, flags: int, where: str = "") -> NetlinkError | None:
    """The error an NLMSG_ERROR reply carries (None: an acknowledgement),
    with the kernel's extended-ack message when it sent one."""
    code = -struct.unpack_from("=i", payload)[0]
    if code == 0:
        return None
    # The original request follows the error code; ext-ack attributes
    # follow that (only its header when capped).
    text = ""
    if flags & 0x200:  # NLM_F_ACK_TLVS
        inner_len = _NLHDR.unpack_from(payload, 4)[0]
        skip = 4 + (_NLHDR.size if flags & 0x100 else inner_len)
        text = cstr(parse_attrs(payload, skip).get(NLMSGERR_ATTR_MSG, b""))
    return NetlinkError(code, f"{os.strerror(code)}{': ' + text if text else ''}{where}")


class Netlink:
    """One netlink socket (NETLINK_ROUTE unless told otherwise), bound to
    the netns it was opened in."""

    def __init__(self, protocol: int = 0):
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            self.sock.setsockopt(SOL_NETLINK, NETLINK_EXT_ACK, 1)
        except OSError:
            pass
        self.sock.bind((0, 0))
        self.seq = 0

    def close(self) -> None:
        self.sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def request(self, msg_type: int, flags: int, body: bytes) -> list[bytes]:
        """Send one request; return the payloads of the replies (for dumps,
        every part).  Raises NetlinkError carrying the kernel's errno and, when
        it sends one, its extended-ack message."""
        self.seq += 1
        seq = self.seq
        flags |= F_REQUEST | F_ACK
        self.sock.send(_NLHDR.pack(_NLHDR.size + len(body), msg_type, flags, seq, 0) + body)
        replies = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _NLHDR.size <= len(data):
                length, rtype, rflags, rseq, _ = _NLHDR.unpack_from(data, offset)
                payload = data[offset + _NLHDR.size : offset + length]
                offset += _align(length)
                if rseq != seq:
                    continue
                if rtype == NLMSG_DONE:
                    return replies
                if rtype == NLMSG_ERROR:
                    error = error_of(payload, rflags)
                    if error is None:
                        if flags & F_DUMP == F_DUMP:
                            continue
                        return replies
                    raise error
                replies.append(payload)

    # --- links -----------------------------------------------------------
    def link(self, name: str) -> Link | None:
        body = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + attr_str(IFLA_IFNAME, name)
        try:
            return Link(self.request(RTM_GETLINK, 0, body)[0])
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT, errno.ERANGE):  # ERANGE: a name too long for any link
                return None
            raise

    def link_by_index(self, index: int) -> Link | None:
        try:
            return Link(self.request(RTM_GETLINK, 0, _IFINFO.pack(socket.AF_UNSPEC, 0, index, 0, 0))[0])
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return None
            raise

    def links(self) -> list[Link]:
        return [Link(p) for p in self.request(RTM_GETLINK, F_DUMP, _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0))]

    def create_bridge(self, name: str, mtu: int = 0, vlan_filtering: bool = False, mac: str = "") -> None:
        """A bridge given a MAC keeps it; without one it takes its lowest
        port's, which changes as containers come and go."""
        data = [attr_u8(IFLA_BR_VLAN_FILTERING, 1)] if vlan_filtering else []
        attrs = [attr_str(IFLA_IFNAME, name),
                 nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"), nested(IFLA_INFO_DATA, *data))]
        if mtu:
            attrs.append(attr_u32(IFLA_MTU, mtu))
        if mac:
            attrs.append(attr(IFLA_ADDRESS, mac_bytes(mac)))
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(attrs))

    def set_bridge_vlan_filtering(self, index: int, on: bool) -> None:
        body = _IFINFO.pack(0, 0, index, 0, 0) + nested(
            IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "bridge"),
            nested(IFLA_INFO_DATA, attr_u8(IFLA_BR_VLAN_FILTERING, int(on))))
        self.request(RTM_NEWLINK, 0, body)

    def create_veth(self, name: str, peer: str, peer_netns_fd: int, mtu: int = 0,
                    peer_mac: str = "") -> None:
        """Create a veth pair with ``peer`` placed straight into another netns:
        one message, so a failure leaves no half of a pair behind."""
        peer_attrs = [attr_str(IFLA_IFNAME, peer), attr_u32(IFLA_NET_NS_FD, peer_netns_fd)]
        own = [attr_str(IFLA_IFNAME, name)]
        if mtu:
            peer_attrs.append(attr_u32(IFLA_MTU, mtu))
            own.append(attr_u32(IFLA_MTU, mtu))
        if peer_mac:
            peer_attrs.append(attr(IFLA_ADDRESS, mac_bytes(peer_mac)))
        info = nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "veth"), nested(
            IFLA_INFO_DATA, nested(VETH_INFO_PEER, _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(peer_attrs))))
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(own) + info)

    def set_link(self, index: int, *, up: bool | None = None, promisc: bool | None = None,
                 master: int | None = None, mtu: int = 0) -> None:
        flags = change = 0
        if up is not None:
            change |= IFF_UP
            flags |= IFF_UP if up else 0
        if promisc is not None:
            change |= IFF_PROMISC
            flags |= IFF_PROMISC if promisc else 0
        attrs = b""
        if master is not None:
            attrs += attr_u32(IFLA_MASTER, master)
        if mtu:
            attrs += attr_u32(IFLA_MTU, mtu)
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def set_link_attrs(self, index: int, *, mac: str = "", txqlen: int | None = None,
                       allmulti: bool | None = None) -> None:
        """What set_link leaves out: MAC address, tx queue length, all-multicast."""
        flags = change = 0
        if allmulti is not None:
            change |= IFF_ALLMULTI
            flags |= IFF_ALLMULTI if allmulti else 0
        attrs = b""
        if mac:
            attrs += attr(IFLA_ADDRESS, mac_bytes(mac))
        if txqlen is not None:
            attrs += attr_u32(IFLA_TXQLEN, txqlen)
        self.request(RTM_NEWLINK, 0, _IFINFO.pack(0, 0, index, flags, change) + attrs)

    def create_ifb(self, name: str, mtu: int = 0, txqlen: int | None = None) -> None:
        """An Intermediate Functional Block device (tc redirects traffic into it)."""
        attrs = [attr_str(IFLA_IFNAME, name), nested(IFLA_LINKINFO, attr_str(IFLA_INFO_KIND, "ifb"))]
        if mtu:
            attrs.append(attr_u32(IFLA_MTU, mtu))
        if txqlen is not None:
            attrs.append(attr_u32(IFLA_TXQLEN, txqlen))
        self.request(RTM_NEWLINK, F_CREATE | F_EXCL, _IFINFO.pack(0, 0, 0, 0, 0) + b"".join(attrs))

    def set_bridge_port(self, index: int, *, hairpin: bool | None = None,
                        isolated: bool | None = None) -> None:
        data = []
        if hairpin is not None:
            data.append(attr_u8(IFLA_BRPORT_MODE, int(hairpin)))
        if isolated is not None:
            data.append(attr_u8(IFLA_BRPORT_ISOLATED, int(isolated)))
        if not data:
            return
        body = _IFINFO.pack(0, 0, index, 0, 0) + nested(
            IFLA_LINKINFO, attr_str(IFLA_INFO_SLAVE_KIND, "bridge"), nested(IFLA_INFO_SLAVE_DATA, *data))
        self.request(RTM_NEWLINK, 0, body)

    def bridge_vlan(self, index: int, vid: int, *, add: bool = True, pvid: bool = False,
                    untagged: bool = False, last_vid: int = 0, self_: bool = False) -> None:
        """`bridge vlan add|del dev X vid N [pvid] [untagged] [self]`."""
        flags = (BRIDGE_VLAN_INFO_PVID if pvid else 0) | (BRIDGE_VLAN_INFO_UNTAGGED if untagged else 0)
        if last_vid and last_vid != vid:
            infos = attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags | BRIDGE_VLAN_INFO_RANGE_BEGIN, vid)) + \
                attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags | BRIDGE_VLAN_INFO_RANGE_END, last_vid))
        else:
            infos = attr(IFLA_BRIDGE_VLAN_INFO, struct.pack("=HH", flags, vid))
        spec = infos
        if self_:
            spec = attr_u16(0, 2) + infos  # IFLA_BRIDGE_FLAGS = BRIDGE_FLAGS_SELF
        body = _IFINFO.pack(socket.AF_BRIDGE, 0, index, 0, 0) + nested(IFLA_AF_SPEC, spec)
        self.request(RTM_SETLINK if add else RTM_DELLINK, 0, body)

    def delete_link(self, index: int) -> bool:
        """Delete a link; False when it was already gone."""
        try:
            self.request(RTM_DELLINK, 0, _IFINFO.pack(0, 0, index, 0, 0))
            return True
        except NetlinkError as e:
            if e.errno in (errno.ENODEV, errno.ENOENT):
                return False
            raise

    # --- addresses ---------------------------------------------------------
    def addresses(self, index: int = 0) -> list[tuple[int, ipaddress._BaseNetwork]]:
        """(ifindex, interface address) of every address, or one link's."""
        out = []
        for payload in self.request(RTM_GETADDR, F_DUMP, _IFADDR.pack(0, 0, 0, 0, 0)):
            family, plen, _, _, ifindex = _IFADDR.unpack_from(payload)
            if index and ifindex != index:
                continue
            attrs = parse_attrs(payload, _IFADDR.size)
            raw = attrs.get(IFA_LOCAL) or attrs.get(IFA_ADDRESS)
            if raw:
                out.append((ifindex, ipaddress.ip_interface((ipaddress.ip_address(raw), plen))))
        return out

    def _addr(self, msg: int, flags: int, index: int, iface, extra_flags: int = 0) -> None:
        family = socket.AF_INET6 if iface.version == 6 else socket.AF_INET
        raw = iface.ip.packed
        attrs = attr(IFA_LOCAL, raw) + attr(IFA_ADDRESS, raw)
        if iface.version == 4 and iface.network.prefixlen < 31 and msg == RTM_NEWADDR:
            attrs += attr(IFA_BROADCAST, iface.network.broadcast_address.packed)
        if extra_flags:
            attrs += attr_u32(IFA_FLAGS, extra_flags)
        body = _IFADDR.pack(family, iface.network.prefixlen, 0, RT_SCOPE_UNIVERSE, index) + attrs
        self.request(msg, flags, body)

    def add_address(self, index: int, iface, nodad: bool = False) -> None:
        self._addr(RTM_NEWADDR, F_CREATE | F_EXCL, index, iface, IFA_F_NODAD if nodad else 0)

    def delete_address(self, index: int, iface) -> bool:
        try:
            self._addr(RTM_DELADDR, 0, index, iface)
            return True
        except NetlinkError as e:
            if e.errno in (errno.EADDRNOTAVAIL, errno.ENODEV, errno.ENOENT):
                return False
            raise

    # --- routes ------------------------------------------------------------
    def add_route(self, dst, gateway=None, oif: int = 0, *, mtu: int = 0, advmss: int = 0,
                  priority: int = 0, table: int = 0, scope: int | None = None) -> None:
        dst = ipaddress.ip_network(dst, strict=False)
        family = socket.AF_INET6 if dst.version == 6 else socket.AF_INET
        if scope is None:
            scope = RT_SCOPE_UNIVERSE if gateway else RT_SCOPE_LINK
        attrs = attr(RTA_DST, dst.network_address.packed) if dst.prefixlen else b""
        if gateway:
            attrs += attr(RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
        if oif:
            attrs += attr_u32(RTA_OIF, oif)
        if priority:
            attrs += attr_u32(RTA_PRIORITY, priority)
        if table > 255:
            attrs += attr_u32(RTA_TABLE, table)
        metrics = b""
        if mtu:
            metrics += attr_u32(RTAX_MTU, mtu)
        if advmss:
            metrics += attr_u32(RTAX_ADVMSS, advmss)
        if metrics:
            attrs += nested(RTA_METRICS, metrics)
        body = _RTMSG.pack(family, dst.prefixlen, 0, 0, table if 0 < table <= 255 else RT_TABLE_MAIN,
                           RTPROT_BOOT, scope, RTN_UNICAST, 0) + attrs
        self.request(RTM_NEWROUTE, F_CREATE | F_EXCL, body)

    def route_ifname(self, address) -> str:
        """The interface of the most specific main-table route with an
        output device that covers ``address`` ('' when none does)."""
        addr = ipaddress.ip_address(address)
        best = None
        for r in self.routes(socket.AF_INET if addr.version == 4 else socket.AF_INET6):
            if addr in r["dst"] and r["oif"] and (best is None or r["dst"].prefixlen > best["dst"].prefixlen):
                best = r
        link = self.link_by_index(best["oif"]) if best else None
        return link.name if link else ""

    def routes(self, family: int = socket.AF_UNSPEC) -> list[dict]:
        """Main-table unicast routes as {dst, gw, oif} with dst an ip_network."""
        out = []
        for payload in self.request(RTM_GETROUTE, F_DUMP, _RTMSG.pack(family, 0, 0, 0, 0, 0, 0, 0, 0)):
            fam, dst_len, _, _, table, _, _, rtype, _ = _RTMSG.unpack_from(payload)
            attrs = parse_attrs(payload, _RTMSG.size)
            if RTA_TABLE in attrs:
                table = struct.unpack("=I", attrs[RTA_TABLE])[0]
            if rtype != RTN_UNICAST or table != RT_TABLE_MAIN:
                continue
            zero = b"\0" * (16 if fam == socket.AF_INET6 else 4)
            dst = ipaddress.ip_network((ipaddress.ip_address(attrs.get(RTA_DST, zero)), dst_len))
            gw = ipaddress.ip_address(attrs[RTA_GATEWAY]) if RTA_GATEWAY in attrs else None
            oif = struct.unpack("=I", attrs[RTA_OIF])[0] if RTA_OIF in attrs else 0
            out.append({"dst": dst, "gw": gw, "oif": oif})
        return out
