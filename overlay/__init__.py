"""VXLAN overlay across hosts: per-node subnet leases in a shared store
(a directory or etcd), and a controller that keeps each node's VXLAN
dataplane in step with everyone's leases.  See overlay/README.md."""
from .config import ConfigError, OverlayConfig, load
from .controller import OverlayController

__all__ = ["ConfigError", "OverlayConfig", "OverlayController", "load"]
