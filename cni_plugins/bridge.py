"""bridge: connect a container to a Linux bridge on the host with a veth pair.

Config options are the reference plugin's.  Data flows config -> plan ->
kernel: ``parse_config`` validates, ``make_plan`` turns config and the IPAM
result into plain data with no side effects, ``apply_plan`` makes it real and
``undo`` removes an attachment using only our own record of it.  Masquerade
and MAC anti-spoofing are set elements in our nftables tables (see nft.py).
"""
import _thread
import errno
import ipaddress
import os

from .core import delegate as ipam
from .kernel import netlink, netns, nft
from .bridge_nft import masq_elements, spoofchk_elements
from .core.errors import (CHECK_FAILED, CNIError, INVALID_CONFIG, KERNEL_FAILURE, LINK_EXISTS,
                     UNKNOWN_CONTAINER)
from .kernel.netlink import Netlink, NetlinkError
from .core.plain import plain
from .core.request import Request
from .core.records import RecordStore


# --- config -------------------------------------------------------------------
@plain
class BridgeConfig:
    network: str
    bridge: str = "cni0"
    is_gateway: bool = False
    is_default_gateway: bool = False
    force_address: bool = False
    ip_masq: bool = False
    mtu: int = 0
    hairpin: bool = False
    promisc: bool = False
    vlan: int = 0
    vlan_trunk: list[tuple[int, int]] = []
    preserve_default_vlan: bool = True
    macspoofchk: bool = False
    enable_dad: bool = False
    disable_container_interface: bool = False
    port_isolation: bool = False
    mac: str = ""
    dns: dict = {}


def _typed(conf: dict, key: str, kind, default):
    value = conf.get(key, default)
    if value is None:
        return default
    if kind is int and isinstance(value, bool) or not isinstance(value, kind):
        raise CNIError(INVALID_CONFIG, f"bridge: {key!r} must be {kind.__name__}, got {value!r}")
    return value


def parse_config(req: Request) -> BridgeConfig:
    c = req.config
    cfg = BridgeConfig(
        network=c["name"],
        bridge=_typed(c, "bridge", str, "cni0"),
        is_gateway=_typed(c, "isGateway", bool, False),
        is_default_gateway=_typed(c, "isDefaultGateway", bool, False),
        force_address=_typed(c, "forceAddress", bool, False),
        ip_masq=_typed(c, "ipMasq", bool, False),
        mtu=_typed(c, "mtu", int, 0),
        hairpin=_typed(c, "hairpinMode", bool, False),
        promisc=_typed(c, "promiscMode", bool, False),
        vlan=_typed(c, "vlan", int, 0),
        preserve_default_vlan=_typed(c, "preserveDefaultVlan", bool, True),
        macspoofchk=_typed(c, "macspoofchk", bool, False),
        enable_dad=_typed(c, "enabledad", bool, False),
        disable_container_interface=_typed(c, "disableContainerInterface", bool, False),
        port_isolation=_typed(c, "portIsolation", bool, False),
        dns=_typed(c, "dns", dict, {}),
    )
    backend = _typed(c, "ipMasqBackend", str, "nftables")
    if backend not in ("nftables", "iptables"):
        raise CNIError(INVALID_CONFIG, f"bridge: unknown ipMasqBackend {backend!r}")
    if not cfg.bridge or len(cfg.bridge) > 15:
        raise CNIError(INVALID_CONFIG, f"bridge: invalid bridge name {cfg.bridge!r}")
    if cfg.is_default_gateway:
        cfg.is_gateway = True  # as the reference: a default gateway is a gateway
    if cfg.mtu and not 68 <= cfg.mtu <= 65535:
        raise CNIError(INVALID_CONFIG, f"bridge: invalid mtu {cfg.mtu}")
    if not 0 <= cfg.vlan <= 4094:
        raise CNIError(INVALID_CONFIG, f"bridge: invalid vlan id {cfg.vlan}")
    for trunk in _typed(c, "vlanTrunk", list, []):
        if not isinstance(trunk, dict):
            raise CNIError(INVALID_CONFIG, "bridge: vlanTrunk entries must be objects")
        low, high = trunk.get("minID", trunk.get("id")), trunk.get("maxID", trunk.get("id"))
        if not all(isinstance(v, int) and 1 <= v <= 4094 for v in (low, high)) or low > high:
            raise CNIError(INVALID_CONFIG, f"bridge: invalid vlanTrunk entry {trunk}")
        cfg.vlan_trunk.append((low, high))
    if cfg.vlan and cfg.vlan_trunk:
        raise CNIError(INVALID_CONFIG, "bridge: cannot set vlan and vlanTrunk at the same time")
    cfg.mac = str(req.runtime_config.get("mac") or req.args.get("MAC") or "")
    if cfg.mac:
        try:
            raw = netlink.mac_bytes(cfg.mac)
        except ValueError:
            raw = b""
        if len(raw) != 6 or raw[0] & 1:
            raise CNIError(INVALID_CONFIG, f"bridge: invalid unicast MAC {cfg.mac!r}")
        cfg.mac = netlink.mac_str(raw)
    ipam.ipam_type(req)
    return cfg


