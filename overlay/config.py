"""Overlay settings: one typed object from a YAML/JSON file plus overrides.

File keys (camelCase, as in lab files and flannel's net-conf), all optional
except a cluster CIDR:

    cluster              name of the overlay; default "default"
    clusterCIDR          IPv4 pod CIDR, e.g. 10.244.0.0/16
    clusterCIDR6         IPv6 pod CIDR (dual-stack or IPv6-only), e.g. fd00:10:244::/48
    subnetPrefixLength   per-node IPv4 prefix; default 24
    subnetPrefixLength6  per-node IPv6 prefix; default 64
    nodeName             default: the host name
    underlayInterface    default: the interface of the default route
    vni                  VXLAN network identifier; default 1
    port                 VXLAN UDP port; default 4789
    mtu                  VXLAN MTU; default underlay MTU - 50 (IPv4 underlay) or - 70 (IPv6)
    directRouting        plain routes to nodes on the same underlay subnet; default false
    device               VXLAN device name; default pycni.<vni>
    store                file (default) or etcd
    storePath            file store directory; default /var/lib/pycni/overlay/<cluster>
    etcdEndpoints        list of URLs; default [http://127.0.0.1:2379]
    etcdPrefix           default /pycni/overlay/<cluster>
    leaseTTL             seconds; default 60, renewed every third of it
    stateFile            what the CNI plugin reads; default /run/pycni/overlay/<cluster>.json
"""
import socket
from dataclasses import dataclass, field

import yaml

from cni_plugins.core.names import IDENTIFIER
from cni_plugins.core.request import DEFAULT_RUN_DIR
from cni_plugins.overlay import state_path

from .network import Network, NetworkConfigError


class ConfigError(ValueError):
    pass


@dataclass(frozen=True)
class OverlayConfig:
    network: Network
    cluster: str = "default"
    node_name: str = field(default_factory=socket.gethostname)
    underlay_interface: str | None = None
    vni: int = 1
    port: int = 4789
    mtu: int | None = None
    direct_routing: bool = False
    device: str = ""
    store: str = "file"
    store_path: str = ""
    etcd_endpoints: tuple[str, ...] = ("http://127.0.0.1:2379",)
    etcd_prefix: str = ""
    lease_ttl: int = 60
    state_file: str = ""

    def __post_init__(self):
        defaults = {"device": f"pycni.{self.vni}",
                    "store_path": f"/var/lib/pycni/overlay/{self.cluster}",
                    "etcd_prefix": f"/pycni/overlay/{self.cluster}",
                    "state_file": state_path(DEFAULT_RUN_DIR, self.cluster)}
        for name, value in defaults.items():
            if not getattr(self, name):
                object.__setattr__(self, name, value)
        object.__setattr__(self, "etcd_endpoints", tuple(self.etcd_endpoints))
        if not IDENTIFIER.match(self.cluster):
            raise ConfigError(f"cluster name {self.cluster!r}: letters, digits, '_', '.' and '-' only")
        if not 0 < self.vni < 1 << 24:
            raise ConfigError(f"vni {self.vni} is not in 1..16777215")
        if not 0 < self.port < 65536:
            raise ConfigError(f"port {self.port} is not a UDP port")
        if len(self.device) > 15:
            raise ConfigError(f"device name {self.device!r} is longer than 15 characters")
        if self.lease_ttl < 3:
            raise ConfigError("leaseTTL must be at least 3 seconds")
        if self.store not in ("file", "etcd"):
            raise ConfigError(f"store {self.store!r}: file or etcd")
        if self.mtu is not None and self.mtu < 1280 and self.network.cidr6:
            raise ConfigError("an IPv6 cluster needs an MTU of at least 1280")


# file key -> (field, type)
KEYS = {
    "cluster": ("cluster", str), "nodeName": ("node_name", str),
    "underlayInterface": ("underlay_interface", str), "vni": ("vni", int), "port": ("port", int),
    "mtu": ("mtu", int), "directRouting": ("direct_routing", bool), "device": ("device", str),
    "store": ("store", str), "storePath": ("store_path", str), "etcdEndpoints": ("etcd_endpoints", list),
    "etcdPrefix": ("etcd_prefix", str), "leaseTTL": ("lease_ttl", int), "stateFile": ("state_file", str),
}
NETWORK_KEYS = {"clusterCIDR": "cidr4", "subnetPrefixLength": "prefix4",
                "clusterCIDR6": "cidr6", "subnetPrefixLength6": "prefix6"}


def from_mapping(settings: dict) -> OverlayConfig:
    unknown = set(settings) - set(KEYS) - set(NETWORK_KEYS)
    if unknown:
        raise ConfigError(f"unknown overlay settings: {', '.join(sorted(unknown))}")
    try:
        network = Network(**{NETWORK_KEYS[k]: v for k, v in settings.items() if k in NETWORK_KEYS})
    except (NetworkConfigError, TypeError) as e:
        raise ConfigError(str(e)) from None
    values = {}
    for key, value in settings.items():
        if key in KEYS and value is not None:
            name, kind = KEYS[key]
            if kind is list and isinstance(value, str):
                value = [v for v in value.split(",") if v]
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ConfigError(f"{key} must be {kind.__name__}, not {value!r}")
            values[name] = value
    return OverlayConfig(network=network, **values)


def load(path: str | None, overrides: dict | None = None) -> OverlayConfig:
    """Settings from a YAML or JSON file (JSON is YAML), then overrides
    (same keys, e.g. from command-line flags) on top."""
    settings = {}
    if path:
        try:
            with open(path) as f:
                settings = yaml.safe_load(f) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"{path}: {e}") from None
        if not isinstance(settings, dict):
            raise ConfigError(f"{path}: expected a mapping of settings")
    settings.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return from_mapping(settings)

