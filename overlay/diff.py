"""What to change: desired state against what the kernel has (both plain
data), as a `Plan`.  Pure; the dataplane applies it."""
from dataclasses import dataclass, field

from .desired import DeviceSpec, Desired

# Attributes the kernel will not change on a live VXLAN device.
FIXED = ("vni", "port", "link", "local")


@dataclass(frozen=True)
class Observed:
    device: DeviceSpec | None
    device_up: bool = False
    addresses: frozenset = frozenset()
    routes: frozenset = frozenset()     # ours (our protocol), on any device
    neighbours: frozenset = frozenset()  # permanent ones on our device
    fdb: frozenset = frozenset()         # on our device
    allowed: frozenset | None = None     # None: our nftables table is missing


@dataclass
class Changes:
    add: frozenset = frozenset()
    remove: frozenset = frozenset()

    def __bool__(self):
        return bool(self.add or self.remove)


@dataclass
class Plan:
    device: str | None = None            # "create", "recreate", "update" or None
    device_spec: DeviceSpec | None = None
    addresses: Changes = field(default_factory=Changes)
    routes: Changes = field(default_factory=Changes)
    neighbours: Changes = field(default_factory=Changes)
    fdb: Changes = field(default_factory=Changes)
    allowed: frozenset | None = None     # the whole new set, when it differs

    def summary(self) -> str:
        parts = [f"device {self.device}"] if self.device else []
        for kind in ("addresses", "routes", "neighbours", "fdb"):
            c = getattr(self, kind)
            if c:
                parts.append(f"{kind} +{len(c.add)}/-{len(c.remove)}")
        if self.allowed is not None:
            parts.append(f"allowed underlay set of {len(self.allowed)}")
        return ", ".join(parts) or "nothing"

    def __bool__(self):
        return bool(self.device or self.addresses or self.routes or self.neighbours or self.fdb
                    or self.allowed is not None)


def changes(desired: frozenset, observed: frozenset) -> Changes:
    return Changes(add=desired - observed, remove=observed - desired)


def diff(desired: Desired, observed: Observed) -> Plan:
    plan = Plan(device_spec=desired.device)
    have = observed
    current = observed.device
    if current is None:
        plan.device = "create"
    elif any(getattr(current, a) != getattr(desired.device, a) for a in FIXED):
        plan.device = "recreate"
    elif current != desired.device or not observed.device_up:
        plan.device = "update"
    if plan.device in ("create", "recreate"):
        # A new device starts bare: whatever hung on the old one is gone.
        elsewhere = frozenset(r for r in observed.routes if r.device != desired.device.name)
        have = Observed(None, routes=elsewhere, allowed=observed.allowed)
    plan.addresses = changes(desired.addresses, have.addresses)
    plan.routes = changes(desired.routes, have.routes)
    plan.neighbours = changes(desired.neighbours, have.neighbours)
    plan.fdb = changes(desired.fdb, have.fdb)
    if observed.allowed != desired.allowed:
        plan.allowed = desired.allowed
    return plan
