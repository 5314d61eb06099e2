"""`pycni agent`'s request server: plugin requests with warm modules and handles.

Plugin executables hand their request (environment and stdin) over an
abstract unix socket (see cni_plugins/core/agent_client.py for the
exchange); the agent runs the very same entry point (skel.handle) in a
worker thread and sends back exit status and stdout.  Each request runs in
its own thread; netns switches are per thread (setns), and the request
carries its caller's environment and state directories.

What keeps the agent equivalent to the executable working alone:

* It serves only callers that see the files it sees: the paths a request
  names (its netns, state and run dirs, IPAM dataDir, CNI_PATH) must be the
  same objects through the caller's root (/proc/PID/root, i.e. in the
  caller's mount namespace) as through the agent's.  `ip netns exec` and
  labs give each plugin a mount namespace of its own with /sys remounted,
  but the same /run and /var, so they are served; a container with other
  mounts is not, and its plugin works alone.
* One request per attachment (state dir, network, container, interface) at
  a time: a DEL waits for an ADD of the same attachment still in flight.
* A caller that is gone is not worked for: before starting, and after an
  ADD, whose result nobody received (the runtime will not DEL what it
  never heard of), the ADD is undone with a DEL.
"""
import json
import logging
import os
import select
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cni_plugins import netpolicy
from cni_plugins.core import agent_client, registry, skel
from cni_plugins.core.request import DEFAULT_RUN_DIR, DEFAULT_STATE_DIR

log = logging.getLogger("pycni.agent")
SO_PEERCRED = 17
_UCRED = struct.Struct("=iII")
POLLRDHUP = 0x2000
GO_TIMEOUT = agent_client.ACK_TIMEOUT + 1.0


def _ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


def _existing(path: str) -> str:
    """``path`` or its nearest existing ancestor (in our view)."""
    path = os.path.abspath(path)
    while not os.path.exists(path) and path != "/":
        path = os.path.dirname(path)
    return path


def request_paths(environ: dict, stdin: bytes) -> list[str]:
    """The files a request will touch, whose identity the caller and the
    agent must agree on (the netpolicy plugin reads pods' label files)."""
    paths = ["/", environ.get("PYCNI_STATE_DIR") or DEFAULT_STATE_DIR, environ.get("PYCNI_RUN_DIR") or DEFAULT_RUN_DIR]
    if environ.get("CNI_NETNS"):
        paths.append(environ["CNI_NETNS"])
    paths += [p for p in environ.get("CNI_PATH", "").split(":") if p]
    try:
        config = json.loads(stdin)
        ipam = config.get("ipam") or {}
        paths.append(ipam.get("dataDir") or "/var/lib/cni/networks")
        if config.get("type") == netpolicy.PLUGIN:
            paths.append(config.get("labelsDir") or netpolicy.DEFAULT_LABELS_DIR)
    except (ValueError, AttributeError, RecursionError):
        pass
    return [p for p in paths if isinstance(p, str) and p]


def attachment_key(environ: dict, stdin: bytes) -> tuple | None:
    """What one ADD/CHECK/DEL is about, or None (VERSION, GC, STATUS, junk)."""
    if environ.get("CNI_COMMAND") not in ("ADD", "CHECK", "DEL"):
        return None
    try:
        network = json.loads(stdin).get("name")
    except (ValueError, AttributeError, RecursionError):
        return None
    return (environ.get("PYCNI_STATE_DIR"), str(network), environ.get("CNI_CONTAINERID"), environ.get("CNI_IFNAME"))


class AttachmentLocks:
    """One lock per attachment, held while a request about it runs."""

    def __init__(self):
        self._guard = threading.Lock()
        self._locks: dict = {}   # key -> [lock, users]

    def hold(self, key):
        return _Held(self, key)

    def _acquire(self, key):
        with self._guard:
            entry = self._locks.setdefault(key, [threading.Lock(), 0])
            entry[1] += 1
        entry[0].acquire()

    def _release(self, key):
        with self._guard:
            entry = self._locks[key]
            entry[0].release()
            entry[1] -= 1
            if not entry[1]:
                del self._locks[key]


class _Held:
    def __init__(self, locks: AttachmentLocks, key):
        self.locks, self.key = locks, key

    def __enter__(self):
        if self.key is not None:
            self.locks._acquire(self.key)

    def __exit__(self, *exc):
        if self.key is not None:
            self.locks._release(self.key)


