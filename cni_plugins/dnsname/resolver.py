"""The dnsname resolver: one process per network namespace, serving every
dnsname network of that namespace on its gateway addresses, port 53, UDP
and TCP.

* Names: each container's name and aliases, bare and under the network's
  domain, A and AAAA (ANY: both), and PTR for its addresses (to
  ``name.domain``).  Authoritative (AA): a name under the domain that we do
  not know is NXDOMAIN, a known name without the type is NODATA, both with
  the domain's SOA; a reverse name of an unknown address in a container
  subnet is NXDOMAIN.  A query is answered from the zone of the network
  whose gateway it came to, so networks stay apart.
* Everything else is forwarded, unchanged but for its ID, to the network's
  ``upstreams`` or the nameservers of /etc/resolv.conf (re-read when it
  changes), one after another on timeout; SERVFAIL when all fail.  A
  truncated upstream answer to a TCP client is fetched again over TCP.
* EDNS: an OPT in the query gets one back (our payload size, DO copied);
  version > 0 is BADVERS; answers that exceed the client's size (512
  without EDNS) come back truncated (TC).  FORMERR, NOTIMP as RFC 1035.
* Speed: the answer to a query we own depends only on the query's bytes
  after the ID, so the first answer is stored under those bytes and later
  identical queries are answered by one dict lookup plus the ID patched in.
  The cache belongs to the zone and goes with it on reload.
* Reload: records are files (dnsname.py describes the layout).  The plugin
  sends "reload" on the control socket after every change (answered once
  the new zone serves), and a 100 ms poll of the directory's mtimes catches
  anything else.  Sockets stay open across reloads, so no query is lost;
  only the zone object behind them is swapped (single-threaded loop).
* Exit: when no network of ours has a container left, under the plugin's
  lock (the "reload" caller holds it; the poll path takes it), so a
  concurrent ADD either sees us gone or finds us serving.
"""
import argparse
import fcntl
import ipaddress
import os
import random
import select
import signal
import socket
import struct
import sys
import threading
import time
from collections import deque

from .plugin import DEFAULT_DOMAIN, network_records, read_json, resolver_files

