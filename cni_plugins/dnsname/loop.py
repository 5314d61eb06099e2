"""The resolver's single-threaded event loop: epoll over sockets, each
with its handler, a periodic tick, and a way for helper threads to hand
work back to the loop."""
import select
import socket
from collections import deque


class Loop:
    def __init__(self, log):
        self.log = log
        self.ep = select.epoll()
        self.handlers: dict[int, callable] = {}
        self.stopping = False
        self._later = deque()   # callables from helper threads, run by the loop
        self._wake_r, self._wake_w = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._wake_r.setblocking(False)
        self.register(self._wake_r, self._on_wake)

    def register(self, sock, handler, events=select.EPOLLIN) -> None:
        self.ep.register(sock.fileno(), events)
        self.handlers[sock.fileno()] = handler

    def modify(self, sock, events) -> None:
        self.ep.modify(sock.fileno(), events)

    def unregister(self, sock) -> None:
        fd = sock.fileno()
        if fd >= 0:
            self.handlers.pop(fd, None)
            try:
                self.ep.unregister(fd)
            except (OSError, ValueError):
                pass

    def call_soon_threadsafe(self, fn) -> None:
        """Run ``fn()`` in the loop's thread (from any thread)."""
        self._later.append(fn)
        try:
            self._wake_w.send(b"x")
        except OSError:
            pass

    def _on_wake(self, events) -> None:
        try:
            while self._wake_r.recv(64):
                pass
        except OSError:
            pass
        while self._later:
            self._later.popleft()()

    def run(self, tick, interval: float) -> None:
        """Serve events until ``stopping``; ``tick(now)`` every ``interval``.
        One failing handler is logged, never fatal: one bad packet must not
        take DNS down."""
        import time

        poll, handlers = self.ep.poll, self.handlers
        next_tick = time.monotonic() + interval
        while not self.stopping:
            try:
                for fd, events in poll(interval):
                    handler = handlers.get(fd)
                    if handler is not None:
                        handler(events)
                    if self.stopping:
                        return
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + interval
                    tick(now)
            except (SystemExit, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001
                import traceback

                self.log(f"error: {type(e).__name__}: {e}\n{traceback.format_exc()}")
