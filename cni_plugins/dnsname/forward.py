"""Forwarding the names we do not own: to the network's ``upstreams`` or
the nameservers of /etc/resolv.conf (re-read when it changes), one after
another on timeout, SERVFAIL when all fail.  A query goes out unchanged
but for its ID; a truncated answer to a TCP client is fetched again over
TCP (in a helper thread, handed back to the loop)."""
import ipaddress
import os
import random
import socket
import threading
import time

from .wire import servfail

UPSTREAM_TIMEOUT = 1.5        # per upstream server, then the next one
MAX_PENDING = 8192


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


class ResolvConf:
    """The nameservers of a resolv.conf, re-read whenever the file changes."""

    def __init__(self, path: str):
        self.path = path
        self.signature = None
        self.servers = []

    def refresh(self) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_mtime_ns, st.st_size, st.st_ino)
        except OSError:
            sig = None
        if sig != self.signature:
            self.signature = sig
            self.servers = resolv_conf_servers(self.path)


class Pending:
    __slots__ = ("reply", "orig_id", "data", "ups", "idx", "deadline", "udp", "qend", "sent_to")


class Forwarder:
    def __init__(self, loop):
        self.loop = loop
        self.pending: dict[int, Pending] = {}
        self.socks: dict[int, socket.socket] = {}

    def _sock(self, family: int) -> socket.socket:
        sock = self.socks.get(family)
        if sock is None:
            sock = socket.socket(family, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
            sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
            self.socks[family] = sock
            self.loop.register(sock, lambda ev, s=sock: self._on_answer(s))
        return sock

    def forward(self, upstreams: list, qend: int, data: bytes, reply, udp: bool) -> None:
        """Send query ``data`` (question ends at ``qend``) upstream;
        ``reply(message)`` gets the answer, or SERVFAIL."""
        if not upstreams or len(self.pending) >= MAX_PENDING:
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
        p.reply, p.orig_id, p.data, p.ups, p.idx, p.udp, p.qend = reply, data[:2], data, upstreams, 0, udp, qend
        p.sent_to = set()
        self.pending[uid] = p
        self._send(uid, p)

    def _send(self, uid: int, p: Pending) -> None:
        host, port = p.ups[p.idx]
        p.deadline = time.monotonic() + UPSTREAM_TIMEOUT
        p.sent_to.add((host, port))
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self._sock(family).sendto(uid.to_bytes(2, "big") + p.data[2:], (host, port))
        except OSError:
            p.deadline = 0  # the sweep moves on to the next server

    def _on_answer(self, sock) -> None:
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
                self._over_tcp(p)  # truncated: a TCP client gets the whole answer
            else:
                p.reply(p.orig_id + data[2:])

    def sweep(self, now: float) -> None:
        """Move timed-out queries on to the next server, or give up."""
        for uid, p in list(self.pending.items()):
            if p.deadline <= now:
                p.idx += 1
                if p.idx < len(p.ups):
                    self._send(uid, p)
                else:
                    del self.pending[uid]
                    p.reply(servfail(p.data))

    def _over_tcp(self, p: Pending) -> None:
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
            message = answer or servfail(p.data)
            self.loop.call_soon_threadsafe(lambda: p.reply(message))

        threading.Thread(target=work, daemon=True).start()
