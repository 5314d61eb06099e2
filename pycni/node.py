"""The node agent process (`pycni agent`): the plugin request server and the
node's controllers in one process.

- The request server (`pycni.agent.Agent`) runs in the main thread, so a
  signal interrupts its accept() at once.
- Each controller, a **duty**, runs in a thread of its own: the VXLAN
  overlay and network policy.  A duty is any object with

      ready: threading.Event       set once it has converged for the first time
      run() -> None                blocks until stop(); raises only on a bug
      stop(leave: bool) -> None    thread-safe; leave=False keeps what it made
      status() -> dict             plain data, from any thread
      gates_requests: bool         the request server binds its socket only once
                                   this duty is ready (a plugin it serves asks it)

  and comes from a `DutyKind` in DUTIES: its command-line flags, and a
  factory that returns None when none of its settings were given.  A
  further controller is one more DutyKind; nothing else here changes.

Network policy gates the requests: the netpolicy plugin of every ADD asks
its controller, which answers only once its first reconcile is done, so
the server starts after it (until then the plugins work alone, and the
netpolicy plugin answers "try again later").  The overlay does not: a
plugin without node state says so itself.

SIGTERM or SIGINT is a clean leave: the server stops taking requests and
finishes those in flight, then every duty stops with leave=True (the
overlay releases its lease and removes its dataplane; network policy keeps
its tables, so pods stay isolated until the next agent takes them over),
or leave=False with --keep-on-exit (a restart or an upgrade).  A duty that
dies stops the node with exit status 1 and leaves the others' state in
place.

With --status-file the node's status is written there atomically whenever
it changes (looked at twice a second) and once more at exit::

    {"pid": 4242, "socket": "pycni-agent", "state": "running", "ready": true,
     "duties": {"overlay": {"node": .., "ready": true, "lease": {..}, "peers": [..], "lastError": null},
                "policy": {"node": .., "ready": true, "socket": "pycni-policy", "policies": 3, ..}}}

state: starting, running, stopping, stopped or failed.  Without duties and
without a status file, `pycni agent` is the request server alone, exactly
as before (pycni.agent.run).
"""
import json
import logging
import os
import signal
import sys
import threading
import time
from typing import Callable, NamedTuple

from cni_plugins.core.records import write_atomic

log = logging.getLogger("pycni.node")
STATUS_INTERVAL = 0.5
STOP_TIMEOUT = 60.0


class SettingsError(Exception):
    """A duty's settings are unusable; the agent does not start."""


class DutyKind(NamedTuple):
    name: str
    add_arguments: Callable    # (argparse parser) -> None
    make: Callable             # (argparse namespace) -> duty, or None when not configured


def _answers(name: str) -> bool:
    """Whether something listens on abstract socket @name in this netns."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect("\0" + name)
        except OSError:
            return False
    return True


# --- the overlay duty ------------------------------------------------------------------
def _overlay_arguments(parser) -> None:
    from overlay import flags

    group = parser.add_argument_group(
        "overlay", "The VXLAN overlay duty (overlay/README.md) runs when --overlay-config or any of "
                   "these flags is given; flags win over the file's keys.  Its store (--store, "
                   "--store-path, --etcd-endpoints, --etcd-prefix) is also network policy's cluster store.")
    group.add_argument("--overlay-config", metavar="FILE", help="YAML or JSON overlay settings")
    flags.add_arguments(group, skip=("nodeName",))


def _overlay_config(args):
    """The overlay's settings (OverlayConfig), or None when none were given."""
    from overlay import flags

    settings = flags.overrides(vars(args))
    if args.overlay_config is None and not settings:
        return None
    if args.node_name:
        settings["nodeName"] = args.node_name
    from overlay import load

    try:
        return load(args.overlay_config, settings)
    except (ValueError, OSError) as e:
        raise SettingsError(f"overlay: {e}") from None


def _overlay_duty(args):
    config = _overlay_config(args)
    if config is None:
        return None
    from overlay import OverlayController
    from overlay.store import StoreError

    try:
        return OverlayController(config)
    except (ValueError, StoreError, OSError) as e:
        raise SettingsError(f"overlay: {e}") from None


