"""bandwidth: shape a container's traffic with tbf qdiscs (chained).

Limits come from the static config keys of the reference (``ingressRate``,
``ingressBurst``, ``egressRate``, ``egressBurst`` at top level: rates in
bits/s, bursts in bits) or, when none of those is given, from
``runtimeConfig.bandwidth`` (the ``bandwidth`` capability).  The host side
of the container's veth is found from prevResult: the container interface's
peer ifindex must name an interface that prevResult lists without a sandbox.

* ingress (toward the container): a tbf qdisc at the host veth's root.
* egress (from the container): an ifb device ``bwp`` + hash (the reference's
  name), the host veth's ingress qdisc redirecting everything to it with a
  u32 filter and a mirred action, and a tbf qdisc at the ifb's root.

What ADD makes is recorded (RecordStore "bandwidth") before the kernel is
touched; DEL and GC undo it from the record, even with the container gone.
tc messages are ours (tc.py), standard library only.
"""
import errno
import os

from .kernel import netns, tc
from .core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, KERNEL_FAILURE, LINK_EXISTS, UNKNOWN_CONTAINER
from .kernel.netlink import Netlink, NetlinkError
from .core.plain import plain
from .core.request import Request
from .core.records import RecordStore

IFB_PREFIX, IFNAME_MAX = "bwp", 15
_KEYS = ("ingressRate", "ingressBurst", "egressRate", "egressBurst")


# --- config -------------------------------------------------------------------
@plain
class Limits:
    ingress_rate: int = 0   # bits/s
    ingress_burst: int = 0  # bits
    egress_rate: int = 0
    egress_burst: int = 0

    @property
    def ingress(self) -> bool:
        return bool(self.ingress_rate)

    @property
    def egress(self) -> bool:
        return bool(self.egress_rate)


def _bad(msg: str) -> CNIError:
    return CNIError(INVALID_CONFIG, f"bandwidth: {msg}")


