"""Traffic control over rtnetlink, on netlink.Netlink's socket.

Only what the bandwidth plugin needs: a tbf qdisc at a device's root, the
ingress qdisc, a u32 match-all filter whose mirred action redirects to an
ifb device, and dumps of both to CHECK them.  Standard library only, like
netlink.py: pyroute2 would cost ~110 ms of import on every container start.

Times are in the kernel's psched ticks: 64 ns each on every kernel since
2.6.x (PSCHED_SHIFT 6, /proc/net/psched reads 1000 / 64 / 1000000).
"""
import errno
import _socket as socket  # not `socket`: it imports selectors and enum at start-up
import struct

from .netlink import F_CREATE, F_DUMP, F_EXCL, Netlink, NetlinkError, cstr, attr, attr_str, nested, parse_attrs

RTM_NEWQDISC, RTM_DELQDISC, RTM_GETQDISC = 36, 37, 38
RTM_NEWTFILTER, RTM_DELTFILTER, RTM_GETTFILTER = 44, 45, 46

TC_H_ROOT, TC_H_INGRESS = 0xFFFFFFFF, 0xFFFFFFF1
TBF_HANDLE, INGRESS_HANDLE = 0x00010000, 0xFFFF0000
TCA_KIND, TCA_OPTIONS = 1, 2
TCA_TBF_PARMS, TCA_TBF_RATE64 = 1, 4
TC_LINKLAYER_ETHERNET = 1
TCA_U32_SEL, TCA_U32_ACT = 5, 7
TC_U32_TERMINAL = 1
TCA_ACT_KIND, TCA_ACT_OPTIONS = 1, 2
TCA_MIRRED_PARMS = 2
TCA_EGRESS_REDIR, TC_ACT_STOLEN = 1, 4
ETH_P_ALL = 0x0003

TICKS_PER_USEC = 1000 / 64      # psched ticks per microsecond
TBF_LATENCY_USEC = 25_000       # the reference's queue latency for tbf limit

_TCMSG = struct.Struct("=BxxxiIII")       # family, ifindex, handle, parent, info
_RATESPEC = struct.Struct("=BBHhHI")      # cell_log, linklayer, overhead, cell_align, mpu, rate
_TBF_QOPT = struct.Struct("=12s12sIII")   # rate, peakrate, limit, buffer, mtu
_U32_SEL = struct.Struct("=BBBxHHhhI")    # flags, offshift, nkeys, offmask, off, offoff, hoff, hmask
_U32_KEY = struct.Struct("=IIii")         # mask, val, off, offmask
_MIRRED = struct.Struct("=IIiiiiI")       # tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex


U32_MAX = 0xFFFFFFFF
U64_MAX = 0xFFFFFFFFFFFFFFFF


def tbf_params(rate_bytes: int, burst_bytes: int) -> tuple[int, int]:
    """(buffer in ticks, limit in bytes) for a rate in bytes/s and a burst in
    bytes, computed as the reference plugin does, each capped at the 32 bits
    the kernel's tbf holds (where the reference's numbers wrap around): the
    bursts runtimes send for kubelet's bandwidth annotations (CRI-O: just
    under 4 GiB) would otherwise not fit at all."""
    buffer = int(int(burst_bytes * 1_000_000 / rate_bytes) * TICKS_PER_USEC)  # whole usecs first, as it does
    limit = int(rate_bytes * TBF_LATENCY_USEC / 1_000_000) + burst_bytes
    return min(buffer, U32_MAX), min(limit, U32_MAX)


def _tcmsg(ifindex: int, handle: int = 0, parent: int = 0, info: int = 0) -> bytes:
    return _TCMSG.pack(socket.AF_UNSPEC, ifindex, handle, parent, info)


def add_tbf(nl: Netlink, ifindex: int, rate_bytes: int, burst_bytes: int) -> None:
    """`tc qdisc add dev X root handle 1: tbf rate R burst B latency 25ms`."""
    buffer, limit = tbf_params(rate_bytes, burst_bytes)
    rate = _RATESPEC.pack(0, TC_LINKLAYER_ETHERNET, 0, 0, 0, min(rate_bytes, 0xFFFFFFFF))
    qopt = _TBF_QOPT.pack(rate, bytes(_RATESPEC.size), limit, buffer, 0)
    opts = [attr(TCA_TBF_PARMS, qopt)]
    if rate_bytes > 0xFFFFFFFF:
        opts.append(attr(TCA_TBF_RATE64, struct.pack("=Q", rate_bytes)))
    body = _tcmsg(ifindex, TBF_HANDLE, TC_H_ROOT) + attr_str(TCA_KIND, "tbf") + nested(TCA_OPTIONS, *opts)
    nl.request(RTM_NEWQDISC, F_CREATE | F_EXCL, body)


