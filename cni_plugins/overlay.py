"""overlay: attach a pod to this node's share of the cluster network.

As flannel's CNI plugin: the node agent (`pycni agent --overlay-config`)
leases the node a subnet of the cluster CIDR(s), keeps the VXLAN dataplane
to every other node's subnet and writes the **node state file**; this
plugin reads that file and attaches the pod with our bridge and host-local
on the node's subnet(s), in-process.  The attachment is bridge's (result,
record, CHECK, DEL, GC); the overlay only derives the bridge config:

- host-local ranges: the node's subnet, and its IPv6 subnet on a
  dual-stack cluster (gateway .1 on the bridge; the network address is the
  node's VTEP);
- ``mtu``: the state file's (the VXLAN overhead is already taken off);
- ``ipMasq`` (default true) masquerades only traffic that leaves the
  cluster CIDR(s): pod-to-pod traffic across nodes keeps its source;
- ``isGateway`` always, ``isDefaultGateway`` by default (when false, the
  pods get routes to the cluster CIDR(s) only).

Config; every key not listed is a bridge option and passed on (``bridge``,
``hairpinMode``, ``macspoofchk``, ``dns``...)::

    {"cniVersion": "1.0.0", "name": "podnet", "type": "overlay",
     "cluster": "default",       which overlay (default "default"): its state
                                 file is <run dir>/overlay/<cluster>.json
     "stateFile": "...",         or the state file's path itself
     "ipam": {"dataDir": "...", "routes": [...]}}   optional, host-local's

Unusable node state: no file (no agent has run on this node, it has no
lease yet, or it left) or a damaged one is code 11, try again later: a
running agent writes the file once it holds a lease and rewrites a damaged
one at its next resync.  A format version this plugin does not know is
code 6: agent and plugins come from different releases, and retrying does
not help.  STATUS answers 50 (not ready) in all these cases.  DEL and GC
need no node state.

The node state file's format is defined here, with the plugin that reads
it; the agent (overlay.statefile) writes it with `write_state`.
"""
import ipaddress
import json
import os

from . import bridge
from .core.config import bad_config, typed
from .core.errors import CNIError, DECODE_FAILURE, IO_FAILURE, NOT_READY, TRY_AGAIN_LATER
from .core.names import IDENTIFIER
from .core.plain import plain, replace
from .core.records import write_atomic
from .core.request import Request

PLUGIN = "overlay"

# --- the node state file ----------------------------------------------------------
STATE_VERSION = 1
LEFT_SUFFIX = ".left"   # a clean leave renames the file: the next run prefers its subnet again


class NodeStateError(ValueError):
    """A node state file this code cannot use (``unknown_version``: one of
    another format version, else a torn or malformed one)."""

    def __init__(self, msg: str, unknown_version: bool = False):
        super().__init__(msg)
        self.unknown_version = unknown_version