# --- the network-policy duty ------------------------------------------------------------
def _policy_arguments(parser) -> None:
    from cni_plugins.core.request import DEFAULT_STATE_DIR

    group = parser.add_argument_group(
        "network policy", "The network-policy duty (netpolicy/README.md) runs when --policy-dir or "
                          "--network-policy is given: it enforces Kubernetes NetworkPolicy objects with "
                          "nftables in this network namespace and serves the netpolicy CNI plugin.  With "
                          "the overlay's settings it also reads the overlay's store (file or etcd): the "
                          "cluster's policies and namespaces, and every node's pods, where it publishes "
                          "this node's.")
    group.add_argument("--policy-dir", action="append", metavar="DIR",
                       help="a file or directory of NetworkPolicy, Namespace (with labels) and Pod objects "
                            "(YAML or JSON), watched; repeatable")
    group.add_argument("--network-policy", action="store_true",
                       help="enforce network policy even without --policy-dir (policies from the store)")
    group.add_argument("--policy-socket", metavar="NAME",
                       help="abstract socket the netpolicy plugin calls (default pycni-policy; the "
                            "plugin's 'socket' key)")
    group.add_argument("--state-dir", metavar="DIR",
                       help="where the plugin's registrations are kept, under netpolicy/endpoints (default "
                            f"$PYCNI_STATE_DIR or {DEFAULT_STATE_DIR}: the plugins' own)")


def _policy_duty(args):
    if not (args.policy_dir or args.network_policy):
        if args.policy_socket:
            raise SettingsError("policy: --policy-socket needs --policy-dir or --network-policy")
        return None
    from cni_plugins.core.request import DEFAULT_STATE_DIR
    from netpolicy.service import DEFAULT_SOCKET

    missing = [d for d in args.policy_dir or () if not os.path.exists(d)]
    if missing:
        raise SettingsError(f"policy: {', '.join(missing)}: no such file or directory")
    socket_name = args.policy_socket or DEFAULT_SOCKET
    if _answers(socket_name):
        raise SettingsError(f"policy: a controller already serves @{socket_name} in this network namespace "
                            "(another agent?)")
    overlay = _overlay_config(args)
    return PolicyDuty(node=overlay.node_name if overlay else (args.node_name or os.uname().nodename),
                      state_dir=args.state_dir or os.environ.get("PYCNI_STATE_DIR") or DEFAULT_STATE_DIR,
                      policy_dirs=[os.path.abspath(d) for d in args.policy_dir or ()],
                      socket_name=socket_name, overlay=overlay)


class PolicyDuty:
    """netpolicy's controller service as a duty: run() starts it (its first
    reconcile, then its socket) and keeps it until stop().  Both a leave and
    a restart keep our tables: pods stay isolated while no agent runs, and
    the next one takes the tables over with nothing to change."""
    gates_requests = True

    def __init__(self, node: str, state_dir: str, policy_dirs: list[str], socket_name: str, overlay=None):
        self.node, self.state_dir, self.policy_dirs, self.socket_name = node, state_dir, policy_dirs, socket_name
        self.overlay = overlay       # OverlayConfig: its store is the cluster's
        self.ready = threading.Event()
        self.service = None
        self._stop = threading.Event()

    def _store(self):
        if self.overlay is None:
            return None
        from netpolicy.store import open_store

        cfg = self.overlay
        return open_store(cfg.store, path=cfg.store_path, endpoints=list(cfg.etcd_endpoints), prefix=cfg.etcd_prefix)

    def run(self) -> None:
        from netpolicy.service import PolicyService

        self.service = PolicyService.for_node(self.node, self.state_dir, self.policy_dirs,
                                              socket_name=self.socket_name, store=self._store())
        if self._stop.is_set():
            return
        self.service.start()   # the first reconcile, then the socket
        self.ready.set()
        self._stop.wait()
        self.service.stop()

    def stop(self, leave: bool = True) -> None:
        self._stop.set()

    def status(self) -> dict:
        controller = self.service.controller if self.service else None
        compiler = controller.compiler if controller else None
        store = self.overlay and (f"file:{self.overlay.store_path}" if self.overlay.store == "file"
                                  else "etcd:" + ",".join(self.overlay.etcd_endpoints))
        return {"node": self.node, "ready": self.ready.is_set(), "socket": self.socket_name,
                "policyDirs": self.policy_dirs, "store": store or None,
                "policies": len(compiler.policies) if compiler else 0,
                "endpoints": len(compiler.endpoints) if compiler else 0,
                "errors": [str(e) for e in list(controller.errors.values())] if controller else []}


DUTIES = [DutyKind("overlay", _overlay_arguments, _overlay_duty),
          DutyKind("policy", _policy_arguments, _policy_duty)]


def add_arguments(parser) -> None:
    """The node's flags and every duty's, on the `agent` subcommand."""
    parser.add_argument("--node-name", metavar="NAME", help="this node's name (default: the host name)")
    parser.add_argument("--status-file", metavar="PATH", help="keep the agent's status (JSON) in PATH")
    parser.add_argument("--keep-on-exit", action="store_true",
                        help="on SIGTERM/SIGINT keep what the duties made (overlay: lease and dataplane), "
                             "for a restart or an upgrade")
    for kind in DUTIES:
        kind.add_arguments(parser)


