"""Every answer the resolver gives, decoded by dnspython and checked
against what the zone should give.

``Expected`` states the resolver's contract (server.py's docstring) over
dnspython's decoding, independently of the resolver's own parser: names
as tuples of labels, addresses with ipaddress.  ``check`` holds one answer
to it: header (ID, QR, opcode, RD, CD, AA, TC, rcode), the question
echoed byte for byte (the client's letter case), the answer and authority
sections, EDNS.  Queries come from a seeded generator (``generate``) and
from mutations of well-formed ones; they are answered through the
resolver's own UDP loop in this process (``Local``: zone, batch, full
path), and sent over the wire to a resolver the dnsname plugin started.
"""
import glob
import ipaddress
import os
import random
import select
import socket
import struct

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import pytest

from cni_plugins.dnsname.server import Resolver
from cni_plugins.dnsname.udp import Batch
from cni_plugins.dnsname.zone import Zone
from cni_plugins.kernel.netns import entered, open_netns
from test_dnsname import DOMAIN, Net, dig, ip_of, node, upstream  # noqa: F401 (fixtures)

A, NS, CNAME, SOA, PTR, MX, TXT, AAAA, SRV, OPT, HTTPS, ANY, CAA = 1, 2, 5, 6, 12, 15, 16, 28, 33, 41, 65, 255, 257
IN, CH, CLASS_ANY = 1, 3, 255
QTYPES = [A, A, A, AAAA, AAAA, ANY, SOA, PTR, MX, TXT, NS, CNAME, SRV, HTTPS, CAA]
OUR_PAYLOAD = 1232
FORWARDED = "forwarded"


# --- what the zone should give -------------------------------------------------------------
def labels_of(text: str) -> tuple[bytes, ...]:
    return tuple(text.lower().encode().split(b"."))


class Expected:
    """The resolver's contract for one network: ``answer(labels, qtype,
    qclass)`` gives (rcode, {(rdtype, rdata text)}, SOA in authority?) or
    FORWARDED."""

    def __init__(self, domain: str, records: list[tuple[str, list[str], list[str]]]):
        self.domain = labels_of(domain)
        self.hosts: dict[tuple, tuple[set, set]] = {}
        self.ptr: dict[tuple, str] = {}
        self.subnets = []
        for name, aliases, ips in records:
            ifaces = [ipaddress.ip_interface(ip) for ip in ips]
            self.subnets += [i.network for i in ifaces]
            for n in [name] + aliases:
                for labels in {labels_of(n), labels_of(n) + self.domain}:
                    v4, v6 = self.hosts.setdefault(labels, (set(), set()))
                    for i in ifaces:
                        (v4 if i.version == 4 else v6).add(str(i.ip))
            for i in ifaces:
                self.ptr.setdefault(labels_of(i.ip.reverse_pointer), f"{name}.{domain}.".lower())

    def reverse_address(self, labels):
        text = [x.decode("ascii", "replace") for x in labels]
        try:
            if text[-2:] == ["in-addr", "arpa"] and len(text) == 6:
                return ipaddress.IPv4Address(".".join(reversed(text[:4])))
            if text[-2:] == ["ip6", "arpa"] and len(text) == 34 and all(len(x) == 1 for x in text[:32]):
                return ipaddress.IPv6Address(bytes.fromhex("".join(reversed(text[:32]))))
        except ValueError:
            pass
        return None

    def answer(self, labels: tuple[bytes, ...], qtype: int, qclass: int):
        if qclass not in (IN, CLASS_ANY):
            return FORWARDED
        if labels in self.hosts:
            v4, v6 = self.hosts[labels]
            found = ({(A, a) for a in v4} if qtype in (A, ANY) else set()) | \
                    ({(AAAA, a) for a in v6} if qtype in (AAAA, ANY) else set())
            return (dns.rcode.NOERROR, found, False) if found else (dns.rcode.NOERROR, set(), True)
        if labels == self.domain:
            if qtype in (SOA, ANY):
                return dns.rcode.NOERROR, {(SOA, None)}, False
            return dns.rcode.NOERROR, set(), True
        if labels[-len(self.domain):] == self.domain:
            return dns.rcode.NXDOMAIN, set(), True
        if labels in self.ptr:
            if qtype in (PTR, ANY):
                return dns.rcode.NOERROR, {(PTR, self.ptr[labels])}, False
            return dns.rcode.NOERROR, set(), False
        ip = self.reverse_address(labels)
        if ip is not None and any(ip in net for net in self.subnets):
            return dns.rcode.NXDOMAIN, set(), False
        return FORWARDED

    def size(self, qlen: int, found: set, soa: bool) -> int:
        """The answer's size in bytes, OPT aside (owners compressed to the question)."""
        domain = len(b"".join(bytes([len(x)]) + x for x in self.domain)) + 1
        soa_rdata = domain + domain + len(b"hostmaster") + 1 + 20
        rdata = {A: lambda v: 4, AAAA: lambda v: 16, PTR: lambda v: len(v) + 1, SOA: lambda v: soa_rdata}
        return (12 + qlen + sum(12 + rdata[t](v) for t, v in found)
                + (domain + 10 + soa_rdata if soa else 0))


