"""Lease stores: the interface (base), the embedded file store and etcd."""
from .base import (LeaseEvent, LeaseLost, LeaseStore, LeaseWatch, NoFreeSubnet, StoreError,
                   StoreUnavailable, WatchBatch)

__all__ = ["LeaseEvent", "LeaseLost", "LeaseStore", "LeaseWatch", "NoFreeSubnet", "StoreError",
           "StoreUnavailable", "WatchBatch", "make_store"]


def make_store(config) -> LeaseStore:
    """The store an `OverlayConfig` names.  A new backend is one more branch
    here and one module; the controller does not change."""
    if config.store == "file":
        from .filestore import FileStore
        return FileStore(config.network, config.store_path)
    if config.store == "etcd":
        from .etcdstore import EtcdStore
        return EtcdStore(config.network, config.etcd_endpoints, config.etcd_prefix)
    raise ValueError(f"unknown store {config.store!r} (file or etcd)")
