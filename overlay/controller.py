"""The overlay controller: a reconciler for one node.

Inputs are events on one queue: lease batches from the store's watch
(their own thread), underlay address/link changes (netlink monitor
thread), timers (renewal, a slow resync that heals tampering) and stop.
One thread (the one calling `run`) owns the lease and the dataplane: it
drains every queued event, then computes the desired state (a pure
function of our lease, all leases, the config and the underlay), diffs it
against the kernel and applies the difference.  Convergence is
event-driven: a peer's lease reaches us through the watch within
milliseconds, not at the next poll.

While the store is out of reach the dataplane stays as it is; renewals
are retried, and a lease that expired meanwhile is taken again with the
same subnet when it is still free.

Embedding (the node agent)::

    controller = OverlayController(config)        # overlay.config.load(...)
    thread = threading.Thread(target=controller.run); thread.start()
    controller.ready.wait(timeout)                # first convergence done
    controller.status()                           # plain dict, any thread
    controller.stop(leave=True); thread.join()    # leave=False keeps lease and dataplane
"""
import hashlib
import logging
import queue
import threading
import time

from .config import OverlayConfig
from .dataplane import Dataplane, DataplaneError
from .desired import Underlay, desired_state, overlay_mtu
from .diff import Observed, diff
from .kernel import underlay as underlay_kernel
from .lease import Lease, LeaseRequest
from .store import LeaseLost, LeaseStore, StoreError, WatchBatch, make_store
from . import statefile

log = logging.getLogger(__name__)

RESYNC_INTERVAL = 30.0
RETRY_DELAY = (0.2, 5.0)
UNDERLAY_CHANGED = "underlay"
STOP = "stop"


def vtep_mac(config: OverlayConfig) -> str:
    """Stable across restarts and device re-creation, so peers' FDB and
    neighbour entries stay valid: derived from cluster, node and VNI, with
    the locally administered bit set."""
    digest = bytearray(hashlib.sha256(f"{config.cluster}/{config.node_name}/{config.vni}".encode()).digest()[:6])
    digest[0] = (digest[0] & 0xFE) | 0x02
    return ":".join(f"{b:02x}" for b in digest)


