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

config -> plan -> kernel: the plan is the record of what ADD will make
(host veth, ifb name, the limits), written before the kernel is touched;
DEL and GC undo it from the record, even with the container gone, removing
each part only while it is still there and still ours.  CHECK compares the
qdiscs with the limits.  tc messages are ours (kernel/tc.py), standard
library only.
"""
import errno

from .core.attachment import commit, release, replace, store_for
from .core.config import bad_config, fold_keys
from .core.errors import CNIError, LINK_EXISTS, UNKNOWN_CONTAINER, kernel_failure, require_same
from .core.plain import plain
from .core.request import Request
from .core.sandbox import Sandbox
from .kernel import tc
from .kernel.netlink import Netlink, NetlinkError

PLUGIN = "bandwidth"
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


def _rate_and_burst(rate: int, burst: int, what: str) -> None:
    if burst == 0 and rate != 0:
        raise bad_config(PLUGIN, f"if {what}Rate is set, {what}Burst must also be set")
    if rate == 0 and burst != 0:
        raise bad_config(PLUGIN, f"if {what}Burst is set, {what}Rate must also be set")
    if burst // 8 >= tc.U32_MAX:
        raise bad_config(PLUGIN, f"{what}Burst cannot be more than 4GB")
    if rate and rate < 8:
        raise bad_config(PLUGIN, f"{what}Rate must be at least 8 bits/s")
    if rate // 8 > tc.U64_MAX:
        raise bad_config(PLUGIN, f"{what}Rate {rate} is more than the kernel's tbf can hold (2^64 bytes/s)")


def parse_config(req: Request) -> Limits:
    """Limits from the static config keys or, with none of those, from the
    ``bandwidth`` capability; key names are matched case-insensitively, as
    Go's JSON decoder does (containerd sends {"IngressRate": ...})."""
    c = fold_keys(req.config, _KEYS)
    entry = c if any(k in c for k in _KEYS) else req.runtime_config.get("bandwidth")
    if entry is None:
        return Limits()
    if not isinstance(entry, dict):
        raise bad_config(PLUGIN, "runtimeConfig.bandwidth must be an object")
    entry = fold_keys(entry, _KEYS)
    for key in ("shapedSubnets", "unshapedSubnets"):
        if entry.get(key):
            raise bad_config(PLUGIN, f"{key} is not supported (all of the container's traffic is shaped)")
    values = {}
    for key in _KEYS:
        v = entry.get(key, 0)
        if v is None:
            v = 0
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise bad_config(PLUGIN, f"{key} must be a non-negative integer, got {v!r}")
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


# --- plan ---------------------------------------------------------------------
def make_plan(limits: Limits, req: Request, veth, taken: set[str]) -> dict:
    """The record of what ADD makes for these limits on host veth ``veth``;
    ``taken`` are the link names already in use (an ifb of our name there
    is someone else's: refused before anything is made)."""
    ifb = ifb_name(req.network, req.container_id) if limits.egress else ""
    if ifb in taken:
        raise CNIError(LINK_EXISTS, f"bandwidth: device {ifb} already exists")
    return {
        "containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
        "hostVeth": veth.name, "hostIndex": veth.index,
        "ifb": ifb,
        "ingress": [limits.ingress_rate, limits.ingress_burst] if limits.ingress else None,
        "egress": [limits.egress_rate, limits.egress_burst] if limits.egress else None,
    }


def _tbf_differences(qdiscs: list[dict], name: str, rate_bits: int, burst_bits: int) -> list[str]:
    """How the root tbf among ``qdiscs`` differs from these limits."""
    rate, burst = rate_bits // 8, burst_bits // 8
    buffer, limit = tc.tbf_params(rate, burst)
    tbf = [q for q in qdiscs if q["kind"] == "tbf" and q["parent"] == tc.TC_H_ROOT]
    if not tbf:
        return [f"no tbf qdisc on {name}"]
    q = tbf[0]
    if (q.get("rate"), q.get("buffer"), q.get("limit")) != (rate, buffer, limit):
        return [f"tbf on {name} has rate {q.get('rate')} B/s, buffer {q.get('buffer')}, limit "
                f"{q.get('limit')}; expected {rate}, {buffer}, {limit}"]
    return []


# --- kernel -------------------------------------------------------------------
def host_interface(host: Netlink, prev: dict, ifname: str, sandbox: Sandbox):
    """The host-side veth of the container's ``ifname``: its peer ifindex,
    looked up in our netns, must be an interface prevResult lists without a
    sandbox."""
    link = sandbox.nl.link(ifname)
    if link is None:
        raise CNIError(UNKNOWN_CONTAINER, f"bandwidth: no interface {ifname!r} in the container")
    if link.kind != "veth" or not link.peer_index:
        raise bad_config(PLUGIN, f"container interface {ifname} is not a veth: cannot find its host side")
    peer = host.link_by_index(link.peer_index)
    names = {i.get("name") for i in (prev.get("interfaces") or []) if not i.get("sandbox")}
    if peer is None or peer.name not in names:
        raise bad_config(PLUGIN, f"no veth peer of container interface {ifname} among prevResult's host interfaces")
    return peer


