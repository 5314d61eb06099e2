"""Malformed DNS crafted with scapy, sent to a resolver the dnsname plugin
started: each gets the reaction RFC 1035 / 6891 call for (FORMERR or
NOTIMP carrying the query's ID, or no answer at all for what is not a
query), and the resolver answers a well-formed query right after each.

"No answer" is observed without waiting for a timeout: the resolver
serves one socket in order, so had it answered the bad packet, that answer
would arrive before the one to the well-formed query sent after it."""
import struct

import dns.message
import dns.rcode
from scapy.layers.dns import DNS, DNSQR, DNSRR, DNSRROPT

from test_dns_answers import socket_in
from test_dnsname import DOMAIN, Net, ip_of, node  # noqa: F401 (fixture)

FORMERR, NOTIMP, DROP = "formerr", "notimp", "drop"


def question(name: bytes, qtype: int = 1) -> bytes:
    return name + struct.pack("!HH", qtype, 1)


def label(text: bytes) -> bytes:
    return bytes([len(text)]) + text


ALPHA = label(b"alpha") + b"\0"
OPT = bytes(DNSRROPT(rclass=1232, z=0))


def header(qd=1, an=0, ns=0, ar=0, flags=0x0100, qid=0x5151) -> bytes:
    """A DNS header with the counts we say, whatever follows (scapy lets them lie)."""
    return bytes(DNS(id=qid, qr=flags >> 15, opcode=(flags >> 11) & 0xF, rd=flags >> 8 & 1,
                     qdcount=qd, ancount=an, nscount=ns, arcount=ar))[:12]  # scapy adds a question


CASES = {
    # compression: the question has nothing before it to point at; records may only point back
    "compression loop in the question": (header() + question(b"\xc0\x0c"), FORMERR),
    "pointer out of range in the question": (header() + question(b"\xc3\xff"), FORMERR),
    "pointer loop in a record's owner": (header(ar=1) + question(ALPHA) + b"\xc0\x17" + OPT[1:], FORMERR),
    "pointer out of range in a record's owner": (header(ar=1) + question(ALPHA) + b"\xc0\xff" + OPT[1:], FORMERR),
    "forward pointer in a record's owner": (header(an=1) + question(ALPHA) + b"\xc0\x1c"
                                            + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4), FORMERR),
    "pointer cut off at the end": (header(ar=1) + question(ALPHA) + b"\xc0", FORMERR),
    # EDNS (RFC 6891 6.1.1): one OPT, in the additional section, owned by the root
    "two OPT records": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"), ar=[DNSRROPT(), DNSRROPT()])), FORMERR),
    "OPT in the answer section": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"), an=DNSRROPT())), FORMERR),
    "OPT in the authority section": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"), ns=DNSRROPT())), FORMERR),
    "OPT owned by a name": (header(ar=1) + question(ALPHA) + b"\xc0\x0c" + OPT[1:], FORMERR),
    "OPT whose options run past the end": (header(ar=1) + question(ALPHA) + OPT[:-2] + b"\0\x20", FORMERR),
    # counts that lie
    "no question": (header(qd=0), FORMERR),
    "two questions": (header(qd=2) + question(ALPHA) * 2, FORMERR),
    "two questions counted, one sent": (header(qd=2) + question(ALPHA), FORMERR),
    "answer count lies": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"), ancount=3)), FORMERR),
    "additional count lies": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"), arcount=2)) + OPT, FORMERR),
    "record shorter than its rdlength": (bytes(DNS(id=0x5151, qd=DNSQR(qname="alpha"),
                                                   an=DNSRR(rrname="alpha", rdata="10.0.0.1")))[:-2], FORMERR),
    "question cut before its class": (header() + ALPHA + b"\0\1", FORMERR),
    "name without its end": (header() + label(b"alpha"), FORMERR),
    # names (RFC 1035 2.3.4): labels of 63 bytes at most, names of 255
    "label of 64 bytes": (header() + question(label(b"a" * 64) + b"\0"), FORMERR),
    "label of 100 bytes": (header() + question(bytes([100]) + b"b" * 100 + b"\0"), FORMERR),
    "name of 256 bytes": (header() + question(label(b"c" * 63) * 3 + label(b"d" * 62) + b"\0"), FORMERR),
    "name of 300 bytes": (header() + question(label(b"e" * 59) * 5 + b"\0"), FORMERR),
    "extended label type 0x40": (header() + question(b"\x41" + b"x" * 8 + b"\0"), FORMERR),
    # what is not a query gets nothing: no answer to an answer, nothing to say to a torn header
    "empty datagram": (b"", DROP),
    "one byte": (b"\x51", DROP),
    "header of 11 bytes": (header()[:11], DROP),
    "a response": (header(flags=0x8180) + question(ALPHA), DROP),
    "a response to an update": (header(flags=0xA800) + question(ALPHA), DROP),
    # opcodes we do not serve
    "STATUS query": (header(flags=0x1000) + question(ALPHA), NOTIMP),
    "NOTIFY": (header(flags=0x2000) + question(ALPHA), NOTIMP),
    "UPDATE": (header(flags=0x2800, qd=1, ns=1) + question(ALPHA) + bytes(DNSRR(rrname="alpha")), NOTIMP),
}

