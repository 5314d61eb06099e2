"""host-local IPAM: addresses from configured ranges, reserved as files.

Drop-in compatible with the reference Go plugin (same config, same results,
same files under ``<dataDir>/<network>/``, same flock on ``lock``), so both
can serve one data directory.  Standard library only: this runs on every
container start.

config.py parses and validates the config, allocator.py hands out and
takes back addresses over a Store (store.py: the reference's disk layout
here, an in-memory one in the tests).  The bridge plugin calls ``add``/
``delete``/``check``/``gc`` in-process with its own Request (IPAM section
in ``req.config["ipam"]``, network name in ``req.config["name"]``).
"""
from cni_plugins.core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, IO_FAILURE, NOT_READY

from . import config
from .allocator import IPAllocator
from .store import DiskStore

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


def allocator_for(data_dir: str, network: str) -> IPAllocator:
    return IPAllocator(DiskStore(data_dir, network))


def gc_network(data_dir: str, network: str, valid: set[tuple[str, str]]) -> list[str]:
    """Free every reservation in the network not owned by a (containerID,
    ifname) in ``valid``; returns the addresses released."""
    return allocator_for(data_dir, network).collect(valid)


# -- the plugin interface (see cni_plugins.core.skel) ----------------------------

def add(req) -> dict:
    conf = config.load(req)
    result = {}
    if conf.resolv_conf:
        try:
            result["dns"] = config.parse_resolv_conf(conf.resolv_conf)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot read resolvConf {conf.resolv_conf}: {e}") from None
    got = allocator_for(conf.data_dir, conf.name).allocate(conf.range_sets, conf.requested,
                                                           req.container_id, req.ifname)
    result["ips"] = [{"address": f"{addr}/{rng.subnet.prefixlen}", "gateway": str(rng.gateway)}
                     for addr, rng in got]
    if conf.routes:
        result["routes"] = conf.routes
    return result


def delete(req) -> None:
    # Only the network name and data dir are needed: a DEL must work even
    # if the ranges have since been edited into something invalid.
    network = config.check_network_name(req.config.get("name"))
    allocator_for(config.data_dir_of(req.config), network).release(req.container_id, req.ifname)


def check(req) -> None:
    conf = config.load(req)
    if not allocator_for(conf.data_dir, conf.name).held_by(req.container_id, req.ifname):
        raise CNIError(CHECK_FAILED, f"host-local: Failed to find address added by container {req.container_id}")


def gc(req) -> None:
    network = config.check_network_name(req.config.get("name"))
    data_dir = config.data_dir_of(req.config)
    if VALID_ATTACHMENTS not in req.config:
        raise CNIError(INVALID_CONFIG, f"GC config lacks {VALID_ATTACHMENTS!r}")
    attachments = req.config[VALID_ATTACHMENTS] or []
    if not isinstance(attachments, list):
        raise CNIError(INVALID_CONFIG, f"{VALID_ATTACHMENTS} must be a list")
    valid = set()
    for att in attachments:
        if not isinstance(att, dict) or not isinstance(att.get("containerID"), str):
            raise CNIError(INVALID_CONFIG, f"invalid entry in {VALID_ATTACHMENTS}: {att!r}")
        valid.add((att["containerID"], str(att.get("ifname") or "")))
    gc_network(data_dir, network, valid)


def status(req) -> None:
    conf = config.load(req)
    store = DiskStore(conf.data_dir, conf.name)
    try:
        store.ensure_ready()
    except OSError as e:
        raise CNIError(NOT_READY, f"cannot use {store.dir}: {e.strerror or e}") from None