# --- plan ---------------------------------------------------------------------
@plain
class Plan:
    bridge: str
    vlan_filtering: bool
    host_veth: str
    container_ifname: str
    mac: str
    addresses: list            # container interface addresses (ip_interface)
    routes: list[dict]         # {dst: ip_network, gw: ip_address|None, mtu/advmss/priority}
    gateways: list             # addresses for the bridge (ip_interface)
    nft_elements: list
    result: dict               # internal result, interfaces filled in by apply


def random_mac() -> str:
    raw = bytearray(os.urandom(6))
    raw[0] = (raw[0] & 0xFE) | 0x02  # unicast, locally administered
    return netlink.mac_str(bytes(raw))


def make_plan(cfg: BridgeConfig, req: Request, ipam_result: dict, host_veth: str, mac: str) -> Plan:
    ips, gateways, elements, gw_by_family = [], [], [], {}
    for ip in ipam_result.get("ips") or []:
        iface = ipaddress.ip_interface(ip["address"])
        gw = ip.get("gateway")
        if cfg.is_gateway and not gw:
            gw = str(iface.network.network_address + 1)  # the reference's default
        entry = {"address": str(iface), "interface": 2}
        if gw:
            entry["gateway"] = gw
            gw_by_family.setdefault(iface.version, ipaddress.ip_address(gw))
            if cfg.is_gateway:
                gateways.append(ipaddress.ip_interface((gw, iface.network.prefixlen)))
        ips.append(entry)
        if cfg.ip_masq:
            elements += masq_elements(str(iface.ip), str(iface.network))
    if cfg.macspoofchk:
        elements += spoofchk_elements(host_veth, mac)

    result_routes = [dict(r) for r in ipam_result.get("routes") or []]
    if cfg.is_default_gateway:
        for family, default in ((4, "0.0.0.0/0"), (6, "::/0")):
            if family in gw_by_family and not any(
                ipaddress.ip_network(r["dst"]).prefixlen == 0
                and ipaddress.ip_network(r["dst"]).version == family for r in result_routes
            ):
                result_routes.append({"dst": default, "gw": str(gw_by_family[family])})
    routes = []
    for r in result_routes:
        dst = ipaddress.ip_network(r["dst"], strict=False)
        gw = ipaddress.ip_address(r["gw"]) if r.get("gw") else gw_by_family.get(dst.version)
        routes.append({"dst": dst, "gw": gw, "mtu": r.get("mtu", 0), "advmss": r.get("advmss", 0),
                       "priority": r.get("priority", 0)})

    result = {"ips": ips, "routes": result_routes, "dns": cfg.dns or ipam_result.get("dns") or {}}
    return Plan(
        bridge=cfg.bridge, vlan_filtering=bool(cfg.vlan or cfg.vlan_trunk), host_veth=host_veth,
        container_ifname=req.ifname, mac=mac,
        addresses=[ipaddress.ip_interface(i["address"]) for i in ips],
        routes=routes, gateways=gateways, nft_elements=elements, result=result,
    )


