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
* Speed: UDP queries come and go in batches (recvmmsg/sendmmsg, udp.py).
  An answer given once is kept ready in wire form under its question
  (zone.py), so the next query for it costs one dict lookup on its
  case-folded bytes, whatever its ID, flags, EDNS size or letter case; the
  answer is written around the client's own question.  Ready answers
  belong to the zone and go with it on reload.
* Reload: records are files (layout.py describes them).  The plugin
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
import os
import signal
import socket
import sys
import time

from ..core.records import write_atomic
from .forward import Forwarder, ResolvConf
from .layout import network_records, read_json, resolver_files
from .loop import Loop
from .tcp import TcpServer
from .udp import BATCH, Batch, sockaddr
from .wire import BADVERS, Drop, Refuse, build, error_reply, parse_query
from .zone import Zone

POLL_INTERVAL = 0.1
RCVBUF = 4 << 20
IP_FREEBIND = 15
SO_RCVBUFFORCE = 33
FORWARDED = object()


def log(msg: str) -> None:
    sys.stderr.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} resolver[{os.getpid()}]: {msg}\n")
    sys.stderr.flush()


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
        self.loop = Loop(log)
        self.forwarder = Forwarder(self.loop)
        self.tcp = TcpServer(self.loop, lambda zone, data, reply: self._answer(zone, data, reply, udp=False),
                             FORWARDED)
        self.resolv_conf = ResolvConf(resolv_conf)
        self.listeners: dict[str, Listener] = {}
        self.failed: dict[str, str] = {}        # gateway -> why it could not be bound
        self.zones: dict[str, Zone] = {}
        self.signature = None
        self.idle = False
        self.ctl = None
        self.logged = set()

    # -- setup and teardown --
    def start(self) -> None:
        self.reload()
        self.ctl = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.ctl.bind(self.files["sock"])
        self.ctl.listen(64)
        self.loop.register(self.ctl, self._on_control)
        write_atomic(self.files["pid"], f"{os.getpid()}\n".encode())
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

    def _stop(self, why: str) -> None:
        self.shutdown(why)
        self.loop.stopping = True

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
                self.loop.unregister(listener.udp)
                self.loop.unregister(listener.tcp)
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
            self.loop.register(listener.udp, self._udp_handler(listener))
            self.loop.register(listener.tcp, lambda ev, lst=listener: self.tcp.on_accept(lst))
        self.zones = zones
        self.idle = not zones

    def _upstreams(self, zone: Zone) -> list:
        if zone.upstreams:
            return zone.upstreams
        return [u for u in self.resolv_conf.servers if u[0] not in self.listeners or u[1] != 53]

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
                        self._stop("no containers left")
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
        self.resolv_conf.refresh()
        sig = self._scan()
        if sig is None:
            self._stop("state directory removed")
            return
        if sig != self.signature or self.failed:
            self.reload()
        if self.idle:
            self._exit_if_idle()

    def _exit_if_idle(self) -> None:
        try:
            fd = os.open(os.path.join(self.base, "lock"), os.O_RDWR | os.O_CLOEXEC)
        except OSError:
            self._stop("no containers left (lock gone)")
            return
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return  # a plugin is at work: it will tell us, or the next poll retries
        self.reload()
        if self.idle:
            self._stop("no containers left")
            self._lock_fd = fd  # held until the process exits
        else:
            os.close(fd)

    # -- answering --
    def _udp_handler(self, listener: Listener):
        holder, answer, batch = listener.holder, self._udp_answer, Batch(listener.udp)

        def handle(events):
            while batch.serve(holder[0], answer) == BATCH:
                pass

        return handle

    def _udp_answer(self, sock, zone: Zone, data: bytes, sender: bytes):
        """The answer to a UDP query without a ready one, or None (none, or
        forwarded: the upstream's answer is sent when it comes)."""
        def reply(msg):
            try:
                sock.sendto(msg, sockaddr(sender))
            except OSError:
                pass

        msg = self._answer(zone, data, reply, udp=True)
        return None if msg is FORWARDED else msg

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
            found = zone.lookup(q.qname, q.qtype, q.qclass)
            if found is None:
                self.forwarder.forward(self._upstreams(zone), q.qend, data, reply, udp)
                return FORWARDED
            rcode, answers, an, auth, ns = found
            msg = build(q, data, rcode, answers, an, auth, ns, limit=limit)
        zone.remember(data, q, msg)
        return msg

    def run(self) -> None:
        def tick(now):
            self.forwarder.sweep(now)
            self.tcp.sweep(now)
            self._poll()

        self.loop.run(tick, POLL_INTERVAL)


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
