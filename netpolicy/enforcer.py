"""Keeping the kernel equal to the sources.

`Enforcer.apply(inputs)` compiles (pure, and every object was validated
when parsed, so an invalid policy never gets this far), then under the
netns lock diffs against what our tables hold and applies the difference
as one transaction.  Nothing is ever flushed and refilled: after a restart
the first reconcile lists the tables the previous run left and, inputs
unchanged, applies nothing, so no packet is judged by a half-built ruleset.

`PolicyController` is what the node agent runs: sources plus a registry of
endpoints the CNI plugin registers, reconciled on every change.  A source
that turns invalid keeps its last valid content (the error is kept in
``errors``); one that was never valid stops reconciling altogether, so a
restart with a broken file leaves the kernel as the last run left it.
"""
from __future__ import annotations

import logging
import threading
import time

# The one lock of every nftables writer in a network namespace (our plugins
# take it too); cni_plugins.kernel.nft once the tree is reorganised.
from cni_plugins.kernel.nft import locked

from .compiler import TABLE, compile_tables
from .model import Endpoint, Inputs
from .nft import Kernel, NftError, enable_bridged_filtering
from .parse import PolicyError
from .ruleset import Table, transaction
from .sources import EndpointRegistry, Source, merge

FAMILIES = ("inet", "bridge")
log = logging.getLogger("pycni.netpolicy")


class Enforcer:
    """Our tables in this network namespace, kept equal to compiled inputs.
    What it applied is remembered, so a reconcile costs a compile, a diff
    and the transaction; the kernel is listed again only at the first
    apply, when asked (``resync``), and when a transaction fails (someone
    else changed our tables): then the diff is redone against the listing."""

    def __init__(self, node: str, kernel: Kernel | None = None):
        self.node = node
        self.kernel = kernel or Kernel()
        self._applied: dict[str, Table | None] | None = None

    def _read(self) -> dict[str, Table | None]:
        return {family: self.kernel.read_table(family, TABLE) for family in FAMILIES}

    def apply(self, inputs: Inputs, dry_run: bool = False, resync: bool = False) -> list[dict]:
        """Make our tables match ``inputs``; returns the transaction applied
        (empty when nothing changed)."""
        desired = {t.family: t for t in compile_tables(inputs, self.node)}
        if desired and not dry_run:
            enable_bridged_filtering()
        with locked():
            if self._applied is None or resync:
                self._applied = self._read()
            commands = _transaction(self._applied, desired)
            if dry_run:
                return commands
            try:
                self.kernel.apply(commands)
            except NftError:
                self._applied = self._read()
                commands = _transaction(self._applied, desired)
                self.kernel.apply(commands)
            self._applied = {f: desired[f].as_applied() if f in desired else None for f in FAMILIES}
        return commands


def _transaction(live: dict[str, Table | None], desired: dict[str, Table]) -> list[dict]:
    return [c for family in FAMILIES for c in transaction(live[family], desired.get(family))]


class PolicyController:
    """The agent's network-policy reconciler for one node."""

    def __init__(self, node: str, sources: list[Source] = (), registry_dir: str | None = None,
                 enforcer: Enforcer | None = None):
        self.registry = EndpointRegistry(registry_dir)
        self.sources: list[Source] = [*sources, self.registry]
        self.enforcer = enforcer or Enforcer(node)
        self.errors: dict[int, PolicyError] = {}
        self._good: dict[int, Inputs] = {}
        self._lock = threading.Lock()

    def inputs(self) -> Inputs:
        """All sources merged; an invalid source contributes its last valid
        content, or raises PolicyError if it never had one."""
        found = []
        for i, source in enumerate(self.sources):
            try:
                self._good[i] = source.list()
                self.errors.pop(i, None)
            except PolicyError as e:
                self.errors[i] = e
                if i not in self._good:
                    raise
                log.error("netpolicy: keeping the last valid state: %s", e)
            found.append(self._good[i])
        return merge(found)

    def reconcile(self, resync: bool = False) -> list[dict]:
        """Bring the kernel to the sources; ``resync``: against a fresh
        listing of our tables rather than what was last applied."""
        with self._lock:
            return self.enforcer.apply(self.inputs(), resync=resync)

    # --- the CNI plugin's calls (through the agent) ---------------------------
    def register(self, endpoint: Endpoint) -> list[dict]:
        """ADD: the endpoint's rules are in the kernel when this returns."""
        self.registry.put(endpoint)
        return self.reconcile()

    def unregister(self, key: str) -> list[dict]:
        """DEL: ``key`` is namespace/name."""
        self.registry.remove(key)
        return self.reconcile()

    def retain(self, keys) -> list[dict]:
        """GC: drop registered endpoints not in ``keys``."""
        self.registry.retain(keys)
        return self.reconcile()

    # --- the agent's loop -------------------------------------------------------
    def run(self, stop: threading.Event, interval: float = 0.2, resync_every: float = 300.0) -> None:
        """Reconcile now, after every change any source reports, and against
        a fresh listing every ``resync_every`` seconds (healing tables someone
        else changed), until ``stop`` is set; errors are logged and retried
        on the next change."""
        wake = threading.Event()
        watchers = [threading.Thread(target=s.watch, args=(wake.set, stop), daemon=True,
                                     name=f"netpolicy-watch-{i}") for i, s in enumerate(self.sources)]
        for t in watchers:
            t.start()
        wake.set()
        next_resync = time.monotonic() + resync_every
        while not stop.is_set():
            woke = wake.wait(interval)
            resync = time.monotonic() >= next_resync
            if not (woke or resync):
                continue
            wake.clear()
            if resync:
                next_resync = time.monotonic() + resync_every
            try:
                self.reconcile(resync=resync)
            except Exception:  # keep running: the next change may fix it
                log.exception("netpolicy: reconcile failed")
        for t in watchers:
            t.join()
