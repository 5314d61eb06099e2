"""`pycni lab probe PORT/PROTO...`: which pod reaches which, as the
Kubernetes network-policy e2e suite and cyclonus show it: a matrix per
port, rows sources, columns destinations.

- Listeners: in every pod, for every port asked, a socket made inside the
  pod's network namespace (this process enters it to make the socket; a
  socket stays in the namespace it was made in) on every address, IPv4
  and IPv6: TCP accepts and closes, UDP echoes.
- Probes: from every pod to every pod (itself too), for each address
  family both have, a TCP handshake or a UDP datagram echoed back; all at
  once from one event loop, each given ``timeout`` seconds, a failed one
  tried again ``retries`` times with a new socket (a lost packet is not a
  policy).  So a run takes about (1 + retries) x timeout when anything is
  blocked, whatever the number of pods.
- UDP probes are sent from source ports a counter in the lab dir hands
  out (10000-32767, around), so no probe rides on the conntrack entry of
  an earlier one: an entry of a flow allowed before would let its packets
  through as established, whatever the policies say now.  TCP needs none:
  the kernel picks fresh ports, and conntrack takes a new SYN as new.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import os
import resource
import selectors
import socket
import time
from dataclasses import dataclass

from cni_plugins.core.records import read_json, write_atomic

from .hosts import inside
from .spec import LabError

PROTOCOLS = {"tcp": socket.SOCK_STREAM, "udp": socket.SOCK_DGRAM}
PAYLOAD = b"pycni-probe"
UDP_RESEND = 0.2                  # seconds between a UDP probe's datagrams
SOURCE_PORTS = (10000, 32768)     # below the kernel's ephemeral range
BATCH = 4000                      # probes in flight at once (sockets)


@dataclass(frozen=True)
class Probe:
    source: str        # namespace/name
    destination: str
    address: str
    port: int
    protocol: str      # tcp | udp

    @property
    def family(self) -> int:
        return ipaddress.ip_address(self.address).version


def parse_targets(items: list[str]) -> list[tuple[int, str]]:
    """"80/tcp", "53/udp", "8080" -> (port, protocol), in the order given."""
    targets = []
    for item in items:
        port, _, protocol = item.partition("/")
        protocol = (protocol or "tcp").lower()
        if not port.isdigit() or not 0 < int(port) < 65536 or protocol not in PROTOCOLS:
            raise LabError(f"{item!r}: give PORT or PORT/PROTO, PROTO tcp or udp (e.g. 80/tcp 53/udp)")
        if (int(port), protocol) not in targets:
            targets.append((int(port), protocol))
    return targets


def plan(pods: list[dict], targets: list[tuple[int, str]]) -> list[Probe]:
    """Every pod to every pod, per address family both have and target."""
    def addresses(pod):
        found = {}
        for text in pod["ips"]:
            found.setdefault(ipaddress.ip_address(text.split("/")[0]).version, text.split("/")[0])
        return found

    probes = []
    for src in pods:
        mine = addresses(src)
        for dst in pods:
            theirs = addresses(dst)
            for family in sorted(mine.keys() & theirs.keys()):
                probes += [Probe(_key(src), _key(dst), theirs[family], port, protocol) for port, protocol in targets]
    return probes


def _key(pod: dict) -> str:
    return f"{pod['namespace']}/{pod['name']}"


# --- the event loop ----------------------------------------------------------------
class _Run:
    """Listeners and probes on one selector."""

    def __init__(self, pods: dict[str, dict]):
        self.pods = pods
        self.sel = selectors.DefaultSelector()
        self.sockets: set[socket.socket] = set()

    def listen(self, targets: list[tuple[int, str]]) -> None:
        for key, pod in self.pods.items():
            with inside(pod["netns"]):
                for port, protocol in targets:
                    sock = self._socket(socket.AF_INET6, PROTOCOLS[protocol])
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    try:
                        sock.bind(("::", port))
                    except OSError as e:
                        raise LabError(f"pod {key}: cannot listen on {port}/{protocol}: {e.strerror}") from None
                    if protocol == "tcp":
                        sock.listen(1024)
                    self.sel.register(sock, selectors.EVENT_READ, ("listener", protocol))

    def _socket(self, family: int, kind: int) -> socket.socket:
        sock = socket.socket(family, kind | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
        self.sockets.add(sock)
        return sock

    def close(self) -> None:
        self.sel.close()
        for sock in self.sockets:
            sock.close()

    def probe(self, probes: list[Probe], source_port, timeout: float) -> dict[Probe, bool]:
        """Try ``probes`` at once; ``source_port(probe)`` gives a UDP probe's."""
        results: dict[Probe, bool] = {}
        pending: dict[socket.socket, Probe] = {}
        by_source: dict[str, list[Probe]] = {}
        for p in probes:
            by_source.setdefault(p.source, []).append(p)
        for source, mine in by_source.items():
            with inside(self.pods[source]["netns"]):
                for p in mine:
                    sock = self._start(p, source_port)
                    if sock is None:
                        results[p] = False
                    else:
                        pending[sock] = p
        deadline = time.monotonic() + timeout
        resend = time.monotonic() + UDP_RESEND
        while pending and time.monotonic() < deadline:
            for key, _ in self.sel.select(max(0.0, min(deadline, resend) - time.monotonic())):
                if key.data[0] == "listener":
                    self._serve(key.fileobj, key.data[1])
                elif key.fileobj in pending:
                    outcome = self._outcome(key.fileobj, key.data[1])
                    if outcome is not None:
                        results[pending.pop(key.fileobj)] = outcome
                        self._drop(key.fileobj)
            if time.monotonic() >= resend:
                resend = time.monotonic() + UDP_RESEND
                for sock, p in pending.items():
                    if p.protocol == "udp":
                        self._send(sock)
        for sock, p in pending.items():
            results[p] = False
            self._drop(sock)
        return results

    def _start(self, p: Probe, source_port) -> socket.socket | None:
        family = socket.AF_INET6 if p.family == 6 else socket.AF_INET
        sock = self._socket(family, PROTOCOLS[p.protocol])
        try:
            if p.protocol == "tcp":
                code = sock.connect_ex((p.address, p.port))
                if code not in (0, errno.EINPROGRESS):
                    return None
                self.sel.register(sock, selectors.EVENT_WRITE, ("probe", "tcp"))
            else:
                sock.bind(("::" if p.family == 6 else "0.0.0.0", source_port(p)))
                sock.connect((p.address, p.port))
                self.sel.register(sock, selectors.EVENT_READ, ("probe", "udp"))
                self._send(sock)
        except OSError:
            return None
        return sock

    @staticmethod
    def _send(sock: socket.socket) -> None:
        try:
            sock.send(PAYLOAD)
        except OSError:
            pass  # an ICMP error of an earlier datagram; the next recv reports it

    @staticmethod
    def _outcome(sock: socket.socket, protocol: str) -> bool | None:
        """True: answered; False: refused; None: not yet."""
        if protocol == "tcp":
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        try:
            return True if sock.recv(64) == PAYLOAD else None
        except BlockingIOError:
            return None
        except OSError:
            return False

    @staticmethod
    def _serve(sock: socket.socket, protocol: str) -> None:
        try:
            if protocol == "tcp":
                sock.accept()[0].close()
            else:
                data, peer = sock.recvfrom(64)
                sock.sendto(data, peer)
        except OSError:
            pass

    def _drop(self, sock: socket.socket) -> None:
        self.sel.unregister(sock)
        sock.close()
        self.sockets.remove(sock)


