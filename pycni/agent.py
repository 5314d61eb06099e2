"""`pycni agent`: serve plugin requests with warm modules and handles.

Plugin executables hand their request (environment and stdin) over an
abstract unix socket (see agent_client.py); the agent runs the very same
entry point (skel.handle) in a worker thread and sends back exit status and
stdout.  Each request runs in its own thread with its own context: netns
switches are per thread (setns), the request's environment is a context
variable, host-local locking is flock on files as in a plugin process.
"""
import importlib
import logging
import os
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from cni_plugins.core import agent_client, skel
from cni_plugins.core.registry import PLUGINS

log = logging.getLogger("pycni.agent")
SO_PEERCRED = 17
_UCRED = struct.Struct("=iII")


def _ns_inode(pid: int | str, kind: str) -> int:
    return os.stat(f"/proc/{pid}/ns/{kind}").st_ino


class Agent:
    def __init__(self, address: str | None = None, workers: int = 64):
        self.address = agent_client.address(address or os.environ.get("PYCNI_AGENT_SOCKET"))
        self.modules = {}
        for name, module in PLUGINS.items():
            try:
                self.modules[name] = importlib.import_module(module)
            except ImportError as e:  # its executables then work alone
                log.error("cannot serve %s: %s", name, e)
        self.pool = ThreadPoolExecutor(workers, thread_name_prefix="pycni-req")
        self.own_ns = {kind: _ns_inode("self", kind) for kind in ("net", "mnt")}
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self.sock.bind(self.address)
        self.sock.listen(256)
        self._stopped = threading.Event()
        self._warm()

    def _warm(self) -> None:
        """Load what the first request would otherwise pay for."""
        from cni_plugins.kernel import nft

        nft._nft()

    def same_namespaces(self, conn: socket.socket) -> bool:
        pid, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
        if uid not in (0, os.getuid()):
            return False
        try:
            return all(_ns_inode(pid, kind) == ino for kind, ino in self.own_ns.items())
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
                if not self.same_namespaces(conn):
                    log.warning("refused a caller from other namespaces")
                    return  # closing without ACK: the caller works alone
                conn.settimeout(agent_client.ACK_TIMEOUT)
                try:
                    frame = agent_client.recv_frame(conn)
                except ConnectionError:
                    return  # a probe: connected and closed without a request
                plugin, environ, stdin = agent_client.decode_request(frame)
                module = self.modules.get(plugin)
                if module is None:
                    return
                conn.sendall(agent_client.ACK)
                started = time.perf_counter()
                status, output = skel.handle(module, environ, stdin)
                log.debug("served %s %s %s -> %d in %.1f ms", plugin, environ.get("CNI_COMMAND"),
                          environ.get("CNI_CONTAINERID"), status, (time.perf_counter() - started) * 1000)
                conn.settimeout(None)
                agent_client.send_frame(conn, bytes([status]) + skel.render(output))
            except OSError as e:
                log.warning("request failed: %s", e)


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