# --- checking one answer -------------------------------------------------------------------
def reaction(query: bytes):
    """What the resolver must do with ``query``: "drop", "notimp",
    "formerr", "either" (dnspython refuses the records after the question,
    which our parser need not read: FORMERR or an answer), or the parsed
    question (qend, labels, qtype, qclass) to be answered."""
    if len(query) < 12 or query[2] & 0x80:
        return "drop"
    if (query[2] >> 3) & 0xF:
        return "notimp"
    if struct.unpack_from("!H", query, 4)[0] != 1:
        return "formerr"
    try:  # the question alone, with counts that say so
        head = dns.message.from_wire(query[:4] + b"\0\1\0\0\0\0\0\0" + query[12:], question_only=True,
                                     ignore_trailing=True)
    except (dns.exception.DNSException, ValueError):
        return "formerr"
    q = head.question[0]
    wire = q.name.to_wire()
    qend = 12 + len(wire) + 4
    if query[12:12 + len(wire)].lower() != wire.lower() or len(wire) > 255:
        return "formerr"  # a compression pointer in the question: there is nothing before it
    try:
        dns.message.from_wire(query, ignore_trailing=True)
    except (dns.message.BadEDNS, dns.message.ShortHeader):
        return "formerr"
    except (dns.exception.DNSException, ValueError):
        return "either"
    labels = tuple(label.lower() for label in q.name.labels if label)
    return qend, labels, q.rdtype, q.rdclass


