"""Batched UDP for the answers we have cached: up to BATCH queries taken
with one recvmmsg and answered with one sendmmsg."""
import socket

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
