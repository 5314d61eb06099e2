"""VXLAN overlay across hosts: per-node subnet leases in a shared store
(a directory or etcd), and a controller that keeps each node's VXLAN
dataplane in step with everyone's leases.  See overlay/README.md.

The names below load on first use: `overlay.flags` (for a command line)
must not pay for pyroute2."""
__all__ = ["ConfigError", "OverlayConfig", "OverlayController", "load"]


def __getattr__(name: str):
    if name in ("ConfigError", "OverlayConfig", "load"):
        from . import config
        return getattr(config, name)
    if name == "OverlayController":
        from .controller import OverlayController
        return OverlayController
    raise AttributeError(f"module 'overlay' has no attribute {name!r}")