def check(expected: Expected, query: bytes, answer: bytes | None, forwarded=None) -> str:
    """Assert that ``answer`` is right for ``query``; returns the kind of
    reaction.  ``forwarded(labels, qtype, qclass, msg)`` checks answers
    that came from upstream (without it, SERVFAIL is expected: no upstream)."""
    what = reaction(query)
    if what == "drop":
        assert answer is None, (query.hex(), answer.hex())
        return what
    assert answer is not None, f"no answer to {query.hex()}"
    msg = dns.message.from_wire(answer)
    assert msg.id == struct.unpack_from("!H", query)[0]
    assert msg.flags & dns.flags.QR and msg.opcode() == (query[2] >> 3) & 0xF
    assert bool(msg.flags & dns.flags.RD) == bool(query[2] & 1)
    if what == "either" and msg.rcode() == dns.rcode.FORMERR and not msg.question:
        what = "formerr"
    if what in ("notimp", "formerr"):
        assert msg.rcode() == (dns.rcode.NOTIMP if what == "notimp" else dns.rcode.FORMERR), (query.hex(), msg)
        assert not (msg.question or msg.answer or msg.authority or msg.additional) and msg.edns < 0
        return what
    lenient = what == "either"  # answered: the records after the question are ours to judge
    if lenient:
        what = reaction(query[:4] + b"\0\1\0\0\0\0\0\0" + query[12:])
    qend, labels, qtype, qclass = what
    assert answer[12:qend] == query[12:qend], "the question, echoed as the client wrote it"
    assert len(msg.question) == 1
    query_msg = None if lenient else dns.message.from_wire(query, ignore_trailing=True)
    query_edns = query_msg is not None and query_msg.edns >= 0
    if (query_edns and query_msg.edns > 0) or (lenient and msg.rcode() == dns.rcode.BADVERS):
        assert msg.rcode() == dns.rcode.BADVERS and not msg.answer and not msg.authority
        assert msg.edns == 0 and msg.payload == OUR_PAYLOAD
        return "badvers"
    want = expected.answer(labels, qtype, qclass)
    if want == FORWARDED:
        if forwarded is None:
            assert msg.rcode() == dns.rcode.SERVFAIL and not msg.flags & dns.flags.AA
        else:
            forwarded(labels, qtype, qclass, msg)
        return FORWARDED
    if not lenient:
        assert (msg.edns >= 0) == query_edns
    if msg.edns >= 0:
        assert msg.edns == 0 and msg.payload == OUR_PAYLOAD and not msg.options
        if not lenient:
            assert msg.ednsflags & dns.flags.DO == query_msg.ednsflags & dns.flags.DO
    assert bool(msg.flags & dns.flags.CD) == bool(query[3] & 0x10)
    rcode, found, soa = want
    assert msg.rcode() == rcode and msg.flags & dns.flags.AA, (labels, qtype, msg)
    limit = max(512, query_msg.payload) if query_edns else 512
    too_big = expected.size(qend - 12, found, soa) + (11 if query_edns else 0) > limit
    if too_big or msg.flags & dns.flags.TC:
        assert lenient or too_big, "truncated, though it fits the client's size"
        assert msg.flags & dns.flags.TC and not msg.answer and not msg.authority
        return "truncated"
    assert not msg.flags & dns.flags.TC
    got = set()
    for rrset in msg.answer:
        assert rrset.name == msg.question[0].name and rrset.ttl == 0 and rrset.rdclass == IN
        for rd in rrset:
            got.add((rd.rdtype, None if rd.rdtype == SOA else rd.to_text().lower()))
    assert got == found, (labels, qtype, got, found)
    if soa:
        [rrset] = msg.authority
        [rd] = rrset
        domain = dns.name.from_text(".".join(x.decode() for x in expected.domain))
        assert rrset.name == domain and rd.rdtype == SOA and rd.mname == domain
        assert rd.rname == dns.name.Name((b"hostmaster",) + domain.labels)
    else:
        assert not msg.authority
    assert not msg.additional
    return "answered"


# --- queries -------------------------------------------------------------------------------
def wire_name(labels) -> bytes:
    return b"".join(bytes([len(x)]) + x for x in labels) + b"\0"


def random_case(text: bytes, rng) -> bytes:
    return bytes(c ^ 0x20 if chr(c).isalpha() and c < 128 and rng.random() < 0.5 else c for c in text)


def query_bytes(qid: int, flags: int, labels, qtype: int, qclass: int, opt: bytes = b"", tail: bytes = b"") -> bytes:
    return (struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 1 if opt else 0) + wire_name(labels)
            + struct.pack("!HH", qtype, qclass) + opt + tail)


def opt_record(payload: int, version: int = 0, do: bool = False, options: bytes = b"", ext: int = 0) -> bytes:
    return b"\0" + struct.pack("!HHBBHH", OPT, payload, ext, version, 0x8000 if do else 0, len(options)) + options


def generate(rng, names: list[str], forwarded: list[str]) -> bytes:
    """One query: a name of the zone or not, in any letter case, any type and
    flags, with or without EDNS (any payload, DO, options, padding past
    2,048 bytes, other versions), now and then with bytes after its end."""
    pick = rng.random()
    if pick < 0.85:
        text = rng.choice(names)
    elif pick < 0.95:
        text = f"{''.join(rng.choice('abcXYZ019-') for _ in range(rng.randint(1, 12)))}.{DOMAIN}"
    else:
        text = rng.choice(forwarded) if forwarded else f"{rng.randint(0, 255)}.0.2.192.in-addr.arpa"
    labels = [random_case(x, rng) if rng.random() < 0.6 else x for x in text.encode().split(b".")]
    qtype = rng.choice(QTYPES) if rng.random() < 0.95 else rng.randrange(65536)
    qclass = IN if rng.random() < 0.9 else rng.choice([CLASS_ANY, CH, rng.randrange(65536)])
    flags = (rng.random() < 0.8) * 0x0100 | (rng.random() < 0.2) * 0x0010 | (rng.random() < 0.2) * 0x0020 \
        | (rng.random() < 0.05) * 0x0040
    opt = b""
    e = rng.random()
    if e < 0.5:
        payload = rng.choice([0, 512, 1232, 4096, 65535, rng.randrange(65536)])
        options = b""
        if rng.random() < 0.1:
            options += struct.pack("!HH", 10, 8) + rng.randbytes(8)  # a client COOKIE
        if rng.random() < 0.1:
            size = rng.choice([8, 100, 2100, 3000, 9000]) if text not in forwarded else 8
            options += struct.pack("!HH", 12, size) + bytes(size)  # padding
        version = 0 if rng.random() < 0.95 else rng.randint(1, 255)
        opt = opt_record(payload, version, rng.random() < 0.5, options, ext=rng.choice([0, 0, 1, 0x41]))
    tail = bytes(rng.randrange(256) for _ in range(rng.randint(1, 5))) if rng.random() < 0.02 else b""
    return query_bytes(rng.randrange(65536), flags, labels, qtype, qclass, opt, tail)


