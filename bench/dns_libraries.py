"""The cost of answering one DNS query in Python: our hand-written wire code
against the same answer made with dnslib and with dnspython.

Each contender parses the same query bytes, looks the name up in the same
zone (1,000 names) and returns the answer's bytes: an A answer, NXDOMAIN
with the domain's SOA, each with and without EDNS.  That is what our
resolver does for a query it has no ready answer for (a cache miss).  Every
contender's answers are decoded with dnspython and must agree before
anything is timed.  Timings: the best of --repeat runs of --number
queries each (the usual way to time small code on a busy machine), in
microseconds of one CPU per query.  No root, no network.

dnslib is not a dependency of pycni itself: `pip install dnslib` (the
`bench` extra) to include it.
"""
import argparse
import os
import struct
import sys
import timeit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import dns.flags  # noqa: E402
import dns.message  # noqa: E402
import dns.name  # noqa: E402
import dns.rcode  # noqa: E402
import dns.rdata  # noqa: E402
import dns.rdataclass  # noqa: E402
import dns.rdatatype  # noqa: E402
import dns.rrset  # noqa: E402

from cni_plugins.dnsname import wire  # noqa: E402
from cni_plugins.dnsname.zone import Zone  # noqa: E402

DOMAIN = "dns.podman"
NAMES = 1000


def address(i: int) -> str:
    return f"10.91.{i // 250}.{i % 250 + 2}"


def queries() -> dict[str, bytes]:
    def query(name, edns):
        opt = b"\0" + struct.pack("!HHIH", wire.OPT, 4096, 0, 0) if edns else b""
        return (struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 1 if edns else 0) + wire.encode_name(name)
                + struct.pack("!HH", wire.A, wire.IN) + opt)

    return {"A, no EDNS": query(f"WebFrontend{NAMES // 2}.{DOMAIN}", False),
            "A, EDNS": query(f"webfrontend{NAMES // 2}", True),
            "NXDOMAIN, no EDNS": query(f"nobody.{DOMAIN}", False),
            "NXDOMAIN, EDNS": query(f"nobody.{DOMAIN}", True)}


class Ours:
    """The resolver's full path (parse, look up, build), as for a cache miss."""
    label = "pycni wire.py + zone.py (full path)"

    def __init__(self):
        self.zone = Zone("bench", {"domain": DOMAIN, "gateways": ["10.90.0.1"]},
                         [{"name": f"webfrontend{i}", "ips": [f"{address(i)}/16"]} for i in range(NAMES)])

    def answer(self, data: bytes) -> bytes:
        q = wire.parse_query(data)
        rcode, answers, an, auth, ns = self.zone.lookup(q.qname, q.qtype, q.qclass)
        return wire.build(q, data, rcode, answers, an, auth, ns, limit=q.payload if q.edns else 512)


class Dnspython:
    label = "dnspython"

    def __init__(self):
        rdata = [dns.rdata.from_text("IN", "A", address(i)) for i in range(NAMES)]  # made once, as ours
        self.hosts = {dns.name.from_text(f"webfrontend{i}.{DOMAIN}"): rdata[i] for i in range(NAMES)}
        self.hosts.update({dns.name.from_text(f"webfrontend{i}"): rdata[i] for i in range(NAMES)})
        self.domain = dns.name.from_text(DOMAIN)
        self.soa = dns.rrset.from_text(self.domain, 0, "IN", "SOA",
                                       f"{DOMAIN}. hostmaster.{DOMAIN}. 1 3600 600 86400 0")

    def answer(self, data: bytes) -> bytes:
        q = dns.message.from_wire(data)
        r = dns.message.make_response(q)
        r.flags |= dns.flags.AA
        if q.edns >= 0:
            r.use_edns(0, payload=1232)
        question = q.question[0]
        rdata = self.hosts.get(question.name)  # dnspython names hash and compare case-insensitively
        if rdata is not None:
            r.answer.append(dns.rrset.from_rdata(question.name, 0, rdata))
        elif question.name.is_subdomain(self.domain):
            r.set_rcode(dns.rcode.NXDOMAIN)
            r.authority.append(self.soa)
        return r.to_wire()


class Dnslib:
    label = "dnslib"

    def __init__(self):
        import dnslib

        self.dnslib = dnslib
        rdata = [dnslib.A(address(i)) for i in range(NAMES)]  # made once, as ours
        self.hosts = {f"webfrontend{i}.{DOMAIN}": rdata[i] for i in range(NAMES)}
        self.hosts.update({f"webfrontend{i}": rdata[i] for i in range(NAMES)})
        self.soa = dnslib.RR(DOMAIN, dnslib.QTYPE.SOA, ttl=0, rdata=dnslib.SOA(
            DOMAIN, f"hostmaster.{DOMAIN}", (1, 3600, 600, 86400, 0)))

    def answer(self, data: bytes) -> bytes:
        d = self.dnslib
        q = d.DNSRecord.parse(data)
        r = q.reply()  # QR, AA, RA, the ID and the question
        if any(rr.rtype == d.QTYPE.OPT for rr in q.ar):
            r.add_ar(d.EDNS0(udp_len=1232))
        name = str(q.q.qname).rstrip(".").lower()
        rdata = self.hosts.get(name)
        if rdata is not None:
            r.add_answer(d.RR(q.q.qname, d.QTYPE.A, ttl=0, rdata=rdata))
        elif name.endswith("." + DOMAIN):
            r.header.rcode = d.RCODE.NXDOMAIN
            r.add_auth(self.soa)
        return r.pack()


def meaning(answer: bytes):
    """What an answer says, as dnspython reads it."""
    m = dns.message.from_wire(bytes(answer))  # dnslib packs into a bytearray
    return (m.id, m.rcode(), [(str(rr.name).lower(), rd.to_text()) for rr in m.answer for rd in rr],
            [rr.rdtype for rr in m.authority], m.edns >= 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--number", type=int, default=20000, help="queries per timed run")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs; the best is kept")
    args = ap.parse_args(argv)
    contenders = [Ours(), Dnspython()]
    try:
        contenders.append(Dnslib())
    except ImportError:
        print("dnslib is not installed (pip install dnslib): left out", file=sys.stderr)
    qs = queries()
    for name, data in qs.items():
        want = meaning(contenders[0].answer(data))
        for c in contenders[1:]:
            got = meaning(c.answer(data))
            if got != want:
                raise SystemExit(f"{c.label} answers {name} otherwise: {got} != {want}")
    print(f"DNS in Python, microseconds of CPU per answer (best of {args.repeat} x {args.number}), "
          f"zone of {NAMES} names; ratio against our full path")
    print(f"  {'':46s}" + "".join(f"{name:>20s}" for name in qs))
    base = {}
    for c in contenders:
        cells = []
        for name, data in qs.items():
            best = min(timeit.repeat(lambda: c.answer(data), number=args.number, repeat=args.repeat))
            us = 1e6 * best / args.number
            base.setdefault(name, us)
            cells.append(f"{us:8.2f} ({us / base[name]:5.1f}x)")
        print(f"  {c.label:46s}" + "".join(f"{cell:>20s}" for cell in cells))
    return 0


if __name__ == "__main__":
    sys.exit(main())