class OverlayController:
    def __init__(self, config: OverlayConfig, store: LeaseStore | None = None):
        self.config = config
        self.store = store or make_store(config)
        self.ready = threading.Event()
        self.lease: Lease | None = None
        self.leases: dict[str, Lease] = {}
        self.underlay: Underlay | None = None
        self.last_error: str | None = None
        self._events: queue.Queue = queue.Queue()
        self._stopping = threading.Event()
        self._leave = True
        self._watch = None
        self._applied = None  # what our last successful apply left in the kernel (diff.Observed)

    # --- public API -----------------------------------------------------------------
    def stop(self, leave: bool = True) -> None:
        """Thread-safe.  leave=True: release the lease and remove everything
        we made (a node leaving); False: keep both (a restart or upgrade)."""
        self._leave = leave
        self._stopping.set()
        self._events.put(STOP)
        if self._watch is not None:
            self._watch.close()

    def status(self) -> dict:
        lease, underlay = self.lease, self.underlay
        return {"node": self.config.node_name, "ready": self.ready.is_set(),
                "lease": lease.to_json() if lease else None,
                "underlay": underlay.address if underlay else None,
                "peers": sorted(l.node for l in list(self.leases.values()) if l.node != self.config.node_name),
                "lastError": self.last_error}

    def run(self) -> None:
        """Block until stop(), converging all along."""
        dataplane = Dataplane(self.config.device, self.config.port)
        monitor = underlay_kernel.AddressMonitor(lambda: self._events.put(UNDERLAY_CHANGED))
        watcher = threading.Thread(target=self._watch_store, name="overlay-watch", daemon=True)
        watcher.start()
        try:
            self._loop(dataplane)
        finally:
            monitor.close()
            self._stopping.set()
            if self._watch is not None:
                self._watch.close()
            watcher.join()
            if self._leave:
                self._leave_cluster(dataplane)
            dataplane.close()
            self.store.close()

    # --- the loop ---------------------------------------------------------------------
    def _loop(self, dataplane: Dataplane) -> None:
        renew_at = retry_at = 0.0
        resync_at = time.monotonic() + RESYNC_INTERVAL
        delay = RETRY_DELAY[0]
        dirty = True
        while not self._stopping.is_set():
            wake = min(renew_at if self.lease else retry_at, resync_at, retry_at if dirty else resync_at)
            for event in self._drain(max(0.0, wake - time.monotonic())):
                if event == STOP:
                    return
                if event == UNDERLAY_CHANGED:
                    if self._underlay_moved(dataplane):
                        dirty, renew_at = True, 0.0  # publish the new address now
                else:
                    dirty = True
                    if self._apply_batch(event):
                        renew_at = 0.0  # our own lease vanished (expired in an outage): take it again
            now = time.monotonic()
            failures = []
            try:
                if self.lease is None:
                    self._acquire(dataplane)
                    renew_at, dirty = now + self._renew_interval(), True
                elif now >= renew_at:
                    self._renew()
                    renew_at = now + self._renew_interval()
            except (StoreError, underlay_kernel.UnderlayError) as e:
                failures.append(e)
                if self.lease:
                    renew_at = now + delay  # the renewal failed: again at the retry, not at once
            # the dataplane follows what we know even while the store is out of reach
            if self.lease and (dirty or now >= resync_at):
                try:
                    self._reconcile(dataplane, full=now >= resync_at)
                    dirty, resync_at = False, now + RESYNC_INTERVAL
                except (DataplaneError, underlay_kernel.UnderlayError) as e:
                    failures.append(e)
            if failures:
                self.last_error = "; ".join(map(str, failures))
                log.warning("%s; retrying in %.1fs", self.last_error, delay)
                retry_at = now + delay
                delay = min(delay * 2, RETRY_DELAY[1])
            else:
                delay, self.last_error = RETRY_DELAY[0], None

    def _drain(self, timeout: float) -> list:
        """Every queued event, waiting up to ``timeout`` for the first."""
        try:
            events = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        while True:
            try:
                events.append(self._events.get_nowait())
            except queue.Empty:
                return [STOP] if STOP in events else events

    def _apply_batch(self, batch: WatchBatch) -> bool:
        """Fold a watch batch into our picture of the cluster; True when it
        says our own lease is gone."""
        if batch.reset:
            self.leases = {}
        for event in batch.events:
            if event.lease is None:
                self.leases.pop(event.key, None)
            else:
                self.leases[event.key] = event.lease
        return self.lease is not None and self.lease.key not in self.leases

    def _underlay_moved(self, dataplane: Dataplane) -> bool:
        try:
            current = dataplane.underlay(self.config.underlay_interface)
        except underlay_kernel.UnderlayError as e:
            log.warning("underlay: %s; keeping %s", e, self.underlay)
            return False
        if current == self.underlay:
            return False
        log.info("underlay changed: %s -> %s", self.underlay, current)
        self.underlay = current
        self._applied = None  # the device and our routes may all have to change: read the kernel
        if self.lease:
            self.lease = self.lease.replace(public_ip=current.address)
        return True

    def _renew_interval(self) -> float:
        """A third of the TTL, sooner when the store says less is left."""
        ttl = self.lease.ttl if self.lease else self.config.lease_ttl
        left = self.lease.expires - time.time() if self.lease and self.lease.expires else ttl
        return max(0.5, min(ttl / 3, left / 2))

    # --- store --------------------------------------------------------------------------
    def _acquire(self, dataplane: Dataplane) -> None:
        self.underlay = dataplane.underlay(self.config.underlay_interface)
        request = LeaseRequest(node=self.config.node_name, public_ip=self.underlay.address,
                               vtep_mac=vtep_mac(self.config), ttl=self.config.lease_ttl,
                               preferred=statefile.previous_subnet(self.config.state_file))
        self.lease = self.store.acquire(request)
        self.leases[self.lease.key] = self.lease
        log.info("acquired %s (%s) for %s at %s", self.lease.subnet, self.lease.subnet6, self.lease.node,
                 self.lease.public_ip)

    def _renew(self) -> None:
        try:
            self.lease = self.store.renew(self.lease)
            log.debug("renewed %s for %.0fs", self.lease.key, self.lease.expires - time.time())
        except LeaseLost as e:
            log.error("lost our lease: %s; acquiring another", e)
            self.lease = None
            raise

    def _watch_store(self) -> None:
        """The watch thread: every batch goes on the queue.  A store's
        watch resumes by itself; this loop only outlives a broken one."""
        while not self._stopping.is_set():
            self._watch = self.store.watch()
            if self._stopping.is_set():
                self._watch.close()
            try:
                for batch in self._watch:
                    self._events.put(batch)
            except (StoreError, OSError) as e:
                log.warning("lease watch failed: %s", e)
                self._stopping.wait(RETRY_DELAY[0])

    # --- dataplane ----------------------------------------------------------------------
    def _reconcile(self, dataplane: Dataplane, full: bool) -> None:
        """Desired state -> diff -> apply.  An event-driven reconcile diffs
        against what our last successful apply left; the kernel is read in
        full at each resync, after a failure and when the underlay moved
        (reading every link, route, neighbour and FDB entry costs ~12 ms of
        Python at 50 peers, which 50 agents paying per join made the
        cluster's convergence CPU-bound)."""
        desired = desired_state(self.lease, self.leases.values(), self.config, self.underlay)
        observed = dataplane.observe() if full or self._applied is None else self._applied
        plan = diff(desired, observed)
        self._applied = None  # unknown until this apply has succeeded
        if plan:
            log.info("applying %s", plan.summary())
            dataplane.apply(plan, observed)
        self._applied = Observed(desired.device, True, desired.addresses, desired.routes, desired.neighbours,
                                 desired.fdb, desired.allowed)
        state = statefile.render(self.config, self.lease, self.underlay, overlay_mtu(self.config, self.underlay))
        if statefile.sync(self.config.state_file, state):
            log.info("node state written to %s", self.config.state_file)
        self.ready.set()

    def _leave_cluster(self, dataplane: Dataplane) -> None:
        if self.lease:
            try:
                self.store.release(self.lease)
            except StoreError as e:
                log.warning("could not release %s (it expires by itself): %s", self.lease.key, e)
        try:
            dataplane.teardown()
        except DataplaneError as e:
            log.error("removing the overlay: %s", e)
        statefile.retire(self.config.state_file)
        log.info("left the overlay")