def add_ingress(nl: Netlink, ifindex: int) -> None:
    """`tc qdisc add dev X handle ffff: ingress`."""
    nl.request(RTM_NEWQDISC, F_CREATE | F_EXCL,
               _tcmsg(ifindex, INGRESS_HANDLE, TC_H_INGRESS) + attr_str(TCA_KIND, "ingress"))


def add_redirect(nl: Netlink, ifindex: int, target_ifindex: int, prio: int = 1) -> None:
    """`tc filter add dev X parent ffff: protocol all prio 1 u32 match u32 0 0
    action mirred egress redirect dev TARGET`."""
    sel = _U32_SEL.pack(TC_U32_TERMINAL, 0, 1, 0, 0, 0, 0, 0) + _U32_KEY.pack(0, 0, 0, 0)
    mirred = _MIRRED.pack(0, 0, TC_ACT_STOLEN, 0, 0, TCA_EGRESS_REDIR, target_ifindex)
    action = nested(1, attr_str(TCA_ACT_KIND, "mirred"),
                    nested(TCA_ACT_OPTIONS, attr(TCA_MIRRED_PARMS, mirred)))
    info = (prio << 16) | socket.htons(ETH_P_ALL)
    body = _tcmsg(ifindex, 0, INGRESS_HANDLE, info) + attr_str(TCA_KIND, "u32") + nested(
        TCA_OPTIONS, attr(TCA_U32_SEL, sel), nested(TCA_U32_ACT, action))
    nl.request(RTM_NEWTFILTER, F_CREATE | F_EXCL, body)


def delete_qdisc(nl: Netlink, ifindex: int, parent: int, handle: int = 0) -> bool:
    """Delete the qdisc at ``parent``; False when there was none (or no device)."""
    try:
        nl.request(RTM_DELQDISC, 0, _tcmsg(ifindex, handle, parent))
        return True
    except NetlinkError as e:
        if e.errno in (errno.ENOENT, errno.ENODEV, errno.EINVAL):
            return False
        raise


def qdiscs(nl: Netlink, ifindex: int) -> list[dict]:
    """The device's qdiscs as {kind, handle, parent, options (raw attrs)};
    a tbf's also carry rate (bytes/s), buffer (ticks) and limit (bytes)."""
    out = []
    for payload in nl.request(RTM_GETQDISC, F_DUMP, _tcmsg(ifindex)):
        _, index, handle, parent, _ = _TCMSG.unpack_from(payload)
        if index != ifindex:
            continue
        attrs = parse_attrs(payload, _TCMSG.size)
        q = {"kind": cstr(attrs.get(TCA_KIND, b"")), "handle": handle, "parent": parent}
        if q["kind"] == "tbf":
            opts = parse_attrs(attrs.get(TCA_OPTIONS, b""))
            if TCA_TBF_PARMS in opts:
                rate, _, limit, buffer, _ = _TBF_QOPT.unpack_from(opts[TCA_TBF_PARMS])
                q["rate"] = _RATESPEC.unpack(rate)[5]
                q["buffer"], q["limit"] = buffer, limit
            if TCA_TBF_RATE64 in opts:
                q["rate"] = struct.unpack("=Q", opts[TCA_TBF_RATE64])[0]
        out.append(q)
    return out


def redirects(nl: Netlink, ifindex: int, parent: int = INGRESS_HANDLE) -> list[int]:
    """ifindexes that u32 filters under ``parent`` redirect to (mirred egress)."""
    out = []
    for payload in nl.request(RTM_GETTFILTER, F_DUMP, _tcmsg(ifindex, 0, parent)):
        attrs = parse_attrs(payload, _TCMSG.size)
        if cstr(attrs.get(TCA_KIND, b"")) != "u32":
            continue
        acts = parse_attrs(parse_attrs(attrs.get(TCA_OPTIONS, b"")).get(TCA_U32_ACT, b""))
        for act in acts.values():
            a = parse_attrs(act)
            if cstr(a.get(TCA_ACT_KIND, b"")) != "mirred":
                continue
            parms = parse_attrs(a.get(TCA_ACT_OPTIONS, b"")).get(TCA_MIRRED_PARMS)
            if parms and len(parms) >= _MIRRED.size:
                fields = _MIRRED.unpack_from(parms)
                if fields[5] == TCA_EGRESS_REDIR:
                    out.append(fields[6])
    return out
