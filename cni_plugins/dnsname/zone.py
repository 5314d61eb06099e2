"""One network's names as a zone: every answer's records ready as wire
bytes, built once per reload, and the answer cache that belongs to it."""
import ipaddress
import struct
import time

from .forward import parse_upstream
from .layout import DEFAULT_DOMAIN
from .wire import A, AAAA, ANY, IN, NOERROR, NXDOMAIN, PTR, RR, SOA, TTL, Query, encode_name, \
    reverse_name, reverse_to_ip


class Zone:
    """The names of one network, with every answer's records ready as wire bytes."""

    def __init__(self, network: str, meta: dict, records: list[dict]):
        self.network = network
        domain = str(meta.get("domain") or DEFAULT_DOMAIN).lower().strip(".")
        self.domain = domain.encode()
        self.dot_domain = b"." + self.domain
        self.gateways = [str(ipaddress.ip_address(g)) for g in meta.get("gateways") or []]
        self.upstreams = [u for u in map(parse_upstream, meta.get("upstreams") or []) if u]
        self.cache: dict[bytes, bytes] = {}
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

    @staticmethod
    def _rrset(rtype: int, packed: list[bytes]) -> bytes:
        return b"".join(RR.pack(0xC00C, rtype, IN, TTL, len(p)) + p for p in packed)

    def lookup(self, q: Query):
        """(rcode, answers, an, authority, ns) for a name of ours, None to forward."""
        if q.qclass not in (IN, ANY):
            return None
        name, qtype = q.qname, q.qtype
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
