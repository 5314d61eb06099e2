"""DNS over TCP (RFC 7766): length-prefixed messages, several per
connection and answered as they come (forwarded ones later), idle
connections closed, the oldest dropped when there are too many."""
import select
import time

TCP_IDLE = 10.0
TCP_MAX = 512


class TcpConn:
    __slots__ = ("sock", "holder", "inbuf", "outbuf", "last", "closed", "eof", "waiting")


class TcpServer:
    """``answer(zone, data, reply)`` returns the answer, None for none, or
    FORWARDED when ``reply`` will get it later."""

    def __init__(self, loop, answer, forwarded):
        self.loop = loop
        self.answer = answer
        self.forwarded = forwarded
        self.conns: dict[int, TcpConn] = {}

    def on_accept(self, listener) -> None:
        for _ in range(16):
            try:
                sock, _ = listener.tcp.accept()
            except OSError:
                return
            if len(self.conns) >= TCP_MAX:
                self._close(min(self.conns.values(), key=lambda c: c.last))
            sock.setblocking(False)
            conn = TcpConn()
            conn.sock, conn.holder, conn.inbuf, conn.outbuf = sock, listener.holder, bytearray(), bytearray()
            conn.last, conn.closed, conn.eof, conn.waiting = time.monotonic(), False, False, 0
            self.conns[sock.fileno()] = conn
            self.loop.register(sock, lambda ev, c=conn: self._on_event(c, ev))

    def sweep(self, now: float) -> None:
        for conn in list(self.conns.values()):
            if now - conn.last > TCP_IDLE and not conn.waiting:
                self._close(conn)

    def _on_event(self, conn: TcpConn, events) -> None:
        if events & select.EPOLLOUT:
            self._flush(conn)
        if conn.closed or not events & (select.EPOLLIN | select.EPOLLHUP | select.EPOLLERR):
            return
        try:
            chunk = conn.sock.recv(65536)
        except BlockingIOError:
            return
        except OSError:
            self._close(conn)
            return
        conn.last = time.monotonic()
        if not chunk:
            conn.eof = True
            self.loop.modify(conn.sock, select.EPOLLOUT if conn.outbuf else 0)
            self._maybe_close(conn)
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
                self._send(conn, msg)

            msg = self.answer(conn.holder[0], data, reply)
            if msg is self.forwarded:
                continue
            if msg is None:
                conn.waiting -= 1  # not a query: no answer
            else:
                reply(msg)

    def _send(self, conn: TcpConn, msg: bytes) -> None:
        if conn.closed:
            return
        conn.outbuf += len(msg).to_bytes(2, "big") + msg
        self._flush(conn)

    def _flush(self, conn: TcpConn) -> None:
        if conn.closed:
            return
        try:
            while conn.outbuf:
                sent = conn.sock.send(conn.outbuf)
                del conn.outbuf[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self._close(conn)
            return
        self.loop.modify(conn.sock, (0 if conn.eof else select.EPOLLIN) | (select.EPOLLOUT if conn.outbuf else 0))
        self._maybe_close(conn)

    def _maybe_close(self, conn: TcpConn) -> None:
        if conn.eof and not conn.outbuf and not conn.waiting:
            self._close(conn)

    def _close(self, conn: TcpConn) -> None:
        if conn.closed:
            return
        conn.closed = True
        self.conns.pop(conn.sock.fileno(), None)
        self.loop.unregister(conn.sock)
        conn.sock.close()
