"""Crafted packets on the wire inside network namespaces: scapy (the design
card's packet library) builds and decodes them; plain AF_PACKET sockets,
opened while the thread is in the namespace (so they stay bound to it),
send and capture them.  scapy's own sockets resolve interface names in the
namespace it was imported in, which is not the pods'."""
import contextlib
import os
import select
import socket
import threading
import time

from scapy.layers.l2 import Ether

from cni_plugins.kernel.netns import entered

ETH_P_ALL = 0x0003


@contextlib.contextmanager
def in_netns(name: str | None):
    if name is None:
        yield
        return
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        with entered(fd):
            yield
    finally:
        os.close(fd)


def _packet_socket(netns: str | None, iface: str) -> socket.socket:
    with in_netns(netns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        sock.bind((iface, ETH_P_ALL))
    return sock


def send(netns: str | None, iface: str, frames) -> None:
    with _packet_socket(netns, iface) as sock:
        for frame in frames if isinstance(frames, list) else [frames]:
            sock.send(bytes(frame))


class Capture:
    """Every frame received on ``iface`` of ``netns`` (decoded by scapy) that
    ``match`` accepts, from now until ``stop()``, which waits ``linger``
    seconds for stragglers."""

    def __init__(self, netns: str | None, iface: str, match=lambda frame: True):
        self.sock = _packet_socket(netns, iface)
        self.match = match
        self.frames = []
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._done.is_set():
            if select.select([self.sock], [], [], 0.05)[0]:
                raw, addr = self.sock.recvfrom(65535)
                if addr[2] != socket.PACKET_OUTGOING:
                    frame = Ether(raw)
                    if self.match(frame):
                        self.frames.append(frame)

    def stop(self, linger: float = 0.5) -> list:
        time.sleep(linger)
        self._done.set()
        self._thread.join(timeout=5)
        self.sock.close()
        return self.frames


def tags(frames) -> set[bytes]:
    """The innermost payload of each frame (what the test wrote into it)."""
    out = set()
    for frame in frames:
        layer = frame
        while layer.payload and layer.payload.name not in ("Raw", "Padding", "NoPayload"):
            layer = layer.payload
        out.add(bytes(layer.payload).rstrip(b"\0"))
    return out