@plain
class NodeState:
    """What the agent tells the plugin about this node (format version 1)::

        {"version": 1, "cluster": "default", "node": "host-a",
         "clusterCIDR": "10.244.0.0/16",      null on an IPv6-only cluster
         "clusterCIDR6": "fd00:10:244::/48",  null on an IPv4-only cluster
         "subnet": "10.244.3.0/24",           this node's pod subnets (one may be null)
         "subnet6": "fd00:10:244:3::/64",
         "mtu": 1450,                         pod MTU
         "vtep": {"device": "pycni.1", "mac": "..", "address": "10.244.3.0", "address6": ".."},
         "underlay": {"interface": "eth0", "address": "192.0.2.10"}}
    """
    cluster: str
    node: str
    cluster_cidr: str | None
    cluster_cidr6: str | None
    subnet: str | None
    subnet6: str | None
    mtu: int
    vtep: dict = {}
    underlay: dict = {}

    @property
    def subnets(self) -> list[str]:
        return [s for s in (self.subnet, self.subnet6) if s]

    @property
    def cluster_cidrs(self) -> list[str]:
        return [c for c in (self.cluster_cidr, self.cluster_cidr6) if c]

    def to_json(self) -> dict:
        return {"version": STATE_VERSION, "cluster": self.cluster, "node": self.node,
                "clusterCIDR": self.cluster_cidr, "clusterCIDR6": self.cluster_cidr6,
                "subnet": self.subnet, "subnet6": self.subnet6, "mtu": self.mtu,
                "vtep": self.vtep, "underlay": self.underlay}

    @classmethod
    def from_json(cls, data) -> "NodeState":
        if not isinstance(data, dict):
            raise NodeStateError("not a JSON object")
        if type(data.get("version")) is not int or data["version"] != STATE_VERSION:  # true == 1.0 == 1
            raise NodeStateError(f"format version {data.get('version')!r}, this plugin reads "
                                 f"version {STATE_VERSION}", unknown_version=True)
        state = cls(cluster=_field(data, "cluster", str), node=_field(data, "node", str),
                    cluster_cidr=_network(data, "clusterCIDR", 4), cluster_cidr6=_network(data, "clusterCIDR6", 6),
                    subnet=_network(data, "subnet", 4), subnet6=_network(data, "subnet6", 6),
                    mtu=_field(data, "mtu", int), vtep=_field(data, "vtep", dict, {}),
                    underlay=_field(data, "underlay", dict, {}))
        if not state.subnets:
            raise NodeStateError("no subnet")
        if not 68 <= state.mtu <= 65535:
            raise NodeStateError(f"mtu {state.mtu} out of range")
        for subnet, cidr in ((state.subnet, state.cluster_cidr), (state.subnet6, state.cluster_cidr6)):
            if subnet and not (cidr and ipaddress.ip_network(subnet).subnet_of(ipaddress.ip_network(cidr))):
                raise NodeStateError(f"subnet {subnet} is not inside the cluster CIDR {cidr}")
        return state


def _field(data: dict, key: str, kind, default=None):
    value = data.get(key, default)
    if not isinstance(value, kind) or kind is int and isinstance(value, bool):
        raise NodeStateError(f"{key} must be {kind.__name__}, not {value!r}")
    return value


def _network(data: dict, key: str, version: int) -> str | None:
    value = data.get(key)
    if value is None:
        return None
    try:
        net = ipaddress.ip_network(value)
    except (TypeError, ValueError):
        net = None
    if net is None or net.version != version:
        raise NodeStateError(f"{key} {value!r} is not an IPv{version} network")
    return str(net)


def state_path(run_dir: str, cluster: str) -> str:
    """Where the agent of overlay ``cluster`` writes the node state by default."""
    return os.path.join(run_dir, "overlay", f"{cluster}.json")


def write_state(path: str, state: NodeState) -> None:
    write_atomic(path, json.dumps(state.to_json(), indent=1).encode())


