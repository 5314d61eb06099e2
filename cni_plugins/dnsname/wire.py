"""DNS wire format, as much as the resolver needs: parse a query (one
question, EDNS OPT), build an answer around ready-made record bytes, error
replies.  RFC 1035 and RFC 6891; names are compared lower-cased."""
import ipaddress
import struct

A, NS, SOA, PTR, AAAA, OPT, ANY = 1, 2, 6, 12, 28, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
EDNS_PAYLOAD = 1232           # what we advertise (the DNS flag day 2020 value)
TTL = 0                       # as dnsmasq's local-ttl: containers come and go
HEADER = struct.Struct("!HHHHHH")
RR = struct.Struct("!HHHIH")  # compressed owner (pointer), type, class, ttl, rdlength


class Drop(Exception):
    """Not worth an answer (a response, or too short for a header)."""


class Refuse(Exception):
    def __init__(self, rcode: int):
        super().__init__(rcode)
        self.rcode = rcode


class Query:
    __slots__ = ("flags", "qname", "qtype", "qclass", "qend", "edns", "payload", "version", "do",
                 "options")


def encode_name(name: str) -> bytes:
    out = b"".join(bytes([len(label)]) + label for label in name.strip(".").encode().split(b".") if label)
    return out + b"\0"


def _skip_name(data: bytes, p: int) -> int:
    """The end of the name at ``p``; a pointer must point back (RFC 1035 4.1.4:
    to a prior occurrence; we need not follow it)."""
    while True:
        if p >= len(data):
            raise Refuse(FORMERR)
        n = data[p]
        if n & 0xC0 == 0xC0:
            if p + 2 > len(data) or (n & 0x3F) << 8 | data[p + 1] >= p:
                raise Refuse(FORMERR)
            return p + 2
        if n & 0xC0:
            raise Refuse(FORMERR)
        if n == 0:
            return p + 1
        p += 1 + n


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise Drop
    _, flags, qd, an, ns, ar = HEADER.unpack_from(data)
    if flags & 0x8000:
        raise Drop
    if (flags >> 11) & 0xF != 0:
        raise Refuse(NOTIMP)
    if qd != 1:
        raise Refuse(FORMERR)
    labels, p, size = [], 12, len(data)
    while True:
        if p >= size:
            raise Refuse(FORMERR)
        n = data[p]
        if n == 0:
            p += 1
            break
        if n > 63:
            raise Refuse(FORMERR)  # no compression in the question: nothing to point at
        labels.append(data[p + 1:p + 1 + n])
        p += 1 + n
    if p + 4 > size or p - 12 > 255:
        raise Refuse(FORMERR)
    q = Query()
    q.flags = flags
    qname = b".".join(labels)
    if qname.count(b".") != len(labels) - 1 or b"\\" in qname:
        # a dot or backslash inside a label: escaped (RFC 1035 5.1), so it cannot
        # pass for a name of other labels
        qname = b".".join(x.replace(b"\\", b"\\092").replace(b".", b"\\046") for x in labels)
    q.qname = qname.lower()
    q.qtype, q.qclass = struct.unpack_from("!HH", data, p)
    q.qend = p = p + 4
    q.edns = False
    q.payload, q.version, q.do, q.options = 512, 0, 0, False
    for i in range(an + ns + ar):
        start = p
        p = _skip_name(data, p)
        if p + 10 > size:
            raise Refuse(FORMERR)
        rtype, rclass, ttl, rdlen = struct.unpack_from("!HHIH", data, p)
        p += 10 + rdlen
        if p > size:
            raise Refuse(FORMERR)
        if rtype == OPT:
            if i < an + ns or q.edns or data[start] != 0:
                raise Refuse(FORMERR)  # one OPT, in the additional section, owned by the root
            q.edns = True
            q.payload = max(512, rclass)
            q.version = (ttl >> 16) & 0xFF
            q.do = ttl & 0x8000
            q.options = rdlen > 0
    return q


def build(q: Query, data: bytes, rcode: int, answers: bytes = b"", an: int = 0, auth: bytes = b"",
          ns: int = 0, aa: bool = True, limit: int = 512) -> bytes:
    flags = 0x8080 | (q.flags & 0x0110) | (0x0400 if aa else 0) | (rcode & 0xF)
    opt, ar = b"", 0
    if q.edns:
        opt, ar = opt_record(rcode, q.do), 1
    question = data[12:q.qend]
    msg = HEADER.pack(0, flags, 1, an, ns, ar) + question + answers + auth + opt
    if len(msg) > limit:
        msg = HEADER.pack(0, flags | 0x0200, 1, 0, 0, ar) + question + opt
    return data[:2] + msg[2:]


def opt_record(rcode: int, do: int) -> bytes:
    """Our OPT: the payload size we take, the upper bits of ``rcode``, DO as the query had it."""
    return b"\0" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, ((rcode >> 4) << 24) | do, 0)


def error_reply(data: bytes, rcode: int) -> bytes:
    """An answer to a query we could not parse: header only."""
    flags = struct.unpack_from("!H", data, 2)[0]
    return data[:2] + struct.pack("!HHHHH", 0x8080 | (flags & 0x7900) | rcode, 0, 0, 0, 0)


def servfail(data: bytes) -> bytes:
    """SERVFAIL for a query that was parsed before (forwarded ones)."""
    q = parse_query(data)
    return build(q, data, SERVFAIL, aa=False, limit=65535)


def reverse_name(ip) -> bytes:
    return ip.reverse_pointer.lower().encode()


def reverse_to_ip(name: bytes):
    labels = name.split(b".")
    try:
        if name.endswith(b".in-addr.arpa") and len(labels) == 6:
            return ipaddress.IPv4Address(".".join(x.decode() for x in reversed(labels[:4])))
        if name.endswith(b".ip6.arpa") and len(labels) == 34 and all(len(x) == 1 for x in labels[:32]):
            return ipaddress.IPv6Address(bytes.fromhex("".join(x.decode() for x in reversed(labels[:32]))))
    except (ValueError, UnicodeDecodeError):
        pass
    return None
