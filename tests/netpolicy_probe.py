"""Listeners and probes for the network-policy truth tables, run inside a
pod's network namespace with `ip netns exec` (standard library only).

    netpolicy_probe.py serve PORT...     TCP and UDP on every PORT, IPv4 and IPv6;
                                         prints "ready" once bound
    netpolicy_probe.py probe TIMEOUT     reads [[address, port, "tcp"|"udp", udp source port], ...]
                                         on stdin, tries all in parallel, prints [true|false, ...]

A TCP probe succeeds when the handshake completes (the SYN passed both
policy checks and the reply came back); a UDP probe when its datagram is
echoed.  UDP probes use the source port they are given, so no probe
reuses the conntrack entry of an earlier one (a reply-direction entry would
let a now-denied packet through as "established").
"""
import json
import selectors
import socket
import sys
import threading
import time


def serve(ports):
    sel = selectors.DefaultSelector()
    for port in ports:
        for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
            s = socket.socket(socket.AF_INET6, kind)
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("::", port))
            if kind == socket.SOCK_STREAM:
                s.listen(256)
            sel.register(s, selectors.EVENT_READ)
    print("ready", flush=True)
    while True:
        for key, _ in sel.select():
            s = key.fileobj
            try:
                if s.type == socket.SOCK_STREAM:
                    conn, _ = s.accept()
                    conn.close()
                else:
                    data, peer = s.recvfrom(512)
                    s.sendto(data, peer)
            except OSError:
                pass


def _tcp(address, port, timeout):
    try:
        socket.create_connection((address, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def _udp(address, port, sport, timeout):
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", sport))
        s.connect((address, port))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                s.send(b"probe")
                s.settimeout(min(0.15, max(deadline - time.monotonic(), 0.01)))
                if s.recv(512) == b"probe":
                    return True
            except socket.timeout:
                continue
            except OSError:
                return False
    return False


def probe(timeout):
    targets = json.load(sys.stdin)
    results = [False] * len(targets)

    def one(i, address, port, protocol, sport):
        results[i] = _tcp(address, port, timeout) if protocol == "tcp" else _udp(address, port, sport, timeout)

    threads = [threading.Thread(target=one, args=(i, *t)) for i, t in enumerate(targets)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(results))


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve([int(p) for p in sys.argv[2:]])
    else:
        probe(float(sys.argv[2]))