def read_state(path: str) -> NodeState:
    """The node state at ``path``: FileNotFoundError when there is none,
    NodeStateError when it cannot be used."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise NodeStateError(f"not JSON ({e})") from None
    return NodeState.from_json(data)


# --- the plugin --------------------------------------------------------------------
OWN_KEYS = ("type", "cluster", "stateFile", "ipam")
IPAM_KEYS = ("type", "dataDir", "routes")


@plain
class PluginConfig:
    state_file: str
    ipam: dict      # host-local settings of ours: dataDir, routes


def parse_config(req: Request) -> PluginConfig:
    c = req.config
    cluster = typed(PLUGIN, c, "cluster", str, "default")
    if not IDENTIFIER.match(cluster):
        raise bad_config(PLUGIN, f"invalid cluster name {cluster!r}")
    state_file = typed(PLUGIN, c, "stateFile", str, "") or state_path(req.run_dir, cluster)
    ipam = typed(PLUGIN, c, "ipam", dict, {})
    unknown = sorted(set(ipam) - set(IPAM_KEYS))
    if unknown:
        raise bad_config(PLUGIN, f"ipam takes only {', '.join(IPAM_KEYS)}; the ranges come from the node's "
                         f"subnets (not {', '.join(unknown)})")
    if ipam.get("type", "host-local") != "host-local":
        raise bad_config(PLUGIN, f"ipam type {ipam['type']!r}: the overlay allocates with host-local")
    if typed(PLUGIN, c, "isGateway", bool, True) is not True:
        raise bad_config(PLUGIN, "isGateway cannot be false: pods reach other nodes through the bridge's gateway")
    return PluginConfig(state_file=state_file, ipam={k: v for k, v in ipam.items() if k != "type"})


def bridge_config(config: dict, cfg: PluginConfig, state: NodeState | None) -> dict:
    """The bridge config of this attachment (pure).  Without node state
    (DEL, GC) IPAM gets only what releasing needs: its data directory."""
    derived = {k: v for k, v in config.items() if k not in OWN_KEYS}
    derived.update(type="bridge", isGateway=True)
    derived.setdefault("ipMasq", True)
    derived.setdefault("isDefaultGateway", True)
    ipam = {"type": "host-local", **cfg.ipam}
    if state is not None:
        if not derived.get("mtu"):
            derived["mtu"] = state.mtu
        ipam["ranges"] = [[{"subnet": subnet}] for subnet in state.subnets]
        if not derived["isDefaultGateway"]:
            families = {ipaddress.ip_network(s).version for s in state.subnets}
            ipam["routes"] = [{"dst": cidr} for cidr in state.cluster_cidrs
                              if ipaddress.ip_network(cidr).version in families] + list(ipam.get("routes") or [])
    derived["ipam"] = ipam
    return derived


def bridge_request(req: Request, cfg: PluginConfig, state: NodeState | None) -> Request:
    config = bridge_config(req.config, cfg, state)
    return replace(req, config=config, raw_config=json.dumps(config).encode())


def node_state(cfg: PluginConfig, for_status: bool = False) -> NodeState:
    """The node state, or the CNI error that says why there is none
    (STATUS: always 50, not ready)."""
    def fail(code: int, why: str):
        return CNIError(NOT_READY if for_status else code, f"{PLUGIN}: node state {cfg.state_file}: {why}")

    try:
        return read_state(cfg.state_file)
    except FileNotFoundError:
        if os.path.exists(cfg.state_file + LEFT_SUFFIX):
            raise fail(TRY_AGAIN_LATER, "none: the node agent has left the overlay") from None
        raise fail(TRY_AGAIN_LATER, "none: the node agent (pycni agent --overlay-config) has not written "
                   "this node's subnet yet") from None
    except NodeStateError as e:
        if e.unknown_version:
            raise fail(DECODE_FAILURE, f"{e}: the node agent and the plugins come from different "
                       "releases") from None
        raise fail(TRY_AGAIN_LATER, f"damaged ({e}); the node agent rewrites it") from None
    except OSError as e:
        raise fail(IO_FAILURE, f"cannot read it: {e.strerror}") from None


def add(req: Request) -> dict:
    cfg = parse_config(req)
    state = node_state(cfg)
    breq = bridge_request(req, cfg, state)
    bridge_cfg = bridge.parse_config(breq)
    bridge_cfg.masq_exempt = state.cluster_cidrs
    return bridge.add(breq, bridge_cfg)


def check(req: Request) -> None:
    cfg = parse_config(req)
    bridge.check(bridge_request(req, cfg, node_state(cfg)))


def delete(req: Request) -> None:
    """Needs no node state; where it is still readable, its cluster CIDRs
    let a DEL without our record (prevResult only) find the masquerade
    exemption the ADD made."""
    cfg = parse_config(req)
    try:
        cluster_cidrs = read_state(cfg.state_file).cluster_cidrs
    except (OSError, NodeStateError):
        cluster_cidrs = []
    bridge.delete(bridge_request(req, cfg, None), cluster_cidrs)


def gc(req: Request) -> None:
    bridge.gc(bridge_request(req, parse_config(req), None))


def status(req: Request) -> None:
    cfg = parse_config(req)
    bridge.status(bridge_request(req, cfg, node_state(cfg, for_status=True)))