def mutate(data: bytes, rng) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        if not data:
            break
        op = rng.random()
        if op < 0.5:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif op < 0.75:
            del data[rng.randrange(len(data)):]
        else:
            data += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
    return bytes(data)


# --- the resolver's UDP path in this process ---------------------------------------------------
def socket_in(netns: str, kind: int = socket.SOCK_DGRAM) -> socket.socket:
    """An IPv4 socket of namespace ``netns`` (it stays there: setns moved only this thread)."""
    fd = open_netns(f"/run/netns/{netns}")
    try:
        with entered(fd):
            return socket.socket(socket.AF_INET, kind)
    finally:
        os.close(fd)


class Local:
    """A zone served by the resolver's own batch loop and full path, on a
    loopback socket of a namespace made for the test: no daemon, but every
    line a UDP query meets in one."""

    def __init__(self, netns: str, tmp_path, zone: Zone):
        self.zone = zone
        self.server = socket_in(netns, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.server.bind(("127.0.0.1", 53))
        self.client = socket_in(netns, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK)
        self.batch = Batch(self.server)
        self.resolver = Resolver(str(tmp_path), 0, resolv_conf=str(tmp_path / "no-resolv.conf"))

    def full_path(self, data: bytes) -> bytes:
        """The answer the full path (parse, lookup, build) gives to ``data``."""
        return self.resolver._answer(self.zone, data, lambda msg: None, udp=True)

    def ask(self, data: bytes) -> bytes | None:
        self.client.sendto(data, ("127.0.0.1", 53))
        select.select([self.server], [], [], 1.0)
        assert self.batch.serve(self.zone, self.resolver._udp_answer) == 1
        answers = []
        while True:
            try:
                answers.append(self.client.recv(65536))
            except BlockingIOError:
                break
        assert len(answers) <= 1
        return answers[0] if answers else None

    def close(self):
        self.server.close()
        self.client.close()


RECORDS = [("alpha", ["web", "www-alias"], ["10.210.0.2/24", "fd00:210::2/64"]),
           ("beta", ["db", "group"], ["10.210.0.3/24"]),
           ("gamma", ["group"], ["10.210.0.4/24", "fd00:210::4/64"]),
           ("Delta-1", ["group"], ["10.210.0.5/24", "10.210.1.5/24"])]
RECORDS += [(f"member{i}", ["many"], [f"10.210.2.{i + 2}/24", f"fd00:210::1:{i + 2:x}/64"]) for i in range(20)]


def names_of(expected: Expected) -> list[str]:
    """Everything worth asking the zone: its names, its domain, reverse names known and not."""
    names = sorted(b".".join(n).decode() for n in expected.hosts)
    names += sorted(b".".join(n).decode() for n in expected.ptr)
    names += [DOMAIN] + [(net.network_address + 99).reverse_pointer for net in expected.subnets]
    return names


@pytest.fixture
def local(make_netns, tmp_path):
    zone = Zone("n", {"domain": DOMAIN, "gateways": ["127.0.0.1"]},
                [{"name": n, "aliases": a, "ips": ips} for n, a, ips in RECORDS])
    loc = Local(make_netns("dloc"), tmp_path, zone)
    yield loc
    loc.close()


def test_generated_queries_in_process(local):
    """5,000 generated queries through the UDP loop: every answer is what the
    zone gives, and a ready answer is byte for byte what the full path
    builds for the same query (ID, flags, letter case, EDNS and all)."""
    expected = Expected(DOMAIN, RECORDS)
    names = names_of(expected)
    rng = random.Random(11)
    kinds = {}
    ready = 0
    for _ in range(5000):
        query = generate(rng, names, [])
        before = len(local.zone.answers)
        answer = local.ask(query)
        came_ready = len(local.zone.answers) == before  # nothing learned: the full path did not run
        kind = check(expected, query, answer)
        kinds[kind] = kinds.get(kind, 0) + 1
        if kind in ("answered", "truncated", "badvers"):
            full = local.full_path(query)
            assert answer == full, (query.hex(), answer.hex(), full.hex())
            ready += came_ready
    assert kinds["answered"] > 3000 and kinds.get("truncated") and kinds.get("badvers") and kinds.get(FORWARDED)
    assert ready > 2000


def test_mutated_queries_in_process(local):
    """20,000 mutations of well-formed queries: each is dropped, refused with
    the right code, or answered as the zone says; dnspython decodes every answer."""
    expected = Expected(DOMAIN, RECORDS)
    names = names_of(expected)
    rng = random.Random(7)
    base = [generate(rng, names, []) for _ in range(200)]
    kinds = {}
    for n in range(20000):
        query = mutate(rng.choice(base), rng)
        if len(query) >= 2:
            query = struct.pack("!H", n & 0xFFFF) + query[2:]
        kind = check(expected, query, local.ask(query))
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["answered"] > 2000 and kinds["formerr"] > 1000 and kinds["drop"] > 100 and kinds["notimp"] > 100


def test_random_letter_case_is_echoed(local):
    """The same question in many letter cases, IDs, flags and EDNS forms: the
    first is built, the rest come ready; each echoes its own question."""
    expected = Expected(DOMAIN, RECORDS)
    rng = random.Random(3)
    for text in (f"alpha.{DOMAIN}", "delta-1", "5.0.210.10.in-addr.arpa", f"nobody.{DOMAIN}", DOMAIN):
        for qtype in (A, AAAA, PTR, SOA, MX):
            for _ in range(20):
                labels = [random_case(x, rng) for x in text.encode().split(b".")]
                opt = opt_record(rng.choice([512, 1232, 4096]), do=rng.random() < 0.5) if rng.random() < 0.5 else b""
                query = query_bytes(rng.randrange(65536), rng.choice([0, 0x0100, 0x0110, 0x0130]), labels, qtype, IN,
                                    opt)
                answer = local.ask(query)
                assert check(expected, query, answer) == "answered"
                assert answer[12:12 + len(wire_name(labels))] == wire_name(labels)


# --- over the wire, to a resolver the plugin started ----------------------------------------------
class Client:
    """A UDP socket in a pod's namespace, sending windows of queries to a resolver."""

    def __init__(self, pod: str, server: str):
        self.sock = socket_in(pod)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.server = server

    def ask_all(self, queries: list[bytes], window: int = 50, timeout: float = 4.0) -> dict[int, bytes]:
        """Answers by query ID (the IDs must differ)."""
        answers = {}
        for start in range(0, len(queries), window):
            batch = queries[start:start + window]
            for q in batch:
                self.sock.sendto(q, (self.server, 53))
            wanted = {struct.unpack_from("!H", q)[0] for q in batch if reaction(q) != "drop"}
            while wanted - answers.keys():
                ready, _, _ = select.select([self.sock], [], [], timeout)
                if not ready:
                    break
                data = self.sock.recv(65536)
                qid = struct.unpack_from("!H", data)[0]
                assert qid not in answers, "two answers to one query"
                answers[qid] = data
        return answers

    def close(self):
        self.sock.close()


def resolver_log(state_dirs) -> str:
    text = ""
    for path in glob.glob(os.path.join(str(state_dirs["run"]), "dnsname", "resolver-*.log")):
        with open(path) as f:
            text += f.read()
    return text


def upstream_answers(labels, qtype, qclass, msg):
    """The test upstream (test_dnsname's dnsmasq) owns example.test."""
    assert msg.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN, dns.rcode.REFUSED, dns.rcode.SERVFAIL,
                           dns.rcode.NOTIMP), msg
    if labels == (b"www", b"example", b"test") and qtype == A and qclass == IN and msg.rcode() != dns.rcode.SERVFAIL:
        assert [rd.to_text() for rrset in msg.answer for rd in rrset] == ["192.0.2.7"]
    if labels == (b"nothing", b"example", b"test") and qclass == IN:
        assert msg.rcode() in (dns.rcode.NXDOMAIN, dns.rcode.SERVFAIL)