# --- kernel -------------------------------------------------------------------
def _kernel(what: str, e: Exception) -> CNIError:
    return CNIError(KERNEL_FAILURE, f"bridge: {what}: {e}")


def ensure_bridge(nl: Netlink, cfg: BridgeConfig, vlan_filtering: bool) -> netlink.Link:
    link = nl.link(cfg.bridge)
    if link is None:
        try:
            nl.create_bridge(cfg.bridge, cfg.mtu, vlan_filtering, mac=random_mac())
        except NetlinkError as e:
            if e.errno == errno.EOPNOTSUPP and vlan_filtering:
                raise CNIError(KERNEL_FAILURE, "bridge: vlan/vlanTrunk need bridge VLAN filtering, "
                               "which this kernel lacks (CONFIG_BRIDGE_VLAN_FILTERING)") from None
            if e.errno != errno.EEXIST:  # a concurrent ADD may have made it first
                raise _kernel(f"creating bridge {cfg.bridge}", e)
        link = nl.link(cfg.bridge)
    if link.kind != "bridge":
        raise CNIError(INVALID_CONFIG, f"bridge: {cfg.bridge!r} already exists and is not a bridge")
    if vlan_filtering:
        nl.set_bridge_vlan_filtering(link.index, True)
    if not link.up or cfg.promisc:
        nl.set_link(link.index, up=True, promisc=True if cfg.promisc else None)
    return link


def _set_gateways(nl: Netlink, br: netlink.Link, plan: Plan, force: bool) -> None:
    existing = [a for i, a in nl.addresses(br.index)]
    for gw in plan.gateways:
        if gw in existing:
            continue
        clashing = [a for a in existing if a.version == gw.version and a.network == gw.network
                    and not a.ip.is_link_local]
        for old in clashing:
            if not force:
                raise CNIError(INVALID_CONFIG, f"bridge: {plan.bridge} already has {old} in the "
                               f"network of gateway {gw}; set forceAddress to replace it")
            nl.delete_address(br.index, old)
        try:
            nl.add_address(br.index, gw, nodad=True)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:  # a concurrent ADD added the same gateway
                raise _kernel(f"adding gateway {gw}", e)
        netns.write_sysctl("net.ipv4.ip_forward" if gw.version == 4 else "net.ipv6.conf.all.forwarding", "1")


def apply_plan(cfg: BridgeConfig, plan: Plan, host: Netlink, netns_fd: int, netns_path: str) -> None:
    br = ensure_bridge(host, cfg, plan.vlan_filtering)
    with netns.entered(netns_fd):
        cont = Netlink()
    try:
        if cont.link(plan.container_ifname) is not None:
            raise CNIError(LINK_EXISTS, f"bridge: container already has an interface named {plan.container_ifname!r}")
        try:
            host.create_veth(plan.host_veth, plan.container_ifname, netns_fd, cfg.mtu, plan.mac)
        except NetlinkError as e:
            raise _kernel(f"creating veth pair {plan.host_veth}/{plan.container_ifname}", e)
        veth = host.link(plan.host_veth)
        try:
            host.set_link(veth.index, master=br.index)
            host.set_bridge_port(veth.index, hairpin=cfg.hairpin or None, isolated=cfg.port_isolation or None)
            if cfg.vlan:
                host.bridge_vlan(veth.index, cfg.vlan, pvid=True, untagged=True)
                if not cfg.preserve_default_vlan:
                    host.bridge_vlan(veth.index, 1, add=False)
            for low, high in cfg.vlan_trunk:
                host.bridge_vlan(veth.index, low, last_vid=high)
            host.set_link(veth.index, up=True)
            if plan.gateways:
                if cfg.vlan:
                    # the bridge itself joins the VLAN so its gateway address serves it
                    host.bridge_vlan(br.index, cfg.vlan, pvid=True, untagged=True, self_=True)
                _set_gateways(host, br, plan, cfg.force_address)
        except NetlinkError as e:
            raise _kernel(f"attaching {plan.host_veth} to {plan.bridge}", e)

        cont_link = cont.link(plan.container_ifname)
        if not cfg.disable_container_interface:
            with netns.entered(netns_fd):
                for fam in {a.version for a in plan.addresses}:
                    if fam == 6 and not cfg.enable_dad:
                        netns.write_sysctl(f"net.ipv6.conf.{plan.container_ifname}.accept_dad", "0")
            try:
                for addr in plan.addresses:
                    cont.add_address(cont_link.index, addr, nodad=not cfg.enable_dad)
                cont.set_link(cont_link.index, up=True)
                for r in plan.routes:
                    cont.add_route(r["dst"], r["gw"], cont_link.index, mtu=r["mtu"], advmss=r["advmss"],
                                   priority=r["priority"])
            except NetlinkError as e:
                raise _kernel(f"configuring {plan.container_ifname} in the container", e)
        nft.add_elements(plan.nft_elements)

        br = host.link(plan.bridge)
        plan.result["interfaces"] = [
            {"name": br.name, "mac": br.mac},
            {"name": veth.name, "mac": veth.mac},
            {"name": cont_link.name, "mac": cont_link.mac, "sandbox": netns_path},
        ]
    finally:
        cont.close()


