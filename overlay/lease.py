"""A node's subnet lease: what every other node needs to reach its pods.

Plain data, the same whatever store holds it.  ``key`` names the lease in
the store (its primary subnet, "10.244.3.0-24"), so it is unique by
construction.  ``revision`` and ``store_id`` are the store's own
bookkeeping (etcd: the key's mod revision and the etcd lease id that
carries the TTL); the file store leaves them 0.
"""
import dataclasses
import time
from dataclasses import dataclass, field

# What a peer publishes; a change in any of these must reach every node.
PUBLISHED = ("node", "subnet", "subnet6", "public_ip", "vtep_mac")


@dataclass(frozen=True)
class Lease:
    node: str
    subnet: str | None          # IPv4 pod subnet, "10.244.3.0/24"
    subnet6: str | None         # IPv6 pod subnet, or None on an IPv4-only cluster
    public_ip: str              # underlay address VXLAN packets go to
    vtep_mac: str               # MAC of the node's VXLAN device
    ttl: int                    # seconds a lease lives without renewal
    expires: float = 0.0        # wall-clock time (time.time()) it runs out
    revision: int = field(default=0, compare=False)
    store_id: int = field(default=0, compare=False)

    @property
    def key(self) -> str:
        return subnet_key(self.subnet or self.subnet6)

    def published(self) -> tuple:
        return tuple(getattr(self, name) for name in PUBLISHED)

    def same_published(self, other: "Lease | None") -> bool:
        return other is not None and self.published() == other.published()

    def replace(self, **changes) -> "Lease":
        return dataclasses.replace(self, **changes)

    def expired(self, now: float | None = None) -> bool:
        return self.expires <= (time.time() if now is None else now)

    def to_json(self) -> dict:
        return {"node": self.node, "subnet": self.subnet, "subnet6": self.subnet6,
                "publicIP": self.public_ip, "vtepMAC": self.vtep_mac,
                "ttl": self.ttl, "expires": self.expires}

    @classmethod
    def from_json(cls, data: dict, **extra) -> "Lease":
        """Raises KeyError/TypeError/ValueError on a malformed record."""
        return cls(node=str(data["node"]), subnet=data.get("subnet"), subnet6=data.get("subnet6"),
                   public_ip=str(data["publicIP"]), vtep_mac=str(data["vtepMAC"]).lower(),
                   ttl=int(data["ttl"]), expires=float(data.get("expires", 0.0)), **extra)


@dataclass(frozen=True)
class LeaseRequest:
    """What a node asks for.  ``preferred`` is the primary subnet it held
    before (from its state file), taken again when still free."""
    node: str
    public_ip: str
    vtep_mac: str
    ttl: int
    preferred: str | None = None


def subnet_key(subnet: str) -> str:
    return subnet.replace("/", "-")