def test_generated_queries_over_the_wire(bin_dir, node, make_netns, tmp_path, state_dirs, upstream):
    """5,000 generated queries (and 2,000 mutated ones) sent in bursts to a
    resolver started by the plugin: every answer decodes and is what the
    zone (or the upstream) gives, no traceback in its log, and it still
    answers afterwards."""
    net = Net(bin_dir, node, tmp_path, "10.201.30.0/24", "fd00:201:30::/64", upstreams=[upstream])
    pods = {name: make_netns("dpod") for name in ("alpha", "beta", "gamma")}
    results = {name: net.attach(pod, f"c{name}", name, [f"{name}-alias", "group"]) for name, pod in pods.items()}
    records = [(name, [f"{name}-alias", "group"], [ip["address"] for ip in res["ips"]]) for name, res in results.items()]
    expected = Expected(DOMAIN, records)
    names = names_of(expected)
    forwarded = ["www.example.test", "nothing.example.test", "www"]
    rng = random.Random(5)
    queries = [generate(rng, names, forwarded) for _ in range(5000)]
    queries += [mutate(q, rng) for q in rng.sample(queries, 2000)]
    queries = [struct.pack("!H", i) + q[2:] for i, q in enumerate(q for q in queries if len(q) >= 2)]
    client = Client(pods["alpha"], net.gw4)
    try:
        answers = client.ask_all(queries)
    finally:
        client.close()
    kinds = {}
    for i, query in enumerate(queries):
        kind = check(expected, query, answers.get(i), forwarded=upstream_answers)
        kinds[kind] = kinds.get(kind, 0) + 1
    assert kinds["answered"] > 3000 and kinds[FORWARDED] > 100 and kinds["formerr"] > 50
    log = resolver_log(state_dirs)
    assert "Traceback" not in log and "error:" not in log, log
    assert sorted(dig(pods["beta"], net.gw4, "+short", "alpha").split()) == [ip_of(results["alpha"])]