WELL_FORMED = {
    # the edges of the rules above, on the accepting side
    "label of 63 bytes": header() + question(label(b"a" * 63) + b"".join(label(x.encode()) for x in DOMAIN.split("."))
                                             + b"\0"),
    "name of 255 bytes": header() + question(label(b"c" * 63) * 3 + label(b"d" * 50) + label(b"dns")
                                             + label(b"podman") + b"\0"),
    "pointer back to the question in a record": header(an=1) + question(ALPHA) + b"\xc0\x0c"
    + struct.pack("!HHIH", 1, 1, 0, 4) + bytes(4),
}


class Pod:
    """A UDP socket in a pod, talking to the resolver."""

    def __init__(self, pod: str, server: str):
        self.sock = socket_in(pod)
        self.sock.settimeout(3)
        self.server = server

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, (self.server, 53))

    def recv(self) -> dns.message.Message:
        return dns.message.from_wire(self.sock.recv(65536))

    def control(self, qid: int) -> dns.message.Message:
        self.send(bytes(DNS(id=qid, rd=1, qd=DNSQR(qname="alpha", qtype="A"))))
        return self.recv()


def test_malformed_queries_get_the_right_reaction(bin_dir, node, make_netns, tmp_path, state_dirs):
    net = Net(bin_dir, node, tmp_path, "10.201.32.0/24")
    a = make_netns("dpod")
    alpha = ip_of(net.attach(a, "ca", "alpha"))
    pod = Pod(a, net.gw4)
    try:
        for n, (name, (data, want)) in enumerate(CASES.items()):
            pod.send(data)
            control_id = 0x7000 + n
            if want == DROP:
                got = pod.control(control_id)
                assert got.id == control_id, f"{name}: answered, though it is not a query"
            else:
                got = pod.recv()
                assert got.id == 0x5151 and got.rcode() == (dns.rcode.FORMERR if want == FORMERR else dns.rcode.NOTIMP), \
                    f"{name}: {got}"
                assert not (got.question or got.answer or got.authority or got.additional), name
                got = pod.control(control_id)
            assert got.id == control_id and got.rcode() == dns.rcode.NOERROR, f"after {name}: {got}"
            assert [rd.to_text() for rrset in got.answer for rd in rrset] == [alpha], f"after {name}"
        for name, data in WELL_FORMED.items():
            pod.send(data)
            got = pod.recv()
            assert got.id == 0x5151 and got.rcode() in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN), f"{name}: {got}"
            assert got.question, name
    finally:
        pod.sock.close()