def _rate_and_burst(rate: int, burst: int, what: str) -> None:
    if burst == 0 and rate != 0:
        raise _bad(f"if {what}Rate is set, {what}Burst must also be set")
    if rate == 0 and burst != 0:
        raise _bad(f"if {what}Burst is set, {what}Rate must also be set")
    if burst // 8 >= 0xFFFFFFFF:
        raise _bad(f"{what}Burst cannot be more than 4GB")
    if rate and rate < 8:
        raise _bad(f"{what}Rate must be at least 8 bits/s")
    if rate and tc.tbf_params(rate // 8, burst // 8)[0] > 0xFFFFFFFF:
        raise _bad(f"{what}Burst {burst} is too large for {what}Rate {rate} (more than ~4.5 min of traffic)")


def parse_config(req: Request) -> Limits:
    c = req.config
    entry = c if any(k in c for k in _KEYS) else req.runtime_config.get("bandwidth")
    if entry is None:
        return Limits()
    if not isinstance(entry, dict):
        raise _bad("runtimeConfig.bandwidth must be an object")
    for key in ("shapedSubnets", "unshapedSubnets"):
        if entry.get(key):
            raise _bad(f"{key} is not supported (all of the container's traffic is shaped)")
    values = {}
    for key in _KEYS:
        v = entry.get(key, 0)
        if v is None:
            v = 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise _bad(f"{key} must be a non-negative integer, got {v!r}")
        values[key] = v
    limits = Limits(values["ingressRate"], values["ingressBurst"], values["egressRate"], values["egressBurst"])
    _rate_and_burst(limits.ingress_rate, limits.ingress_burst, "ingress")
    _rate_and_burst(limits.egress_rate, limits.egress_burst, "egress")
    return limits


def ifb_name(network: str, container_id: str) -> str:
    """The reference's name: prefix + sha512(network + containerID), 15 chars."""
    import hashlib  # ~2.5 ms (OpenSSL): paid only when there is an ifb to name

    digest = hashlib.sha512((network + container_id).encode()).hexdigest()
    return IFB_PREFIX + digest[: IFNAME_MAX - len(IFB_PREFIX)]


# --- kernel -------------------------------------------------------------------
def host_interface(host: Netlink, prev: dict, ifname: str, netns_fd: int):
    """The host-side veth of the container's ``ifname``: its peer ifindex,
    looked up in our netns, must be an interface prevResult lists without a
    sandbox."""
    with netns.entered(netns_fd):
        cont = Netlink()
    with cont:
        link = cont.link(ifname)
    if link is None:
        raise CNIError(UNKNOWN_CONTAINER, f"bandwidth: no interface {ifname!r} in the container")
    if link.kind != "veth" or not link.peer_index:
        raise _bad(f"container interface {ifname} is not a veth: cannot find its host side")
    peer = host.link_by_index(link.peer_index)
    names = {i.get("name") for i in (prev.get("interfaces") or []) if not i.get("sandbox")}
    if peer is None or peer.name not in names:
        raise _bad(f"no veth peer of container interface {ifname} among prevResult's host interfaces")
    return peer


def undo(host: Netlink, record: dict) -> None:
    """Remove what ``record`` says ADD made; each part only if it is still
    there and still ours."""
    if record.get("ifb"):
        ifb = host.link(record["ifb"])
        if ifb is not None and ifb.kind == "ifb":
            host.delete_link(ifb.index)
    veth = host.link(record.get("hostVeth", "")) if record.get("hostVeth") else None
    if veth is None or veth.index != record.get("hostIndex"):
        return  # gone with the container (or a different device by now)
    have = tc.qdiscs(host, veth.index)
    if record.get("ingress") and any(q["kind"] == "tbf" and q["parent"] == tc.TC_H_ROOT for q in have):
        tc.delete_qdisc(host, veth.index, tc.TC_H_ROOT)
    if record.get("egress") and any(q["kind"] == "ingress" for q in have):
        tc.delete_qdisc(host, veth.index, tc.TC_H_INGRESS, tc.INGRESS_HANDLE)


def _kernel(what: str, e: Exception) -> CNIError:
    return CNIError(KERNEL_FAILURE, f"bandwidth: {what}: {e}")


def apply(host: Netlink, limits: Limits, record: dict, veth) -> dict | None:
    """Make the qdiscs (and ifb); returns the ifb's result interface, if any."""
    if limits.ingress:
        try:
            tc.add_tbf(host, veth.index, limits.ingress_rate // 8, limits.ingress_burst // 8)
        except NetlinkError as e:
            if e.errno == errno.EEXIST:
                record["ingress"] = None  # not ours: leave it to its owner
            raise _kernel(f"adding tbf qdisc on {veth.name}", e)
    if not limits.egress:
        return None
    name = record["ifb"]
    try:
        host.create_ifb(name, veth.mtu, veth.txqlen or None)
    except NetlinkError as e:
        if e.errno == errno.EEXIST:
            record["ifb"] = ""
            raise CNIError(LINK_EXISTS, f"bandwidth: device {name} already exists") from None
        raise _kernel(f"creating ifb {name}", e)
    ifb = host.link(name)
    try:
        host.set_link(ifb.index, up=True)
        tc.add_tbf(host, ifb.index, limits.egress_rate // 8, limits.egress_burst // 8)
    except NetlinkError as e:
        raise _kernel(f"shaping on {name}", e)
    try:
        tc.add_ingress(host, veth.index)
    except NetlinkError as e:
        if e.errno == errno.EEXIST:
            record["egress"] = None
        raise _kernel(f"adding ingress qdisc on {veth.name}", e)
    try:
        tc.add_redirect(host, veth.index, ifb.index)
    except NetlinkError as e:
        raise _kernel(f"redirecting {veth.name} to {name}", e)
    return {"name": name, "mac": ifb.mac}


# --- CNI commands ---------------------------------------------------------------
def _store(req: Request) -> RecordStore:
    return RecordStore("bandwidth", req.config["name"])


def add(req: Request) -> dict:
    limits = parse_config(req)
    if not (limits.ingress or limits.egress):
        return req.prev_result or {}
    prev = req.require_prev_result("bandwidth")
    store = _store(req)
    fd = netns.open_netns(req.netns)
    try:
        with Netlink() as host:
            veth = host_interface(host, prev, req.ifname, fd)
            old = store.load(req.container_id, req.ifname)
            if old is not None:  # ADD again without DEL: start from scratch
                undo(host, old)
            record = {
                "containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
                "hostVeth": veth.name, "hostIndex": veth.index,
                "ifb": ifb_name(req.config["name"], req.container_id) if limits.egress else "",
                "ingress": [limits.ingress_rate, limits.ingress_burst] if limits.ingress else None,
                "egress": [limits.egress_rate, limits.egress_burst] if limits.egress else None,
            }
            store.save(req.container_id, req.ifname, record)
            try:
                ifb = apply(host, limits, record, veth)
            except BaseException:
                undo(host, record)
                store.remove(req.container_id, req.ifname)
                raise
    finally:
        os.close(fd)
    result = dict(prev)
    if ifb is not None:
        result["interfaces"] = list(prev.get("interfaces") or []) + [ifb]
    return result


def delete(req: Request) -> None:
    store = _store(req)
    record = store.load(req.container_id, req.ifname)
    if record is None:
        # No record (an older version, a lost state dir): the ifb has a
        # name we can derive; qdiscs on the veth go with the veth.
        record = {"ifb": ifb_name(req.config["name"], req.container_id)}
    with Netlink() as host:
        undo(host, record)
    store.remove(req.container_id, req.ifname)


def _check_tbf(host: Netlink, link, rate_bits: int, burst_bits: int) -> None:
    rate, burst = rate_bits // 8, burst_bits // 8
    buffer, limit = tc.tbf_params(rate, burst)
    tbf = [q for q in tc.qdiscs(host, link.index) if q["kind"] == "tbf" and q["parent"] == tc.TC_H_ROOT]
    if not tbf:
        raise CNIError(CHECK_FAILED, f"bandwidth: no tbf qdisc on {link.name}")
    q = tbf[0]
    if (q.get("rate"), q.get("buffer"), q.get("limit")) != (rate, buffer, limit):
        raise CNIError(CHECK_FAILED, f"bandwidth: tbf on {link.name} has rate {q.get('rate')} B/s, buffer "
                       f"{q.get('buffer')}, limit {q.get('limit')}; expected {rate}, {buffer}, {limit}")


def check(req: Request) -> None:
    limits = parse_config(req)
    prev = req.prev_result
    if prev is None:
        raise _bad("must be called as a chained plugin (no prevResult)")
    if not (limits.ingress or limits.egress):
        return
    fd = netns.open_netns(req.netns, UNKNOWN_CONTAINER)
    try:
        with Netlink() as host:
            veth = host_interface(host, prev, req.ifname, fd)
            if limits.ingress:
                _check_tbf(host, veth, limits.ingress_rate, limits.ingress_burst)
            if limits.egress:
                name = ifb_name(req.config["name"], req.container_id)
                ifb = host.link(name)
                if ifb is None or ifb.kind != "ifb":
                    raise CNIError(CHECK_FAILED, f"bandwidth: ifb device {name} is missing")
                if not ifb.up:
                    raise CNIError(CHECK_FAILED, f"bandwidth: ifb device {name} is down")
                _check_tbf(host, ifb, limits.egress_rate, limits.egress_burst)
                if ifb.index not in tc.redirects(host, veth.index):
                    raise CNIError(CHECK_FAILED, f"bandwidth: {veth.name} does not redirect to {name}")
    finally:
        os.close(fd)


def gc(req: Request) -> None:
    """Undo every recorded attachment not in valid-attachments."""
    with Netlink() as host:
        _store(req).collect(req.config, lambda record: undo(host, record))