def caller_gone(conn: socket.socket) -> bool:
    """After GO the caller only reads: anything readable is its end closing."""
    p = select.poll()
    p.register(conn, select.POLLIN | select.POLLHUP | POLLRDHUP)
    return bool(p.poll(0))


class Agent:
    def __init__(self, address: str | None = None, workers: int = 64):
        self.address = agent_client.address(address or os.environ.get("PYCNI_AGENT_SOCKET"))
        self.modules = {}
        for name in registry.PLUGINS:
            try:
                self.modules[name] = registry.load(name)
            except ImportError as e:  # its executables then work alone
                log.error("cannot serve %s: %s", name, e)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pycni-req")
        self.own_netns = _ns_inode("self", "net")
        self.attachments = AttachmentLocks()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.address)
        self.sock.listen(256)
        self._stopped = threading.Event()
        self._warm()

    def _warm(self) -> None:
        """Load what the first request would otherwise pay for."""
        from cni_plugins.kernel import nft

        nft._nft()

    def sees_what_we_see(self, pid: int, paths: list[str]) -> bool:
        """Whether each path is the same object through the caller's root as
        through ours (same network namespace too: abstract sockets are per
        netns, so anything else is a misconfiguration).  A relative path
        resolves from the caller's working directory, which must then be
        ours."""
        def same(ours: str, theirs: str) -> bool:
            a, b = os.stat(ours), os.stat(theirs)
            return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)

        try:
            if _ns_inode(pid, "net") != self.own_netns:
                return False
            if any(not os.path.isabs(p) for p in paths) and not same(os.getcwd(), f"/proc/{pid}/cwd"):
                return False
            return all(same(here, f"/proc/{pid}/root{here}") for here in map(_existing, paths))
        except OSError:
            return False

    def serve_forever(self) -> None:
        log.info("pycni agent listening on @%s", self.address.lstrip("\0"))
        while not self._stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                if self._stopped.is_set():
                    break
                raise
            self.pool.submit(self._serve, conn)

    def stop(self) -> None:
        self._stopped.set()
        self.sock.close()
        self.pool.shutdown(wait=True)

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                self._exchange(conn)
            except OSError as e:
                log.warning("request failed: %s", e)

    def _exchange(self, conn: socket.socket) -> None:
        pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
        conn.settimeout(agent_client.ACK_TIMEOUT)
        try:
            frame = agent_client.recv_frame(conn)
        except ConnectionError:
            return  # a probe: connected and closed without a request
        plugin, environ, stdin = agent_client.decode_request(frame)
        module = self.modules.get(plugin)
        if module is None:
            return
        if uid not in (0, os.getuid()) or not self.sees_what_we_see(pid, request_paths(environ, stdin)):
            log.warning("refused a caller that does not see our files (pid %d)", pid)
            return  # closing without ACK: the caller works alone
        conn.sendall(agent_client.ACK)
        conn.settimeout(GO_TIMEOUT)
        try:
            if conn.recv(1) != agent_client.GO:
                return  # the caller gave up waiting and works alone
        except OSError:
            return
        command = environ.get("CNI_COMMAND")
        with self.attachments.hold(attachment_key(environ, stdin)):
            if caller_gone(conn):
                log.info("dropped %s %s %s: the caller is gone", plugin, command, environ.get("CNI_CONTAINERID"))
                return
            started = time.perf_counter()
            status, output = skel.handle(module, environ, stdin)
            log.debug("served %s %s %s -> %d in %.1f ms", plugin, command, environ.get("CNI_CONTAINERID"),
                      status, (time.perf_counter() - started) * 1000)
            delivered = False
            if not caller_gone(conn):
                try:
                    conn.settimeout(None)
                    agent_client.send_frame(conn, bytes([status]) + skel.render(output))
                    delivered = True
                except OSError:
                    pass
            if command == "ADD" and status == 0 and not delivered:
                self._undo_add(plugin, module, environ, stdin)

    def _undo_add(self, plugin: str, module, environ: dict, stdin: bytes) -> None:
        """The runtime never received this ADD's result, so it will not DEL
        it: undo it here, while the attachment is still held."""
        status, output = skel.handle(module, {**environ, "CNI_COMMAND": "DEL"}, stdin)
        log.warning("undid %s ADD %s whose caller was gone -> %d %s", plugin, environ.get("CNI_CONTAINERID"),
                    status, "" if status == 0 else output)


def run(address: str | None = None, verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(message)s")
    agent = Agent(address)
    try:
        agent.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
