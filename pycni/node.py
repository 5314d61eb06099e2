"""The node agent process (`pycni agent`): the plugin request server and the
node's controllers in one process.

- The request server (`pycni.agent.Agent`) runs in the main thread, so a
  signal interrupts its accept() at once.
- Each controller, a **duty**, runs in a thread of its own: the overlay
  today, network policy next.  A duty is any object with

      ready: threading.Event       set once it has converged for the first time
      run() -> None                blocks until stop(); raises only on a bug
      stop(leave: bool) -> None    thread-safe; leave=False keeps what it made
      status() -> dict             plain data, from any thread

  and comes from a `DutyKind` in DUTIES: its command-line flags, and a
  factory that returns None when none of its settings were given.  A
  second controller is one more DutyKind; nothing else here changes.

SIGTERM or SIGINT is a clean leave: the server stops taking requests and
finishes those in flight, then every duty stops with leave=True (the
overlay releases its lease and removes its dataplane), or leave=False with
--keep-on-exit (a restart or an upgrade).  A duty that dies stops the node
with exit status 1 and leaves the others' state in place.

With --status-file the node's status is written there atomically whenever
it changes (looked at twice a second) and once more at exit::

    {"pid": 4242, "socket": "pycni-agent", "state": "running", "ready": true,
     "duties": {"overlay": {"node": .., "ready": true, "lease": {..}, "peers": [..], "lastError": null}}}

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


# --- the overlay duty ------------------------------------------------------------------
def _overlay_arguments(parser) -> None:
    from overlay import flags

    group = parser.add_argument_group(
        "overlay", "The VXLAN overlay duty (overlay/README.md) runs when --overlay-config or any of "
                   "these flags is given; flags win over the file's keys.")
    group.add_argument("--overlay-config", metavar="FILE", help="YAML or JSON overlay settings")
    flags.add_arguments(group, skip=("nodeName",))


def _overlay_duty(args):
    from overlay import flags

    settings = flags.overrides(vars(args))
    if args.overlay_config is None and not settings:
        return None
    if args.node_name:
        settings["nodeName"] = args.node_name
    from overlay import OverlayController, load
    from overlay.store import StoreError

    try:
        return OverlayController(load(args.overlay_config, settings))
    except (ValueError, StoreError, OSError) as e:
        raise SettingsError(f"overlay: {e}") from None


DUTIES = [DutyKind("overlay", _overlay_arguments, _overlay_duty)]


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
    def __init__(self, server, duties: dict, status_file: str | None = None, keep_on_exit: bool = False):
        self.server = server
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
        return {"pid": os.getpid(), "socket": self.server.address.lstrip("\0"), "state": self.state,
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
    try:
        server = agent.Agent(args.socket)
    except OSError as e:
        print(f"pycni agent: cannot listen: {e}", file=sys.stderr)
        return 1
    return Node(server, duties, args.status_file, args.keep_on_exit).run()