class _SourcePorts:
    """UDP source ports, never the same twice in a row of runs (the
    counter lives in the lab dir): each source pod takes the next ones,
    skipping the ports probed (its own listeners hold them)."""

    def __init__(self, path: str, probed: set[int]):
        self.path, self.probed = path, probed
        record = read_json(path)
        self.base = record.get("next", SOURCE_PORTS[0]) if isinstance(record, dict) else SOURCE_PORTS[0]
        self.used: dict[str, int] = {}

    def __call__(self, p: Probe) -> int:
        while True:
            offset = self.used.get(p.source, 0)
            self.used[p.source] = offset + 1
            port = SOURCE_PORTS[0] + (self.base - SOURCE_PORTS[0] + offset) % (SOURCE_PORTS[1] - SOURCE_PORTS[0])
            if port not in self.probed:
                return port

    def save(self) -> None:
        span = SOURCE_PORTS[1] - SOURCE_PORTS[0]
        self.base = SOURCE_PORTS[0] + (self.base - SOURCE_PORTS[0] + max(self.used.values(), default=0)) % span
        self.used = {}
        write_atomic(self.path, json.dumps({"next": self.base}).encode())


def run(state: dict, targets: list[tuple[int, str]], timeout: float = 1.0, retries: int = 1) -> dict:
    """Probe every pod pair of a running lab; the report (JSON-ready)."""
    pods = {_key(p): p for p in state["pods"]}
    probes = plan(state["pods"], targets)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, BATCH + len(pods) * len(targets) + 256)), hard))
    ports = _SourcePorts(os.path.join(state["dir"], "probe.json"), {port for port, _ in targets})
    results: dict[Probe, bool] = {}
    loop = _Run(pods)
    try:
        loop.listen(targets)
        todo = probes
        for _ in range(1 + max(0, retries)):
            for i in range(0, len(todo), BATCH):
                results.update(loop.probe(todo[i:i + BATCH], ports, timeout))
                ports.save()
            todo = [p for p in todo if not results[p]]
            if not todo:
                break
    finally:
        loop.close()
    return {"lab": state["name"], "timeout": timeout, "retries": retries,
            "targets": [f"{port}/{protocol}" for port, protocol in targets], "pods": list(pods),
            "probes": [{"from": p.source, "to": p.destination, "address": p.address, "family": p.family,
                        "port": p.port, "protocol": p.protocol, "reachable": results[p]} for p in probes]}


def format_report(report: dict) -> str:
    """One matrix per target and address family: rows from, columns to."""
    pods = report["pods"]
    width = max(len(p) for p in pods) if pods else 0
    lines = [f"lab {report['lab']}: '.' reachable, 'X' blocked; rows from, columns to"]
    for target in report["targets"]:
        port, _, protocol = target.partition("/")
        for family in (4, 6):
            cells = {(r["from"], r["to"]): r["reachable"] for r in report["probes"]
                     if r["family"] == family and r["port"] == int(port) and r["protocol"] == protocol}
            if not cells:
                continue
            blocked = sum(not ok for ok in cells.values())
            lines += ["", f"{target} over IPv{family} ({len(cells) - blocked} reachable, {blocked} blocked)",
                      " " * width + "  " + " ".join(pods)]
            for src in pods:
                row = [("." if cells[(src, dst)] else "X") if (src, dst) in cells else "-" for dst in pods]
                cells_text = " ".join(c.ljust(len(dst)) for c, dst in zip(row, pods))
                lines.append(f"{src.ljust(width)}  {cells_text}".rstrip())
    return "\n".join(lines)