def test_udp_query_larger_than_2048_bytes_is_answered_as_over_tcp(bin_dir, node, make_netns, tmp_path):
    """Issue 11, item 8: a UDP query of 3,000 or 9,000 bytes (EDNS padding)
    gets the answer the same query gets over TCP, not FORMERR."""
    net = Net(bin_dir, node, tmp_path, "10.201.31.0/24")
    pod = make_netns("dpod")
    res = net.attach(pod, "ca", "alpha")
    for size in (3000, 9000, 60000):
        padding = struct.pack("!HH", 12, size) + bytes(size)
        query = query_bytes(0x4242, 0x0100, [b"ALpha"], A, IN, opt_record(4096, options=padding))
        with socket_in(pod) as udp, socket_in(pod, socket.SOCK_STREAM) as tcp:
            udp.settimeout(3)
            udp.sendto(query, (net.gw4, 53))
            over_udp = dns.message.from_wire(udp.recv(65536))
            tcp.settimeout(3)
            tcp.connect((net.gw4, 53))
            tcp.sendall(struct.pack("!H", len(query)) + query)
            raw = b""
            while len(raw) < 2 or len(raw) < 2 + struct.unpack_from("!H", raw)[0]:
                chunk = tcp.recv(65536)
                assert chunk
                raw += chunk
            over_tcp = dns.message.from_wire(raw[2:])
        assert over_udp.rcode() == over_tcp.rcode() == dns.rcode.NOERROR, over_udp
        assert over_udp.id == 0x4242 and over_udp.question == over_tcp.question
        assert str(over_udp.question[0].name) == "ALpha."
        assert [rd.to_text() for rrset in over_udp.answer for rd in rrset] == [ip_of(res)]
        assert over_udp.answer == over_tcp.answer and over_udp.edns == over_tcp.edns == 0