def _in_background(fn, *args):
    """Start fn(*args) in a thread; return a wait() that re-raises its
    exception.  `_thread`, not `threading`: the latter costs ~5 ms to import
    on every container start."""
    done, failure = _thread.allocate_lock(), []
    done.acquire()

    def run():
        try:
            fn(*args)
        except BaseException as e:  # noqa: BLE001 - handed to wait()
            failure.append(e)
        finally:
            done.release()

    _thread.start_new_thread(run, ())

    def wait():
        done.acquire()
        if failure:
            raise failure[0]

    return wait


def _delete_veth(record: dict, netns_path: str) -> None:
    """Delete the attachment's veth pair from the host side.  Only a record
    that does not name our host veth (rebuilt from a prevResult without it)
    falls back to the container side: otherwise an interface of that name
    in the container is not ours (a failed ADD may have found it there)."""
    if record.get("hostVeth"):
        with Netlink() as host:
            veth = host.link(record["hostVeth"])
            if veth is not None and veth.kind == "veth":
                host.delete_link(veth.index)
        return
    if netns_path and os.path.exists(netns_path):
        fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            with netns.entered(fd):
                cont = Netlink()
            with cont:
                link = cont.link(record["ifname"])
                if link is not None and link.kind == "veth":
                    cont.delete_link(link.index)
        finally:
            os.close(fd)


def undo(record: dict, netns_path: str = "", also=None) -> None:
    """Remove an attachment's host-side state from our record of it; the
    container side goes with the veth (or is gone with its netns).  The
    kernel blocks ~15 ms tearing a veth down, so that runs in a thread while
    the set elements (and ``also``, e.g. the IPAM release) are removed."""
    wait = _in_background(_delete_veth, record, netns_path)
    try:
        if also is not None:
            also()
        nft.remove_elements(nft.from_record(record.get("nft", [])))
    finally:
        wait()


# --- CNI commands ---------------------------------------------------------------
def _store(cfg_or_req) -> RecordStore:
    name = cfg_or_req.network if isinstance(cfg_or_req, BridgeConfig) else cfg_or_req.config["name"]
    return RecordStore("bridge", name)


def add(req: Request) -> dict:
    cfg = parse_config(req)
    netns_fd = netns.open_netns(req.netns)
    store = _store(cfg)
    host = Netlink()
    record = None
    try:
        ipam_result = ipam.run(req, "ADD")
        try:
            for _ in range(8):
                host_veth = "veth" + os.urandom(4).hex()
                if host.link(host_veth) is None:
                    break
            plan = make_plan(cfg, req, ipam_result, host_veth, cfg.mac or random_mac())
            # Record before touching the kernel: a crash half-way still
            # leaves DEL and GC what they need to clean up.
            record = {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
                      "bridge": cfg.bridge, "hostVeth": host_veth, "nft": nft.to_record(plan.nft_elements)}
            store.save(req.container_id, req.ifname, record)
            apply_plan(cfg, plan, host, netns_fd, req.netns)
        except BaseException:
            if record is not None:
                undo(record, req.netns)
                store.remove(req.container_id, req.ifname)
            ipam.run(req, "DEL")
            raise
        return plan.result
    finally:
        host.close()
        os.close(netns_fd)