# --- the process ---------------------------------------------------------------------
class _Stop(Exception):
    """Raised by the signal handler to leave the request server's loop."""


class Node:
    def __init__(self, make_server: Callable, socket_name: str, duties: dict, status_file: str | None = None,
                 keep_on_exit: bool = False):
        self.make_server = make_server    # () -> the request server, bound (once gating duties are ready)
        self.socket_name = socket_name
        self.server = None
        self.duties = duties
        self.status_file = status_file
        self.keep_on_exit = keep_on_exit
        self.state = "starting"
        self.failed: str | None = None
        self._stopping = threading.Event()
        self._done = threading.Event()
        self._serving = False
        self._threads: dict[str, threading.Thread] = {}
        self._written: dict | None = None

    def status(self) -> dict:
        return {"pid": os.getpid(), "socket": self.socket_name, "state": self.state,
                "ready": self.state == "running" and all(duty.ready.is_set() for duty in self.duties.values()),
                "duties": {name: duty.status() for name, duty in self.duties.items()}}

    def run(self) -> int:
        """Serve until SIGTERM/SIGINT or a duty's death; the exit status."""
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        reporter = threading.Thread(target=self._report, name="node-status", daemon=True)
        reporter.start()
        try:
            for name, duty in self.duties.items():
                thread = threading.Thread(target=self._run_duty, args=(name, duty), name=name, daemon=True)
                self._threads[name] = thread
                thread.start()
            self._await_gating_duties()
            if not self._stopping.is_set():
                self.server = self.make_server()
                self.state = "running"
                self._serving = True
                if not self._stopping.is_set():
                    self.server.serve_forever()
        except _Stop:
            pass
        except OSError as e:
            self.failed = f"request server: {e}"
            log.error("%s", self.failed)
        finally:
            self._serving = False
            self._shutdown()
            self._done.set()
            reporter.join()
            self._write_status()
        return 1 if self.failed else 0

    def _await_gating_duties(self) -> None:
        """Until every duty the plugins ask is ready, or the node stops.
        (Polled: an Event's wait in the thread the signal handler runs in
        could deadlock on the Event's own lock.)"""
        gates = [duty for duty in self.duties.values() if getattr(duty, "gates_requests", False)]
        while not self._stopping.is_set() and not all(duty.ready.is_set() for duty in gates):
            time.sleep(0.05)

    def _on_signal(self, signum, frame) -> None:
        log.info("%s: leaving", signal.Signals(signum).name)
        self._stopping.set()
        if self._serving:
            raise _Stop()

    def _run_duty(self, name: str, duty) -> None:
        try:
            duty.run()
        except BaseException:  # noqa: BLE001 - a duty's bug must stop the node, not hang it
            log.exception("duty %s died", name)
        if not self._stopping.is_set():
            self.failed = f"duty {name} stopped by itself"
            log.error("%s: stopping the node", self.failed)
            self._stopping.set()
            signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)

    def _shutdown(self) -> None:
        self.state = "stopping"
        self._stopping.set()
        if self.server is not None:
            self.server.stop()
        leave = not (self.keep_on_exit or self.failed)
        for name, duty in self.duties.items():
            duty.stop(leave=leave)
        for name, thread in self._threads.items():
            thread.join(STOP_TIMEOUT)
            if thread.is_alive():
                self.failed = self.failed or f"duty {name} did not stop in {STOP_TIMEOUT:.0f}s"
        self.state = "failed" if self.failed else "stopped"

    def _report(self) -> None:
        while not self._done.wait(STATUS_INTERVAL):
            self._write_status()

    def _write_status(self) -> None:
        if not self.status_file:
            return
        status = self.status()
        if status != self._written:
            write_atomic(self.status_file, json.dumps(status).encode())
            self._written = status


def main(args) -> int:
    """`pycni agent` (args from cli.build_parser)."""
    from . import agent

    try:
        duties = {kind.name: duty for kind in DUTIES if (duty := kind.make(args)) is not None}
    except SettingsError as e:
        print(f"pycni agent: {e}", file=sys.stderr)
        return 2
    if not duties and not args.status_file:
        agent.run(args.socket, verbose=args.verbose)
        return 0
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    from cni_plugins.core.agent_client import address

    socket_name = address(args.socket or os.environ.get("PYCNI_AGENT_SOCKET")).lstrip("\0")
    if _answers(socket_name):  # before any duty changes anything (the socket is bound later)
        print(f"pycni agent: cannot listen: another agent serves @{socket_name} here", file=sys.stderr)
        return 1
    return Node(lambda: agent.Agent(args.socket), socket_name, duties, args.status_file, args.keep_on_exit).run()
