"""Batched UDP: up to BATCH queries taken with one recvmmsg and every
answer we can give at once sent back with one sendmmsg."""
import ctypes
import mmap
import socket

BATCH = 64
_SLOT = 65536                # bytes per message: any UDP datagram fits, and any answer
_NAME = 32                   # room for a sockaddr_in6
MSG_DONTWAIT = 0x40
_OPT_TAIL = b"\0\0\x29"      # an OPT's root owner and type, 11 bytes before the end of the query


def sockaddr(raw: bytes):
    """A struct sockaddr_in or sockaddr_in6 as the socket module writes addresses."""
    port = int.from_bytes(raw[2:4], "big")
    if int.from_bytes(raw[:2], "little") == socket.AF_INET6:
        return socket.inet_ntop(socket.AF_INET6, raw[8:24]), port, 0, int.from_bytes(raw[24:28], "little")
    return socket.inet_ntop(socket.AF_INET, raw[4:8]), port


class Batch:
    """Up to BATCH queries taken with one recvmmsg and answered with one
    sendmmsg: the syscalls, not Python, are most of the cost of a query.
    Each answer is written into its query's own slot, around the question
    the client sent.  The slots live in an anonymous mapping: a page is
    only backed once a datagram reaches it, so room for 64 KiB datagrams
    costs nothing while queries are small.  Headers are read and written
    through memoryview casts of ctypes arrays."""

    _libc = None

    def __init__(self, sock):
        if Batch._libc is None:
            Batch._libc = ctypes.CDLL(None, use_errno=True)
        self.sock = sock
        self.fd = sock.fileno()
        self.recvmmsg, self.sendmmsg = self._libc.recvmmsg, self._libc.sendmmsg
        n = BATCH
        self.buf, self.names = mmap.mmap(-1, n * _SLOT), bytearray(n * _NAME)
        self.view = memoryview(self.buf)
        c_r, c_n = ((ctypes.c_char * len(b)).from_buffer(b) for b in (self.buf, self.names))
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
        self.rptr = ctypes.byref(self.rhdr)

    def serve(self, zone, answer) -> int:
        """Take what is queued (up to BATCH) and answer it; returns how many
        were taken.  A query with a ready answer in ``zone`` (zone.py
        says which) costs a dict lookup; any other goes to ``answer(sock,
        zone, data, sender)``, which returns the answer or None (none, or
        one that comes later, as for forwarded queries); ``sender`` is the
        client's raw address, for ``sockaddr``."""
        n = self.recvmmsg(self.fd, self.rptr, BATCH, MSG_DONTWAIT, None)
        if n <= 0:
            return 0
        ready = zone.answers
        buf, view, r32, s32, s64, siov64 = self.buf, self.view, self.r32, self.s32, self.s64, self.siov64
        names, name_addr, slot_addr, slot, namesize = self.names, self.name_addr, self.slot_addr, _SLOT, _NAME
        j = 0
        for i in range(n):
            off = i * slot
            h = 16 * i
            size = r32[h + 14]
            namelen = r32[h + 2]
            r32[h + 2] = namesize
            entry = None
            if size >= 12 and buf[off + 2] < 8:  # a query (QR clear), opcode QUERY
                key = view[off + 4:off + size].tobytes().lower()  # counts, question, OPT: case folded
                if key[7] == 0:
                    entry = ready.get(key)
                elif key[7] == 1 and key[-11:-8] == _OPT_TAIL and key[-5] == 0 and key[-2:] == b"\0\0":
                    entry = ready.get(key[:-11])  # the OPT last, version 0, no option
            if entry is not None:
                headers, qend, tail, tail_do = entry
                buf[off + 2:off + 12] = headers[(buf[off + 2] & 1) | (buf[off + 3] >> 3 & 2)]
                if key[-4] & 0x80:
                    tail = tail_do
                length = qend + len(tail)
                buf[off + qend:off + length] = tail
            else:
                sender = bytes(names[i * namesize:i * namesize + namelen])
                msg = answer(self.sock, zone, view[off:off + size].tobytes(), sender)
                if msg is None:
                    continue
                length = len(msg)
                buf[off:off + length] = msg
            siov64[2 * j] = slot_addr[i]
            siov64[2 * j + 1] = length
            s64[8 * j] = name_addr[i]
            s32[16 * j + 2] = namelen
            j += 1
        sent = 0
        while sent < j:
            k = self.sendmmsg(self.fd, ctypes.byref(self.shdr, 64 * sent), j - sent, 0)
            if k <= 0:
                break  # the socket's buffer is full: UDP may drop, as the kernel would
            sent += k
        return n