def undo(host: Netlink, record: dict) -> None:
    """Remove what ``record`` says ADD made, each part only while it is
    still there and still ours: the ingress qdisc only if it redirects to
    our ifb, the root tbf only if it has our parameters, the ifb by name."""
    ifb = host.link(record["ifb"]) if record.get("ifb") else None
    if ifb is not None and ifb.kind != "ifb":
        ifb = None
    veth = host.link(record.get("hostVeth", "")) if record.get("hostVeth") else None
    if veth is not None and veth.index == record.get("hostIndex"):  # else gone with the container
        have = tc.qdiscs(host, veth.index)
        if ifb is not None and any(q["kind"] == "ingress" for q in have) \
                and ifb.index in tc.redirects(host, veth.index):
            tc.delete_qdisc(host, veth.index, tc.TC_H_INGRESS, tc.INGRESS_HANDLE)
        if record.get("ingress") and not _tbf_differences(have, veth.name, *record["ingress"]):
            tc.delete_qdisc(host, veth.index, tc.TC_H_ROOT)
    if ifb is not None:
        host.delete_link(ifb.index)


def apply(host: Netlink, plan: dict, veth) -> dict | None:
    """Make the qdiscs (and ifb); returns the ifb's result interface, if any."""
    if plan["ingress"]:
        rate, burst = plan["ingress"]
        try:
            tc.add_tbf(host, veth.index, rate // 8, burst // 8)
        except NetlinkError as e:
            raise kernel_failure(PLUGIN, f"adding tbf qdisc on {veth.name}", e)
    if not plan["egress"]:
        return None
    name, (rate, burst) = plan["ifb"], plan["egress"]
    try:
        host.create_ifb(name, veth.mtu, veth.txqlen or None)
    except NetlinkError as e:
        if e.errno == errno.EEXIST:
            raise CNIError(LINK_EXISTS, f"bandwidth: device {name} already exists") from None
        raise kernel_failure(PLUGIN, f"creating ifb {name}", e)
    ifb = host.link(name)
    steps = ((f"shaping on {name}", lambda: (host.set_link(ifb.index, up=True),
                                             tc.add_tbf(host, ifb.index, rate // 8, burst // 8))),
             (f"adding ingress qdisc on {veth.name}", lambda: tc.add_ingress(host, veth.index)),
             (f"redirecting {veth.name} to {name}", lambda: tc.add_redirect(host, veth.index, ifb.index)))
    for what, step in steps:
        try:
            step()
        except NetlinkError as e:
            raise kernel_failure(PLUGIN, what, e)
    return {"name": name, "mac": ifb.mac}


def differences(limits: Limits, req: Request, host: Netlink, veth) -> list[str]:
    out = []
    if limits.ingress:
        out += _tbf_differences(tc.qdiscs(host, veth.index), veth.name, limits.ingress_rate, limits.ingress_burst)
    if limits.egress:
        name = ifb_name(req.network, req.container_id)
        ifb = host.link(name)
        if ifb is None or ifb.kind != "ifb":
            return out + [f"ifb device {name} is missing"]
        if not ifb.up:
            return out + [f"ifb device {name} is down"]
        out += _tbf_differences(tc.qdiscs(host, ifb.index), name, limits.egress_rate, limits.egress_burst)
        if ifb.index not in tc.redirects(host, veth.index):
            out.append(f"{veth.name} does not redirect to {name}")
    return out


# --- CNI commands ---------------------------------------------------------------
def add(req: Request) -> dict:
    limits = parse_config(req)
    if not (limits.ingress or limits.egress):
        return req.prev_result or {}
    prev = req.require_prev_result(PLUGIN)
    store = store_for(req, PLUGIN)
    with Sandbox(req.netns) as sandbox, Netlink() as host:
        veth = host_interface(host, prev, req.ifname, sandbox)
        replace(store, req, lambda old: undo(host, old))
        ifb = ifb_name(req.network, req.container_id)
        plan = make_plan(limits, req, veth, {ifb} if host.link(ifb) is not None else set())
        ifb = commit(store, req, plan, lambda: apply(host, plan, veth), lambda record: undo(host, record))
    result = dict(prev)
    if ifb is not None:
        result["interfaces"] = list(prev.get("interfaces") or []) + [ifb]
    return result


def _record_from_request(req: Request) -> dict:
    """No record (an older version, a lost state dir): the ifb has a name
    we can derive; qdiscs on the veth go with the veth."""
    return {"ifb": ifb_name(req.network, req.container_id)}


def delete(req: Request) -> None:
    with Netlink() as host:
        release(store_for(req, PLUGIN), req, lambda record: undo(host, record), fallback=_record_from_request)


def check(req: Request) -> None:
    limits = parse_config(req)
    prev = req.prev_result
    if prev is None:
        raise bad_config(PLUGIN, "must be called as a chained plugin (no prevResult)")
    if not (limits.ingress or limits.egress):
        return
    with Sandbox(req.netns, UNKNOWN_CONTAINER) as sandbox, Netlink() as host:
        require_same(PLUGIN, differences(limits, req, host, host_interface(host, prev, req.ifname, sandbox)))


def gc(req: Request) -> None:
    """Undo every recorded attachment not in valid-attachments."""
    with Netlink() as host:
        store_for(req, PLUGIN).collect(req.config, lambda record: undo(host, record))
