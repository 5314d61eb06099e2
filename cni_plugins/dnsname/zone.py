"""One network's names as a zone: every answer's records ready as wire
bytes, built once per reload, and the answers it has given, ready to give
again.

Ready answers (``Zone.answers``) are what the UDP loop serves without
parsing.  They are keyed by the question, letter case folded, behind the
counts of a plain query (one question, nothing else) or of one with EDNS
(the question and an OPT with no option, which the loop strips): so a
query's ID, RD/CD flags, EDNS payload size and DO bit, and the letter case
of its name, do not make it another entry.  The answer is written around
the client's own question, which keeps its case (RFC 4343).  An answer is
made ready the first time the full path gives it (``remember``); a reload
starts afresh.
"""
import ipaddress
import struct
import time

from .forward import parse_upstream
from .layout import DEFAULT_DOMAIN
from .wire import A, AAAA, ANY, IN, NOERROR, NXDOMAIN, PTR, RR, SOA, TTL, encode_name, opt_record, \
    reverse_name, reverse_to_ip

PLAIN = b"\0\1\0\0\0\0\0\0"   # the counts of a plain query: one question, nothing else
EDNS = b"\0\1\0\0\0\0\0\1"    # ... of one with an OPT after the question
READY_MAX = 65536             # ready answers per zone; they start afresh when there are more
_OPT, _OPT_DO = opt_record(NOERROR, 0), opt_record(NOERROR, 0x8000)  # any rcode below 16 has these


class Zone:
    """The names of one network, with every answer's records ready as wire bytes."""

    def __init__(self, network: str, meta: dict, records: list[dict]):
        self.network = network
        domain = str(meta.get("domain") or DEFAULT_DOMAIN).lower().strip(".")
        self.domain = domain.encode()
        self.dot_domain = b"." + self.domain
        self.gateways = [str(ipaddress.ip_address(g)) for g in meta.get("gateways") or []]
        self.upstreams = [u for u in map(parse_upstream, meta.get("upstreams") or []) if u]
        addrs: dict[bytes, tuple[list, list]] = {}
        ptr: dict[bytes, bytes] = {}
        subnets = set()
        for rec in records:
            names = [str(n).lower().strip(".") for n in [rec.get("name")] + list(rec.get("aliases") or []) if n]
            ips = []
            for a in rec.get("ips") or []:
                try:
                    iface = ipaddress.ip_interface(a)
                except ValueError:
                    continue
                subnets.add(iface.network)
                ips.append(iface.ip)
            for n in names:
                fqdn = n if n.endswith("." + domain) else f"{n}.{domain}"
                for key in dict.fromkeys((n, fqdn)):
                    v4, v6 = addrs.setdefault(key.encode(), ([], []))
                    for ip in ips:
                        family = v4 if ip.version == 4 else v6
                        if ip.packed not in family:
                            family.append(ip.packed)
            if names:
                first = names[0]
                target = encode_name(first if first.endswith("." + domain) else f"{first}.{domain}")
                for ip in ips:
                    ptr.setdefault(reverse_name(ip), target)
        self.hosts = {name: (self._rrset(A, v4), len(v4), self._rrset(AAAA, v6), len(v6))
                      for name, (v4, v6) in addrs.items()}
        self.ptr = {name: RR.pack(0xC00C, PTR, IN, TTL, len(t)) + t for name, t in ptr.items()}
        self.subnets = list(subnets)
        serial = int(time.time()) & 0xFFFFFFFF
        owner = encode_name(domain)
        rdata = owner + encode_name("hostmaster." + domain) + struct.pack("!IIIII", serial, 3600, 600, 86400, 0)
        self.soa = owner + struct.pack("!HHIH", SOA, IN, TTL, len(rdata)) + rdata
        self.soa_answer = RR.pack(0xC00C, SOA, IN, TTL, len(rdata)) + rdata
        self.answers: dict[bytes, tuple] = {}

    @staticmethod
    def _rrset(rtype: int, packed: list[bytes]) -> bytes:
        return b"".join(RR.pack(0xC00C, rtype, IN, TTL, len(p)) + p for p in packed)

    def lookup(self, name: bytes, qtype: int, qclass: int):
        """(rcode, answers, an, authority, ns) for a name of ours (lower
        case, dotted), None to forward."""
        if qclass not in (IN, ANY):
            return None
        host = self.hosts.get(name)
        if host is not None:
            a, na, aaaa, naaaa = host
            if qtype == A and na:
                return NOERROR, a, na, b"", 0
            if qtype == AAAA and naaaa:
                return NOERROR, aaaa, naaaa, b"", 0
            if qtype == ANY and na + naaaa:
                return NOERROR, a + aaaa, na + naaaa, b"", 0
            return NOERROR, b"", 0, self.soa, 1
        if name == self.domain:
            if qtype in (SOA, ANY):
                return NOERROR, self.soa_answer, 1, b"", 0
            return NOERROR, b"", 0, self.soa, 1
        if name.endswith(self.dot_domain):
            return NXDOMAIN, b"", 0, self.soa, 1
        if name.endswith(b".arpa"):
            rr = self.ptr.get(name)
            if rr is not None:
                if qtype in (PTR, ANY):
                    return NOERROR, rr, 1, b"", 0
                return NOERROR, b"", 0, b"", 0
            ip = reverse_to_ip(name)
            if ip is not None and any(ip in net for net in self.subnets):
                return NXDOMAIN, b"", 0, b"", 0
        return None

    def remember(self, data: bytes, q, msg: bytes) -> None:
        """Make ready the answer ``msg`` the full path gave to query
        ``data`` (parsed as ``q``), for every query that differs from it
        only where the answer does not: ID, flags other than QR and opcode,
        letter case, EDNS payload size and DO.  That holds for a query of
        one question and at most an OPT without options, of version 0 and
        last: then no count can be a letter (case folding leaves the rest
        of the key's bytes alone), a query type or class that folds to
        another gives the same answer (none of A, AAAA, ANY, SOA, PTR, IN
        is a letter), and an answer that fits 512 bytes with an OPT fits
        any client."""
        if data[4:11] != PLAIN[:7] or msg[2] & 0x02:
            return
        if data[11] == 0 and q.qend == len(data):
            body = msg[q.qend:]
        elif data[11] == 1 and q.edns and not q.options and q.version == 0 and q.qend + 11 == len(data):
            body = msg[q.qend:-11]
        else:
            return
        if q.qend + len(body) + 11 > 512:
            return
        if len(self.answers) >= READY_MAX:
            self.answers.clear()
        flags, _, an, ns = struct.unpack_from("!HHHH", msg, 2)
        flags &= ~0x0110
        question = data[12:q.qend].lower()
        self.answers[PLAIN + question] = (headers(flags, an, ns, 0), q.qend, body, body)
        self.answers[EDNS + question] = (headers(flags, an, ns, 1), q.qend, body + _OPT, body + _OPT_DO)


_headers: dict[tuple, tuple] = {}


def headers(flags: int, an: int, ns: int, ar: int) -> tuple[bytes, ...]:
    """An answer's header after its ID, for each RD/CD of the query:
    index (RD) | (CD << 1).  Shared by every answer that has the same."""
    key = (flags, an, ns, ar)
    found = _headers.get(key)
    if found is None:
        found = _headers[key] = tuple(struct.pack("!HHHHH", flags | (0x0100 if v & 1 else 0) | (0x0010 if v & 2 else 0),
                                                  1, an, ns, ar) for v in range(4))
    return found