A, NS, SOA, PTR, AAAA, OPT, ANY = 1, 2, 6, 12, 28, 41, 255
IN = 1
NOERROR, FORMERR, SERVFAIL, NXDOMAIN, NOTIMP, REFUSED, BADVERS = 0, 1, 2, 3, 4, 5, 16
EDNS_PAYLOAD = 1232           # what we advertise (the DNS flag day 2020 value)
TTL = 0                       # as dnsmasq's local-ttl: containers come and go
POLL_INTERVAL = 0.1
UPSTREAM_TIMEOUT = 1.5        # per upstream server, then the next one
MAX_PENDING = 8192
CACHE_MAX = 65536
TCP_IDLE = 10.0
TCP_MAX = 512
RCVBUF = 4 << 20
IP_FREEBIND = 15
SO_RCVBUFFORCE = 33
_HEADER = struct.Struct("!HHHHHH")
FORWARDED = object()
_RR = struct.Struct("!HHHIH")   # compressed owner (pointer), type, class, ttl, rdlength


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} resolver[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


# --- wire format ------------------------------------------------------------------
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
    while True:
        if p >= len(data):
            raise Refuse(FORMERR)
        n = data[p]
        if n & 0xC0 == 0xC0:
            return p + 2
        if n & 0xC0:
            raise Refuse(FORMERR)
        if n == 0:
            return p + 1
        p += 1 + n


def parse_query(data: bytes) -> Query:
    if len(data) < 12:
        raise Drop
    _, flags, qd, an, ns, ar = _HEADER.unpack_from(data)
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
    q.qname = b".".join(labels).lower()
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
        opt = b"\0" + struct.pack("!HHIH", OPT, EDNS_PAYLOAD, ((rcode >> 4) << 24) | q.do, 0)
        ar = 1
    question = data[12:q.qend]
    msg = _HEADER.pack(0, flags, 1, an, ns, ar) + question + answers + auth + opt
    if len(msg) > limit:
        msg = _HEADER.pack(0, flags | 0x0200, 1, 0, 0, ar) + question + opt
    return data[:2] + msg[2:]


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


def parse_upstream(spec: str, default_port: int = 53):
    """"ADDR", "ADDR:PORT", "[V6]:PORT" -> (addr, port); None when invalid."""
    spec = spec.strip()
    host, port = spec, default_port
    if spec.startswith("["):
        host, _, rest = spec[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif spec.count(":") == 1:
        host, _, port = spec.partition(":")
    try:
        return str(ipaddress.ip_address(host.split("%")[0])), int(port)
    except ValueError:
        return None


def resolv_conf_servers(path: str = "/etc/resolv.conf") -> list:
    servers = []
    try:
        with open(path) as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 2 and parts[0] == "nameserver":
                    addr = parse_upstream(parts[1] if ":" not in parts[1] else f"[{parts[1]}]")
                    if addr:
                        servers.append(addr)
    except OSError:
        pass
    return servers


# --- zones ------------------------------------------------------------------------
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
        self.ptr = {name: _RR.pack(0xC00C, PTR, IN, TTL, len(t)) + t for name, t in ptr.items()}
        self.subnets = list(subnets)
        serial = int(time.time()) & 0xFFFFFFFF
        owner = encode_name(domain)
        rdata = owner + encode_name("hostmaster." + domain) + struct.pack("!IIIII", serial, 3600, 600, 86400, 0)
        self.soa = owner + struct.pack("!HHIH", SOA, IN, TTL, len(rdata)) + rdata
        self.soa_answer = _RR.pack(0xC00C, SOA, IN, TTL, len(rdata)) + rdata

    @staticmethod
    def _rrset(rtype: int, packed: list[bytes]) -> bytes:
        return b"".join(_RR.pack(0xC00C, rtype, IN, TTL, len(p)) + p for p in packed)

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


# --- batched UDP: recvmmsg/sendmmsg -------------------------------------------------
BATCH = 64
_SLOT = 2048                 # bytes per message buffer (queries are small; answers to cached ones too)
_NAME = 32                   # room for a sockaddr_in6
MSG_DONTWAIT = 0x40


class Batch:
    """Up to BATCH queries taken with one recvmmsg and the cached answers
    sent back with one sendmmsg: the syscalls, not Python, are most of the
    cost of a query.  Buffers are bytearrays shared with ctypes; the
    headers are read and written through memoryview casts."""

    _libc = None

    @classmethod
    def make(cls, sock):
        try:
            import ctypes

            if cls._libc is None:
                cls._libc = ctypes.CDLL(None, use_errno=True)
            cls._libc.recvmmsg, cls._libc.sendmmsg
            return cls(sock, ctypes)
        except (OSError, AttributeError, ImportError):
            return None

    def __init__(self, sock, ctypes):
        self.sock = sock
        self.fd = sock.fileno()
        self.ctypes = ctypes
        self.recvmmsg, self.sendmmsg = self._libc.recvmmsg, self._libc.sendmmsg
        n = BATCH
        self.rbuf, self.names = bytearray(n * _SLOT), bytearray(n * _NAME)
        self.rmv = memoryview(self.rbuf)
        c_r, c_n = ((ctypes.c_char * len(b)).from_buffer(b) for b in (self.rbuf, self.names))
        self._keep = (c_r, c_n)
        # struct iovec {void *base; size_t len}; struct mmsghdr {struct msghdr (56 bytes); unsigned len; pad}
        self.riov = (ctypes.c_uint64 * (2 * n))()
        self.siov = (ctypes.c_uint64 * (2 * n))()
        self.rhdr = (ctypes.c_uint64 * (8 * n))()
        self.shdr = (ctypes.c_uint64 * (8 * n))()
        a_r, a_n = ctypes.addressof(c_r), ctypes.addressof(c_n)
        self.name_addr = [a_n + i * _NAME for i in range(n)]
        self.slot_addr = [a_r + i * _SLOT for i in range(n)]
        for i in range(n):
            self.riov[2 * i], self.riov[2 * i + 1] = a_r + i * _SLOT, _SLOT
            for hdr, iov in ((self.rhdr, self.riov), (self.shdr, self.siov)):
                hdr[8 * i] = self.name_addr[i]                       # msg_name
                hdr[8 * i + 1] = _NAME                               # msg_namelen (low 32 bits)
                hdr[8 * i + 2] = ctypes.addressof(iov) + 16 * i      # msg_iov
                hdr[8 * i + 3] = 1                                   # msg_iovlen
        self.r32 = memoryview(self.rhdr).cast("B").cast("I")   # [16i+2] namelen, [16i+14] msg_len
        self.s32 = memoryview(self.shdr).cast("B").cast("I")
        self.s64 = memoryview(self.shdr).cast("B").cast("Q")   # [8i] msg_name
        self.siov64 = memoryview(self.siov).cast("B").cast("Q")  # [2i] iov_base, [2i+1] iov_len
        self.rptr, self.sptr = ctypes.byref(self.rhdr), ctypes.byref(self.shdr)

    def _addr(self, i: int, namelen: int):
        raw = bytes(self.names[i * _NAME:i * _NAME + namelen])
        port = int.from_bytes(raw[2:4], "big")
        if int.from_bytes(raw[:2], "little") == socket.AF_INET6:
            return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, int.from_bytes(raw[24:28], "little")
        return socket.inet_ntop(socket.AF_INET, raw[4:8]), port

    def serve(self, zone, slow) -> int:
        """Take what is queued (up to BATCH) and answer it; returns how many were taken."""
        n = self.recvmmsg(self.fd, self.rptr, BATCH, MSG_DONTWAIT, None)
        if n <= 0:
            return 0
        cache, rmv, rbuf, r32, s32, s64, siov64 = zone.cache, self.rmv, self.rbuf, self.r32, self.s32, self.s64, self.siov64
        name_addr, slot_addr, slot, namesize = self.name_addr, self.slot_addr, _SLOT, _NAME
        j = 0
        for i in range(n):
            off = i * slot
            h = 16 * i
            size = r32[h + 14]
            namelen = r32[h + 2]
            r32[h + 2] = namesize
            answer = cache.get(rmv[off + 2:off + size].tobytes())
            if answer is not None and len(answer) < slot - 2:
                # the answer goes out of the query's own buffer, behind its ID
                rbuf[off + 2:off + 2 + len(answer)] = answer
                siov64[2 * j] = slot_addr[i]
                siov64[2 * j + 1] = len(answer) + 2
                s64[8 * j] = name_addr[i]
                s32[16 * j + 2] = namelen
                j += 1
            else:
                slow(self.sock, zone, rmv[off:off + size].tobytes(), self._addr(i, namelen))
        sent = 0
        while sent < j:
            k = self.sendmmsg(self.fd, self.ctypes.byref(self.shdr, 64 * sent), j - sent, 0)
            if k <= 0:
                break  # the socket's buffer is full: UDP may drop, as the kernel would
            sent += k
        return n


# --- the server -------------------------------------------------------------------
class Pending:
    __slots__ = ("reply", "orig_id", "data", "ups", "idx", "deadline", "udp", "qend", "sent_to")


class TcpConn:
    __slots__ = ("sock", "holder", "inbuf", "outbuf", "last", "closed", "eof", "waiting")


class Listener:
    def __init__(self, addr: str, zone: Zone):
        self.addr = addr
        self.holder = [zone]
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        self.udp = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.tcp = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        try:
            for s in (self.udp, self.tcp):
                s.setsockopt(socket.SOL_IP, IP_FREEBIND, 1)  # the gateway may come a moment later
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                self.udp.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            except OSError:
                self.udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)
            self.tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.udp.bind((addr, 53))
            self.tcp.bind((addr, 53))
            self.tcp.listen(128)
        except OSError:
            self.close()
            raise

    def close(self):
        self.udp.close()
        self.tcp.close()


class Resolver:
    def __init__(self, base: str, ino: int, resolv_conf: str = "/etc/resolv.conf"):
        self.base = base
        self.ino = ino
        self.files = resolver_files(base, ino)
        self.resolv_conf = resolv_conf
        self.ep = select.epoll()
        self.handlers: dict[int, callable] = {}
        self.listeners: dict[str, Listener] = {}
        self.failed: dict[str, str] = {}        # gateway -> why it could not be bound
        self.zones: dict[str, Zone] = {}
        self.pending: dict[int, Pending] = {}
        self.upstream_socks: dict[int, socket.socket] = {}
        self.tcp_conns: dict[int, TcpConn] = {}
        self.done = deque()                      # (reply, message) from helper threads
        self.signature = None
        self.resolv_sig = None
        self.resolv_servers = []
        self.stopping = False
        self.idle = False
        self.ctl = None
        self.logged = set()

    # -- setup and teardown --
    def start(self) -> None:
        self.wake_r, self.wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self.wake_r.setblocking(False)
        self._register(self.wake_r, self._on_wake)
        self.reload()
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.ctl.bind(self.files["sock"])
        self.ctl.listen(64)
        self._register(self.ctl, self._on_control)
        tmp = self.files["pid"] + ".tmp"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, self.files["pid"])
        log(f"serving {', '.join(self.listeners) or 'nothing yet'} for netns {self.ino}")

    def shutdown(self, why: str) -> None:
        """Stop serving and remove our files (the caller holds the lock or we are being killed)."""
        for listener in self.listeners.values():
            listener.close()
        self.listeners.clear()
        if self.ctl is not None:
            self.ctl.close()
        try:
            with open(self.files["pid"]) as f:
                if f.read().strip() == str(os.getpid()):
                    os.unlink(self.files["pid"])
        except OSError:
            pass
        log(f"exiting: {why}")

    def _register(self, sock, handler, events=select.EPOLLIN) -> None:
        self.ep.register(sock.fileno(), events)
        self.handlers[sock.fileno()] = handler

    def _unregister(self, sock) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self.handlers.pop(fd, None)
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    # -- records --
    def _scan(self):
        """The records' signature: mtimes of the dir, each network dir and its network.json."""
        try:
            sig = [os.stat(self.base).st_mtime_ns]
            names = sorted(os.listdir(self.base))
        except FileNotFoundError:
            return None
        for name in names:
            d = os.path.join(self.base, name)
            try:
                st = os.stat(d)
                if not os.path.isdir(d):
                    continue
                sig.append((name, st.st_mtime_ns, os.stat(os.path.join(d, "network.json")).st_mtime_ns))
            except OSError:
                sig.append((name, None))
        return tuple(sig)

    def reload(self) -> None:
        self.signature = self._scan()
        zones = {}
        try:
            names = sorted(os.listdir(self.base))
        except FileNotFoundError:
            names = []
        for name in names:
            d = os.path.join(self.base, name)
            if not os.path.isdir(d):
                continue
            meta = read_json(os.path.join(d, "network.json"))
            if not isinstance(meta, dict) or meta.get("netns") != self.ino:
                continue
            records = network_records(d)
            if records:
                try:
                    zones[name] = Zone(name, meta, records)
                except (ValueError, TypeError) as e:
                    log(f"network {name}: bad records: {e}")
        want = {}
        for zone in zones.values():
            for gw in zone.gateways:
                want[gw] = zone
        for addr in list(self.listeners):
            if addr not in want:
                listener = self.listeners.pop(addr)
                self._unregister(listener.udp)
                self._unregister(listener.tcp)
                listener.close()
        self.failed = {}
        for addr, zone in want.items():
            listener = self.listeners.get(addr)
            if listener is not None:
                listener.holder[0] = zone
                continue
            try:
                listener = Listener(addr, zone)
            except OSError as e:
                self.failed[addr] = f"cannot listen on {addr} port 53: {e.strerror or e}"
                if self.failed[addr] not in self.logged:
                    self.logged.add(self.failed[addr])
                    log(self.failed[addr])
                continue
            self.listeners[addr] = listener
            self._register(listener.udp, self._udp_handler(listener))
            self._register(listener.tcp, lambda ev, lst=listener: self._on_accept(lst))
        self.zones = zones
        self.idle = not zones

    def _check_resolv_conf(self) -> None:
        try:
            st = os.stat(self.resolv_conf)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig != self.resolv_sig:
            self.resolv_sig = sig
            self.resolv_servers = resolv_conf_servers(self.resolv_conf)

    def _upstreams(self, zone: Zone) -> list:
        if zone.upstreams:
            return zone.upstreams
        return [u for u in self.resolv_servers if u[0] not in self.listeners or u[1] != 53]

    # -- control --
    def _on_control(self, events) -> None:
        try:
            conn, _ = self.ctl.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(2.0)
            try:
                line = b""
                while b"\n" not in line and len(line) < 4096:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    line += chunk
                words = line.decode(errors="replace").split()
                command = words[0] if words else ""
                if command == "ping":
                    conn.sendall(b"ok\n")
                elif command == "reload":
                    self.reload()
                    if self.idle:
                        # the caller holds the lock: leave now, so its next ADD starts a new one
                        self.shutdown("no containers left")
                        self.stopping = True
                        conn.sendall(b"exit\n")
                        return
                    errors = [why for addr, why in self.failed.items()
                              if not words[1:] or any(addr in z.gateways for n, z in self.zones.items()
                                                      if n in words[1:])]
                    conn.sendall((f"error: {'; '.join(errors)}\n" if errors else "ok\n").encode())
                else:
                    conn.sendall(b"error: unknown command\n")
            except OSError:
                pass

    def _poll(self) -> None:
        self._check_resolv_conf()
        sig = self._scan()
        if sig is None:
            self.shutdown("state directory removed")
            self.stopping = True
            return
        if sig != self.signature or self.failed:
            self.reload()
        if self.idle:
            self._exit_if_idle()

    def _exit_if_idle(self) -> None:
        try:
            fd = os.open(os.path.join(self.base, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self.shutdown("no containers left (lock gone)")
            self.stopping = True
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return  # a plugin is at work: it will tell us, or the next poll retries
        self.reload()
        if self.idle:
            self.shutdown("no containers left")
            self.stopping = True
            self._lock_fd = fd  # held until the process exits
        else:
            os.close(fd)

    # -- UDP --
    def _udp_handler(self, listener: Listener):
        holder, slow, sock = listener.holder, self._udp_slow, listener.udp
        batch = Batch.make(sock)
        if batch is not None:
            def handle(events):
                while batch.serve(holder[0], slow) == BATCH:
                    pass

            return handle
        recv, send = sock.recvfrom, sock.sendto

        def handle(events):
            cache = holder[0].cache
            for _ in range(BATCH):
                try:
                    data, addr = recv(4096)
                except OSError:
                    return
                answer = cache.get(data[2:])
                if answer is not None:
                    try:
                        send(data[:2] + answer, addr)
                    except OSError:
                        pass
                else:
                    slow(sock, holder[0], data, addr)

        return handle

    def _udp_slow(self, sock, zone: Zone, data: bytes, addr) -> None:
        def reply(msg, sock=sock, addr=addr):
            try:
                sock.sendto(msg, addr)
            except OSError:
                pass

        msg = self._answer(zone, data, reply, udp=True)
        if msg is not None and msg is not FORWARDED:
            reply(msg)

    def _answer(self, zone: Zone, data: bytes, reply, udp: bool):
        """The answer to a query; FORWARDED once it is handed to an upstream
        (``reply`` gets the answer later), None for no answer at all."""
        try:
            q = parse_query(data)
        except Drop:
            return None
        except Refuse as e:
            return error_reply(data, e.rcode)
        limit = (q.payload if q.edns else 512) if udp else 65535
        if q.edns and q.version > 0:
            msg = build(q, data, BADVERS, aa=False, limit=limit)
        else:
            found = zone.lookup(q)
            if found is None:
                self._forward(zone, q, data, reply, udp)
                return FORWARDED
            rcode, answers, an, auth, ns = found
            msg = build(q, data, rcode, answers, an, auth, ns, limit=limit)
        if udp and not q.options:
            cache = zone.cache
            if len(cache) >= CACHE_MAX:
                cache.clear()
            cache[data[2:]] = msg[2:]
        return msg

    # -- forwarding --
    def _upstream_sock(self, family: int) -> socket.socket:
        sock = self.upstream_socks.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self.upstream_socks[family] = sock
            self._register(sock, lambda ev, s=sock: self._on_upstream(s))
        return sock

    def _forward(self, zone: Zone, q: Query, data: bytes, reply, udp: bool) -> None:
        ups = self._upstreams(zone)
        if not ups or len(self.pending) >= MAX_PENDING:
            reply(servfail(data))
            return
        for _ in range(16):
            uid = random.getrandbits(16)
            if uid not in self.pending:
                break
        else:
            reply(servfail(data))
            return
        p = Pending()
        p.reply, p.orig_id, p.data, p.ups, p.idx, p.udp, p.qend = reply, data[:2], data, ups, 0, udp, q.qend
        p.sent_to = set()
        self.pending[uid] = p
        self._send_upstream(uid, p)

    def _send_upstream(self, uid: int, p: Pending) -> None:
        host, port = p.ups[p.idx]
        p.deadline = time.monotonic() + UPSTREAM_TIMEOUT
        p.sent_to.add((host, port))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._upstream_sock(family).sendto(uid.to_bytes(2, "big") + p.data[2:], (host, port))
        except OSError:
            p.deadline = 0  # the sweep moves on to the next server

    def _on_upstream(self, sock) -> None:
        for _ in range(128):
            try:
                data, addr = sock.recvfrom(65535)
            except OSError:
                return
            if len(data) < 12:
                continue
            uid = int.from_bytes(data[:2], "big")
            p = self.pending.get(uid)
            if p is None or (addr[0], addr[1]) not in p.sent_to:
                continue
            if data[12:p.qend].lower() != p.data[12:p.qend].lower():
                continue
            del self.pending[uid]
            if not p.udp and data[2] & 0x02:
                self._tcp_upstream(p)  # truncated: a TCP client gets the whole answer
            else:
                p.reply(p.orig_id + data[2:])

    def _sweep(self, now: float) -> None:
        for uid, p in list(self.pending.items()):
            if p.deadline <= now:
                p.idx += 1
                if p.idx < len(p.ups):
                    self._send_upstream(uid, p)
                else:
                    del self.pending[uid]
                    p.reply(servfail(p.data))
        for conn in list(self.tcp_conns.values()):
            if now - conn.last > TCP_IDLE and not conn.waiting:
                self._tcp_close(conn)

    def _tcp_upstream(self, p: Pending) -> None:
        def work():
            answer = None
            for host, port in p.ups[p.idx:] + p.ups[:p.idx]:
                try:
                    with socket.create_connection((host, port), timeout=3.0) as s:
                        s.sendall(len(p.data).to_bytes(2, "big") + p.data)
                        buf = b""
                        while len(buf) < 2 or len(buf) < 2 + int.from_bytes(buf[:2], "big"):
                            chunk = s.recv(65537)
                            if not chunk:
                                raise OSError("connection closed")
                            buf += chunk
                        answer = buf[2:2 + int.from_bytes(buf[:2], "big")]
                        break
                except OSError:
                    continue
            self.done.append((p.reply, answer or servfail(p.data)))
            try:
                self.wake_w.send(b"x")
            except OSError:
                pass

        threading.Thread(target=work, daemon=True).start()

    def _on_wake(self, events) -> None:
        try:
            while self.wake_r.recv(64):
                pass
        except OSError:
            pass
        while self.done:
            reply, msg = self.done.popleft()
            reply(msg)

    # -- TCP --
    def _on_accept(self, listener: Listener) -> None:
        for _ in range(16):
            try:
                sock, _ = listener.tcp.accept()
            except OSError:
                return
            if len(self.tcp_conns) >= TCP_MAX:
                oldest = min(self.tcp_conns.values(), key=lambda c: c.last)
                self._tcp_close(oldest)
            sock.setblocking(False)
            conn = TcpConn()
            conn.sock, conn.holder, conn.inbuf, conn.outbuf = sock, listener.holder, bytearray(), bytearray()
            conn.last, conn.closed, conn.eof, conn.waiting = time.monotonic(), False, False, 0
            self.tcp_conns[sock.fileno()] = conn
            self._register(sock, lambda ev, c=conn: self._on_tcp(c, ev))

    def _on_tcp(self, conn: TcpConn, events) -> None:
        if events & select.EPOLLOUT:
            self._tcp_flush(conn)
        if conn.closed or not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._tcp_close(conn)
            return
        conn.last = time.monotonic()
        if not chunk:
            conn.eof = True
            self.ep.modify(conn.sock.fileno(), select.EPOLLOUT if conn.outbuf else 0)
            self._tcp_maybe_close(conn)
            return
        conn.inbuf += chunk
        while len(conn.inbuf) >= 2:
            n = int.from_bytes(conn.inbuf[:2], "big")
            if len(conn.inbuf) < 2 + n:
                break
            data = bytes(conn.inbuf[2:2 + n])
            del conn.inbuf[:2 + n]
            conn.waiting += 1

            def reply(msg, conn=conn):
                conn.waiting -= 1
                self._tcp_send(conn, msg)

            msg = self._answer(conn.holder[0], data, reply, udp=False)
            if msg is FORWARDED:
                continue
            if msg is None:
                conn.waiting -= 1  # not a query: no answer
            else:
                reply(msg)

    def _tcp_send(self, conn: TcpConn, msg: bytes) -> None:
        if conn.closed:
            return
        conn.outbuf += len(msg).to_bytes(2, "big") + msg
        self._tcp_flush(conn)

    def _tcp_flush(self, conn: TcpConn) -> None:
        if conn.closed:
            return
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._tcp_close(conn)
            return
        want = (0 if conn.eof else select.EPOLLIN) | (select.EPOLLOUT if conn.outbuf else 0)
        self.ep.modify(conn.sock.fileno(), want)
        self._tcp_maybe_close(conn)

    def _tcp_maybe_close(self, conn: TcpConn) -> None:
        if conn.eof and not conn.outbuf and not conn.waiting:
            self._tcp_close(conn)

    def _tcp_close(self, conn: TcpConn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.tcp_conns.pop(conn.sock.fileno(), None)
        self._unregister(conn.sock)
        conn.sock.close()

    # -- main loop --
    def run(self) -> None:
        poll, handlers = self.ep.poll, self.handlers
        next_poll = time.monotonic() + POLL_INTERVAL
        while not self.stopping:
            try:
                for fd, events in poll(POLL_INTERVAL):
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)
                    if self.stopping:
                        return
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + POLL_INTERVAL
                    self._sweep(now)
                    self._poll()
            except (SystemExit, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001 - one bad packet must not take DNS down
                import traceback

                log(f"error: {type(e).__name__}: {e}\n{traceback.format_exc()}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(prog="pycni-resolver")
    ap.add_argument("--base", required=True, help="the dnsname state dir (run_dir()/dnsname)")
    ap.add_argument("--netns", type=int, required=True, help="inode of the network namespace to serve")
    ap.add_argument("--daemon", action="store_true", help="fork: the first process exits at once")
    ap.add_argument("--resolv-conf", default="/etc/resolv.conf")
    args = ap.parse_args(argv)
    if args.daemon:
        if os.fork():
            os._exit(0)
        os.chdir("/")
    server = Resolver(args.base, args.netns, args.resolv_conf)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, lambda s, f: setattr(server, "signature", None))  # reload at next poll
    try:
        server.start()
    except OSError as e:
        os.write(1, f"error: {e}\n".encode())
        log(f"cannot start: {e}")
        sys.exit(1)
    os.write(1, b"ready\n")
    if args.daemon:
        null = os.open("/dev/null", os.O_WRONLY)
        os.dup2(null, 1)
        os.close(null)
    try:
        server.run()
    except SystemExit:
        server.shutdown("signal")
    except BaseException as e:
        server.shutdown(f"crashed: {type(e).__name__}: {e}")
        raise


if __name__ == "__main__":
    main()
