"""host-local IPAM: addresses from configured ranges, reserved as files.

Drop-in compatible with the reference Go plugin (same config, same results,
same files under ``<dataDir>/<network>/``, same flock on ``lock``), so both
can serve one data directory.  Standard library only: this runs on every
container start.

The bridge plugin calls ``add``/``delete``/``check``/``gc`` in-process with
its own Request (IPAM section in ``req.config["ipam"]``, network name in
``req.config["name"]``) and ``gc_network`` directly.
"""
import os

from cni_plugins.core.errors import (
    CHECK_FAILED, CNIError, INVALID_CONFIG, IO_FAILURE, IPAM_CONFLICT, IPAM_EXHAUSTED, NOT_READY,
)

from . import allocator
from .store import Store, owner_key

VALID_ATTACHMENTS = "cni.dev/valid-attachments"


def allocate(conf: "allocator.IPAMConfig", container_id: str, ifname: str) -> list[dict]:
    """Reserve one address per range set for this attachment, all or none.

    Returns the result ``ips`` list.  Errors: 100 when a range set is full,
    101 when a requested address is taken, out of every range or a gateway,
    or when the attachment already holds an address in a range set
    (the reference forbids duplicate allocation).
    """
    requested = list(conf.requested)
    ips, reserved, last = [], [], {}
    with Store(conf.data_dir, conf.name) as store:
        try:
            held = None
            for rs in conf.range_sets:
                want = next((a for a in requested if rs.range_for(a) is not None), None)
                if want is not None:
                    requested.remove(want)
                    rng = rs.range_for(want)
                    if want == rng.gateway:
                        raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                       f"requested ip {want} is subnet's gateway")
                    if not store.reserve(want, container_id, ifname):
                        raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                       f"requested IP address {want} is not available in range set {rs}")
                    addr = want
                else:
                    if held is None:
                        held = store.find(container_id, ifname)
                    dup = next((a for a in held if rs.range_for(a) is not None), None)
                    if dup is not None:
                        raise CNIError(IPAM_CONFLICT, f"failed to allocate for range {rs.index}: "
                                       f"{dup} has been allocated to {container_id}, "
                                       "duplicate allocation is not allowed")
                    addr = rng = None
                    for cand, cand_range in rs.candidates(store.last_reserved(rs.index)):
                        if store.reserve(cand, container_id, ifname):
                            addr, rng = cand, cand_range
                            break
                    if addr is None:
                        raise CNIError(IPAM_EXHAUSTED, f"failed to allocate for range {rs.index}: "
                                       f"no IP addresses available in range set: {rs}")
                reserved.append(addr)
                last[rs.index] = addr
                ips.append({"address": f"{addr}/{rng.subnet.prefixlen}", "gateway": str(rng.gateway)})
            if requested:
                raise CNIError(IPAM_CONFLICT, "failed to allocate all requested IPs: "
                               + " ".join(str(a) for a in requested))
            for index, addr in last.items():
                store.set_last_reserved(index, addr)
        except BaseException:
            for addr in reserved:
                store.remove(addr)
            raise
    return ips


def release(data_dir: str, network: str, container_id: str, ifname: str) -> list[str]:
    """Free every address this attachment holds; returns them (may be none).

    Reservation files are listed and read without the lock; the lock is taken
    only to re-check and remove the candidates found.
    """
    store = Store(data_dir, network)
    reservations = store.reservations()
    mine = {a: reservations[a] for a in store.find(container_id, ifname, reservations)}
    if not mine:
        return []
    with store:
        return [str(a) for a in store.release_if_owned(mine)]


def gc_network(data_dir: str, network: str, valid: set[tuple[str, str]]) -> list[str]:
    """Free every reservation in the network not owned by a (containerID,
    ifname) in ``valid``; returns the addresses released.  Files in the old
    id-only format are kept if any valid attachment has that id."""
    store = Store(data_dir, network)
    keep = {owner_key(cid, ifname) for cid, ifname in valid}
    keep |= {cid.strip() for cid, _ in valid}
    stale = {a: owner for a, owner in store.reservations().items() if owner not in keep}
    if not stale:
        return []
    with store:
        return [str(a) for a in store.release_if_owned(stale)]


# -- the plugin interface (see cni_plugins.core.skel) ----------------------------

def add(req) -> dict:
    conf = allocator.load(req.config, req.args)
    result = {}
    if conf.resolv_conf:
        try:
            result["dns"] = allocator.parse_resolv_conf(conf.resolv_conf)
        except OSError as e:
            raise CNIError(IO_FAILURE, f"cannot read resolvConf {conf.resolv_conf}: {e}") from None
    result["ips"] = allocate(conf, req.container_id, req.ifname)
    if conf.routes:
        result["routes"] = conf.routes
    return result


def delete(req) -> None:
    # Only the network name and data dir are needed: a DEL must work even
    # if the ranges have since been edited into something invalid.
    network = allocator.check_network_name(req.config.get("name"))
    release(allocator.data_dir_of(req.config), network, req.container_id, req.ifname)


def check(req) -> None:
    conf = allocator.load(req.config, req.args)
    store = Store(conf.data_dir, conf.name)
    if not store.find(req.container_id, req.ifname):
        raise CNIError(CHECK_FAILED, f"host-local: Failed to find address added by container {req.container_id}")


def gc(req) -> None:
    network = allocator.check_network_name(req.config.get("name"))
    data_dir = allocator.data_dir_of(req.config)
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
    conf = allocator.load(req.config, req.args)
    store = Store(conf.data_dir, conf.name)
    try:
        store.ensure_dir()
    except OSError as e:
        raise CNIError(NOT_READY, f"cannot create {store.dir}: {e}") from None
    if not os.access(store.dir, os.W_OK | os.X_OK):
        raise CNIError(NOT_READY, f"{store.dir} is not writable")
