"""The policy controller as a service of the node agent: its reconcile loop
and the control socket the netpolicy CNI plugin calls.

The socket is abstract (``@pycni-policy``), so it belongs to the network
namespace the agent runs in, as ``@pycni-agent`` does: a plugin run for a
lab host's pods reaches that host's controller and no other.  Abstract
sockets have no file permissions, so callers are checked by their
credentials: root or the agent's own user only (anyone else could lift a
pod's isolation by unregistering it).

One request per connection, framed as the agent's (4-byte length, then
JSON); the answer is sent once the kernel has the rules:

    {"op": "register", "attachment": {"network", "containerID", "ifname"},
     "endpoint": {"namespace", "name", "labels", "addresses", "ports"}}
    {"op": "unregister", "attachment": {...}}
    {"op": "retain", "network": NAME, "attachments": [{"containerID", "ifname"}, ...]}
    {"op": "registered", "attachment": {...}}      -> {"ok": true, "endpoint": {...} or null}
    {"op": "reconcile"}      read the sources now and apply them (what a change seen by
                             watching does a moment later): whoever changed them knows
                             they are enforced when the answer comes
    {"op": "ping"}
    -> {"ok": true, "changes": N} or {"error": MESSAGE, "kind": "invalid" | "kernel" | "internal"}

The socket is bound only after the first reconcile: until the kernel holds
what the sources and the registry say, a plugin finds no controller and
fails with "try again later" rather than registering into a half-loaded
state.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import struct
import threading

from cni_plugins import netpolicy as netpolicy_plugin
from cni_plugins.core.agent_client import recv_frame, send_frame

from .enforcer import PolicyController
from .nft import NftError
from .parse import PolicyError, endpoint_record, parse_endpoint
from .sources import Attachment, DirectorySource

DEFAULT_SOCKET = netpolicy_plugin.DEFAULT_SOCKET   # where the plugin calls by default
SO_PEERCRED = 17
_UCRED = struct.Struct("=iII")
REQUEST_TIMEOUT = 10.0
log = logging.getLogger("pycni.netpolicy")


class PolicyService:
    """``controller`` reconciled in a thread of its own and served on
    ``@socket_name``.  start() returns once the first reconcile is done and
    the socket is bound; stop() undoes both (our tables stay: a restarted
    agent takes them over with nothing to change)."""

    def __init__(self, controller: PolicyController, socket_name: str = DEFAULT_SOCKET,
                 resync_every: float = 300.0):
        self.controller = controller
        self.socket_name = socket_name
        self.resync_every = resync_every
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._sock: socket.socket | None = None

    @classmethod
    def for_node(cls, node: str, state_dir: str, policy_dirs=(), socket_name: str = DEFAULT_SOCKET,
                 store=None) -> PolicyService:
        """The service as the node agent runs it: NetworkPolicy, Namespace
        and Pod objects from ``policy_dirs``, registrations kept under
        ``<state_dir>/netpolicy/endpoints``; with ``store`` (store.py's
        open_store of the overlay's store) the cluster's objects and every
        node's registrations too, and this node's published there."""
        controller = PolicyController(node, [DirectorySource(d) for d in policy_dirs],
                                      registry_dir=os.path.join(state_dir, "netpolicy", "endpoints"), store=store)
        return cls(controller, socket_name)

    def start(self, timeout: float = 600.0) -> None:
        started = threading.Event()
        loop = threading.Thread(target=self.controller.run, args=(self._stop,),
                                kwargs={"resync_every": self.resync_every, "started": started},
                                name="netpolicy-reconcile", daemon=True)
        loop.start()
        self._threads.append(loop)
        if not started.wait(timeout):
            raise TimeoutError("netpolicy: the first reconcile did not finish")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        self._sock.bind("\0" + self.socket_name)
        self._sock.listen(128)
        server = threading.Thread(target=self._serve, name="netpolicy-control", daemon=True)
        server.start()
        self._threads.append(server)
        log.info("netpolicy: serving @%s", self.socket_name)

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)  # wakes the accept()
            except OSError:
                pass
            self._sock.close()
        for t in self._threads:
            t.join()
        self.controller.close()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._answer, args=(conn,), daemon=True, name="netpolicy-request").start()

    def _answer(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(REQUEST_TIMEOUT)
                _, uid, _ = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, SO_PEERCRED, _UCRED.size))
                if uid not in (0, os.getuid()):
                    answer = {"error": f"uid {uid} may not change network policy", "kind": "invalid"}
                else:
                    answer = self.handle(json.loads(recv_frame(conn)))
                conn.settimeout(None)
                send_frame(conn, json.dumps(answer).encode())
            except (OSError, ValueError) as e:
                log.warning("netpolicy: control request failed: %s", e)

    def handle(self, request: dict) -> dict:
        """One request -> its answer (never raises)."""
        ctl = self.controller
        try:
            op = request.get("op")
            if op == "register":
                endpoint = parse_endpoint(request.get("endpoint"), "registration")
                return {"ok": True, "changes": len(ctl.register(_attachment(request), endpoint))}
            if op == "unregister":
                return {"ok": True, "changes": len(ctl.unregister(_attachment(request)))}
            if op == "retain":
                keep = [(str(a.get("containerID")), str(a.get("ifname"))) for a in request.get("attachments") or []
                        if isinstance(a, dict)]
                return {"ok": True, "changes": len(ctl.retain(str(request.get("network")), keep))}
            if op == "registered":
                found = ctl.registered(_attachment(request))
                return {"ok": True, "endpoint": endpoint_record(found) if found else None}
            if op == "reconcile":
                return {"ok": True, "changes": len(ctl.reconcile())}
            if op == "ping":
                return {"ok": True}
            return {"error": f"unknown operation {op!r}", "kind": "invalid"}
        except PolicyError as e:
            return {"error": str(e), "kind": "invalid"}
        except NftError as e:
            return {"error": str(e), "kind": "kernel"}
        except Exception as e:  # noqa: BLE001 - the plugin must get an answer
            log.exception("netpolicy: %s failed", request.get("op"))
            return {"error": f"{type(e).__name__}: {e}", "kind": "internal"}


def _attachment(request: dict) -> Attachment:
    record = request.get("attachment")
    return Attachment.from_record(record if isinstance(record, dict) else {})