def delete(req: Request) -> None:
    store = _store(req)
    record = store.load(req.container_id, req.ifname)
    if record is None:
        record = _record_from_prev_result(req)
    undo(record, req.netns, also=lambda: ipam.run(req, "DEL"))
    store.remove(req.container_id, req.ifname)


def _record_from_prev_result(req: Request) -> dict:
    """Without our record (an attachment made by an older version, or a lost
    state dir), fall back to the runtime's cached result."""
    record = {"containerID": req.container_id, "ifname": req.ifname, "nft": []}
    prev = req.prev_result or {}
    interfaces = prev.get("interfaces") or []
    for iface in interfaces:
        if not iface.get("sandbox") and iface.get("name", "").startswith("veth"):
            record["hostVeth"] = iface["name"]
    if req.config.get("ipMasq"):
        for ip in prev.get("ips") or []:
            iface = ipaddress.ip_interface(ip["address"])
            record["nft"] += nft.to_record(masq_elements(str(iface.ip), str(iface.network)))
    return record


def check(req: Request) -> None:
    cfg = parse_config(req)
    prev = req.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "bridge: CHECK needs prevResult")
    ipam.run(req, "CHECK")
    netns_fd = netns.open_netns(req.netns, UNKNOWN_CONTAINER)
    try:
        interfaces = prev.get("interfaces") or []
        container = next((i for i in interfaces if i.get("sandbox") and i.get("name") == req.ifname), None)
        if container is None:
            raise CNIError(CHECK_FAILED, f"bridge: prevResult lists no interface {req.ifname!r} in a sandbox")
        with netns.entered(netns_fd):
            cont = Netlink()
        with cont:
            link = cont.link(req.ifname)
            if link is None:
                raise CNIError(CHECK_FAILED, f"bridge: interface {req.ifname!r} is missing in the container")
            if container.get("mac") and container["mac"].lower() != link.mac:
                raise CNIError(CHECK_FAILED, f"bridge: {req.ifname} has MAC {link.mac}, expected {container['mac']}")
            have = {a for _, a in cont.addresses(link.index)}
            for ip in prev.get("ips") or []:
                if ipaddress.ip_interface(ip["address"]) not in have:
                    raise CNIError(CHECK_FAILED, f"bridge: address {ip['address']} is missing on {req.ifname}")
            routes = cont.routes()
            for r in prev.get("routes") or []:
                dst = ipaddress.ip_network(r["dst"], strict=False)
                if not any(k["dst"] == dst and (not r.get("gw") or k["gw"] == ipaddress.ip_address(r["gw"]))
                           for k in routes):
                    raise CNIError(CHECK_FAILED, f"bridge: route {r} is missing in the container")
        with Netlink() as host:
            br = host.link(cfg.bridge)
            if br is None or br.kind != "bridge":
                raise CNIError(CHECK_FAILED, f"bridge: bridge {cfg.bridge!r} is missing")
            veths = [i["name"] for i in interfaces if not i.get("sandbox") and i.get("name") != cfg.bridge]
            for name in veths:
                veth = host.link(name)
                if veth is None or veth.master != br.index:
                    raise CNIError(CHECK_FAILED, f"bridge: host veth {name!r} is missing or not on {cfg.bridge}")
    finally:
        os.close(netns_fd)


def gc(req: Request) -> None:
    """Remove host-side state of every attachment not in valid-attachments,
    then let IPAM release their addresses."""
    _store(req).collect(req.config, undo)
    ipam.run(req, "GC")


def status(req: Request) -> None:
    ipam.run(req, "STATUS")
