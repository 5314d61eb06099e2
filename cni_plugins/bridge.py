"""bridge: connect a container to a Linux bridge on the host with a veth pair.

Config options are the reference plugin's.  Data flows config -> plan ->
kernel: ``parse_config`` validates, ``make_plan`` turns config and the IPAM
result into plain data with no side effects, ``apply_plan`` makes it real and
``undo`` removes an attachment using only our own record of it.  CHECK
derives what prevResult promises (``expected_state``, pure) and lists how
the kernel differs.  Masquerade and MAC anti-spoofing are set elements in
our nftables tables, declared below.
"""
import _thread
import errno
import ipaddress
import os

from .core import delegate, names, version
from .core.attachment import commit, release, require_new, store_for
from .core.config import bad_config, typed, unicast_mac
from .core.errors import CHECK_FAILED, CNIError, INVALID_CONFIG, KERNEL_FAILURE, LINK_EXISTS, UNKNOWN_CONTAINER, \
    kernel_failure, require_same
from .core.plain import plain
from .core.request import Request
from .core.sandbox import Sandbox
from .kernel import netlink, netns, nft
from .kernel.netlink import Netlink, NetlinkError
from .kernel.nft import RETURN, concat, match, meta, payload, prefix

PLUGIN = "bridge"


# --- firewall: static rules, one set element per container ------------------------
def _masq_rules(ip: str, saddr_set: str, exempt_set: str, multicast: str):
    src, dst = payload(ip, "saddr"), payload(ip, "daddr")
    return [
        # traffic within the exempt network (own subnet; overlay: cluster CIDR) keeps its source
        [match(concat(src, dst), f"@{exempt_set}"), RETURN],
        [match(dst, prefix(multicast)), RETURN],
        [match(src, f"@{saddr_set}"), {"masquerade": None}],
    ]


MASQUERADE = nft.Table("inet", "pycni_bridge", sets={
    "masq4": {"type": "ipv4_addr"},
    "masq6": {"type": "ipv6_addr"},
    "nomasq4": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
    "nomasq6": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
}, chains={
    "postrouting": ({"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
                    _masq_rules("ip", "masq4", "nomasq4", "224.0.0.0/4")
                    + _masq_rules("ip6", "masq6", "nomasq6", "ff00::/8")),
})

SPOOFCHK = nft.Table("bridge", "pycni_bridge", sets={
    "spoofchk_ports": {"type": "ifname"},
    "spoofchk_macs": {"type": ["ifname", "ether_addr"]},
}, chains={
    "spoofchk": ({"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}, [
        [match(concat(meta("iifname"), payload("ether", "saddr")), "@spoofchk_macs"), RETURN],
        [match(meta("iifname"), "@spoofchk_ports"), {"drop": None}],
    ]),
})


def masq_elements(address: str, subnet: str) -> list[nft.Element]:
    """Masquerade one container address for everything outside ``subnet``
    (its own subnet; the overlay's cluster CIDR)."""
    v6 = ":" in address
    return [
        (MASQUERADE, "masq6" if v6 else "masq4", address),
        (MASQUERADE, "nomasq6" if v6 else "nomasq4", concat(address, prefix(subnet))),
    ]


def masq_subnet(iface, masq_exempt: list[str]) -> str:
    """What an address's masquerade leaves alone: the first of ``masq_exempt``
    (the overlay's cluster CIDRs) of its family, else its own subnet."""
    exempt = [n for n in masq_exempt if ipaddress.ip_network(n).version == iface.version]
    return exempt[0] if exempt else str(iface.network)


def spoofchk_elements(host_ifname: str, mac: str) -> list[nft.Element]:
    return [
        (SPOOFCHK, "spoofchk_ports", host_ifname),
        (SPOOFCHK, "spoofchk_macs", concat(host_ifname, mac)),
    ]


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
    # Networks whose traffic keeps its source under ipMasq, one per family;
    # default: each address's own subnet.  Not a config key: the overlay
    # plugin sets its cluster CIDRs here.
    masq_exempt: list[str] = []


def parse_config(req: Request) -> BridgeConfig:
    c = req.config

    def get(key, kind, default):
        return typed(PLUGIN, c, key, kind, default)

    cfg = BridgeConfig(
        network=c["name"],
        bridge=get("bridge", str, "cni0"),
        is_gateway=get("isGateway", bool, False),
        is_default_gateway=get("isDefaultGateway", bool, False),
        force_address=get("forceAddress", bool, False),
        ip_masq=get("ipMasq", bool, False),
        mtu=get("mtu", int, 0),
        hairpin=get("hairpinMode", bool, False),
        promisc=get("promiscMode", bool, False),
        vlan=get("vlan", int, 0),
        preserve_default_vlan=get("preserveDefaultVlan", bool, True),
        macspoofchk=get("macspoofchk", bool, False),
        enable_dad=get("enabledad", bool, False),
        disable_container_interface=get("disableContainerInterface", bool, False),
        port_isolation=get("portIsolation", bool, False),
        dns=get("dns", dict, {}),
    )
    backend = get("ipMasqBackend", str, "nftables")
    if backend not in ("nftables", "iptables"):
        raise bad_config(PLUGIN, f"unknown ipMasqBackend {backend!r}")
    problem = names.ifname_problem(cfg.bridge)
    if problem:
        raise bad_config(PLUGIN, f"'bridge': {problem}")
    if cfg.is_default_gateway:
        cfg.is_gateway = True  # as the reference: a default gateway is a gateway
    if cfg.mtu and not 68 <= cfg.mtu <= 65535:
        raise bad_config(PLUGIN, f"invalid mtu {cfg.mtu}")
    if not 0 <= cfg.vlan <= 4094:
        raise bad_config(PLUGIN, f"invalid vlan id {cfg.vlan}")
    for trunk in get("vlanTrunk", list, []):
        if not isinstance(trunk, dict):
            raise bad_config(PLUGIN, "vlanTrunk entries must be objects")
        low, high = trunk.get("minID", trunk.get("id")), trunk.get("maxID", trunk.get("id"))
        if not all(isinstance(v, int) and 1 <= v <= 4094 for v in (low, high)) or low > high:
            raise bad_config(PLUGIN, f"invalid vlanTrunk entry {trunk}")
        cfg.vlan_trunk.append((low, high))
    if cfg.vlan and cfg.vlan_trunk:
        raise bad_config(PLUGIN, "cannot set vlan and vlanTrunk at the same time")
    try:
        version.dns_problem(cfg.dns)
    except ValueError as e:
        raise bad_config(PLUGIN, str(e)) from None
    mac = str(req.runtime_config.get("mac") or req.args.get("MAC") or "")
    cfg.mac = unicast_mac(PLUGIN, mac) if mac else ""
    delegate.ipam_type(req)
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
    result: dict               # internal result; apply adds the interfaces


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
            elements += masq_elements(str(iface.ip), masq_subnet(iface, cfg.masq_exempt))
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


def record_of(req: Request, cfg: BridgeConfig, plan: Plan) -> dict:
    """What DEL and GC need to undo the attachment, from our own data."""
    return {"containerID": req.container_id, "ifname": req.ifname, "netns": req.netns,
            "bridge": cfg.bridge, "hostVeth": plan.host_veth, "nft": nft.to_record(plan.nft_elements)}


def record_from_prev_result(req: Request, masq_exempt: list[str] = ()) -> dict:
    """Without our record (an attachment made by an older version, or a lost
    state dir), what the runtime's cached result tells (``masq_exempt``: as
    the ADD's config had it, when the caller still knows)."""
    record = {"containerID": req.container_id, "ifname": req.ifname, "nft": []}
    prev = req.prev_result or {}
    for iface in prev.get("interfaces") or []:
        if not iface.get("sandbox") and iface.get("name", "").startswith("veth"):
            record["hostVeth"] = iface["name"]
    if req.config.get("ipMasq"):
        for ip in prev.get("ips") or []:
            iface = ipaddress.ip_interface(ip["address"])
            record["nft"] += nft.to_record(masq_elements(str(iface.ip), masq_subnet(iface, masq_exempt)))
    return record


@plain
class Expected:
    """What a prevResult promises about an attachment (CHECK's plan)."""
    container_ifname: str
    mac: str
    addresses: list     # ip_interface
    routes: list        # {dst: ip_network, gw: ip_address | None, route: as prevResult has it}
    bridge: str
    host_veths: list[str]


def expected_state(cfg: BridgeConfig, req: Request, prev: dict, record: dict | None) -> Expected:
    """What prevResult promises.  Our host veth is the one our record names
    (without a record, prevResult's host-side veths): plugins chained after
    us add host interfaces of their own (bandwidth's ifb)."""
    interfaces = prev.get("interfaces") or []
    container = next((i for i in interfaces if i.get("sandbox") and i.get("name") == req.ifname), None)
    if container is None:
        raise CNIError(CHECK_FAILED, f"bridge: prevResult lists no interface {req.ifname!r} in a sandbox")
    return Expected(
        container_ifname=req.ifname,
        mac=(container.get("mac") or "").lower(),
        addresses=[ipaddress.ip_interface(ip["address"]) for ip in prev.get("ips") or []],
        routes=[{"dst": ipaddress.ip_network(r["dst"], strict=False),
                 "gw": ipaddress.ip_address(r["gw"]) if r.get("gw") else None, "route": r}
                for r in prev.get("routes") or []],
        bridge=cfg.bridge,
        host_veths=[record["hostVeth"]] if record and record.get("hostVeth") else
        [i["name"] for i in interfaces if not i.get("sandbox") and i.get("name", "").startswith("veth")],
    )


# --- kernel -------------------------------------------------------------------
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
                raise kernel_failure(PLUGIN, f"creating bridge {cfg.bridge}", e)
        link = nl.link(cfg.bridge)
    if link.kind != "bridge":
        raise bad_config(PLUGIN, f"{cfg.bridge!r} already exists and is not a bridge")
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
                raise bad_config(PLUGIN, f"{plan.bridge} already has {old} in the network of gateway {gw}; "
                                 "set forceAddress to replace it")
            nl.delete_address(br.index, old)
        try:
            nl.add_address(br.index, gw, nodad=True)
        except NetlinkError as e:
            if e.errno != errno.EEXIST:  # a concurrent ADD added the same gateway
                raise kernel_failure(PLUGIN, f"adding gateway {gw}", e)
        netns.write_sysctl("net.ipv4.ip_forward" if gw.version == 4 else "net.ipv6.conf.all.forwarding", "1")


def _attach_host_side(cfg: BridgeConfig, plan: Plan, host: Netlink, br: netlink.Link, veth: netlink.Link) -> None:
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


def _configure_container_side(cfg: BridgeConfig, plan: Plan, sandbox: Sandbox, link: netlink.Link) -> None:
    cont = sandbox.nl
    if any(a.version == 6 for a in plan.addresses) and not cfg.enable_dad:
        with sandbox.entered():
            netns.write_sysctl(f"net.ipv6.conf.{plan.container_ifname}.accept_dad", "0")
    for addr in plan.addresses:
        cont.add_address(link.index, addr, nodad=not cfg.enable_dad)
    cont.set_link(link.index, up=True)
    for r in plan.routes:
        try:
            cont.add_route(r["dst"], r["gw"], link.index, mtu=r["mtu"], advmss=r["advmss"], priority=r["priority"])
        except NetlinkError as e:
            # a route to the interface's own subnet is there already (the
            # kernel adds it with the address): the reference accepts it too
            if e.errno != errno.EEXIST:
                raise


def apply_plan(cfg: BridgeConfig, plan: Plan, host: Netlink, sandbox: Sandbox) -> dict:
    """Make the plan real; returns the result with its interfaces."""
    br = ensure_bridge(host, cfg, plan.vlan_filtering)
    if sandbox.nl.link(plan.container_ifname) is not None:
        raise CNIError(LINK_EXISTS, f"bridge: container already has an interface named {plan.container_ifname!r}")
    try:
        host.create_veth(plan.host_veth, plan.container_ifname, sandbox.fd, cfg.mtu, plan.mac)
    except NetlinkError as e:
        raise kernel_failure(PLUGIN, f"creating veth pair {plan.host_veth}/{plan.container_ifname}", e)
    veth = host.link(plan.host_veth)
    try:
        _attach_host_side(cfg, plan, host, br, veth)
    except NetlinkError as e:
        raise kernel_failure(PLUGIN, f"attaching {plan.host_veth} to {plan.bridge}", e)
    cont_link = sandbox.nl.link(plan.container_ifname)
    if not cfg.disable_container_interface:
        try:
            _configure_container_side(cfg, plan, sandbox, cont_link)
        except NetlinkError as e:
            raise kernel_failure(PLUGIN, f"configuring {plan.container_ifname} in the container", e)
    nft.add_elements(plan.nft_elements)
    br = host.link(plan.bridge)
    return {**plan.result, "interfaces": [
        {"name": br.name, "mac": br.mac},
        {"name": veth.name, "mac": veth.mac},
        {"name": cont_link.name, "mac": cont_link.mac, "sandbox": sandbox.path},
    ]}


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
    sandbox = Sandbox.if_present(netns_path)
    if sandbox is not None:
        with sandbox:
            link = sandbox.nl.link(record["ifname"])
            if link is not None and link.kind == "veth":
                sandbox.nl.delete_link(link.index)


def undo(record: dict, netns_path: str = "", also=None) -> None:
    """Remove an attachment's host-side state from our record of it; the
    container side goes with the veth (or is gone with its netns).  The
    kernel blocks ~15 ms tearing a veth down, so that runs in a thread while
    the set elements are removed; ``also`` (the IPAM release) comes last:
    once released, the address may be another container's at once, with
    set elements of the same value."""
    wait = _in_background(_delete_veth, record, netns_path)
    try:
        nft.remove_elements(nft.from_record(record.get("nft", [])))
    finally:
        wait()
    if also is not None:
        also()


def differences(expected: Expected, sandbox: Sandbox, host: Netlink) -> list[str]:
    """How the kernel differs from what CHECK expects."""
    cont = sandbox.nl
    link = cont.link(expected.container_ifname)
    if link is None:
        return [f"interface {expected.container_ifname!r} is missing in the container"]
    if expected.mac and expected.mac != link.mac:
        return [f"{expected.container_ifname} has MAC {link.mac}, expected {expected.mac}"]
    have = {a for _, a in cont.addresses(link.index)}
    out = [f"address {a} is missing on {expected.container_ifname}" for a in expected.addresses if a not in have]
    routes = cont.routes()
    out += [f"route {r['route']} is missing in the container" for r in expected.routes
            if not any(k["dst"] == r["dst"] and (r["gw"] is None or k["gw"] == r["gw"]) for k in routes)]
    br = host.link(expected.bridge)
    if br is None or br.kind != "bridge":
        return out + [f"bridge {expected.bridge!r} is missing"]
    for name in expected.host_veths:
        veth = host.link(name)
        if veth is None or veth.master != br.index:
            out.append(f"host veth {name!r} is missing or not on {expected.bridge}")
    return out


# --- CNI commands ---------------------------------------------------------------
def _free_veth_name(host: Netlink) -> str:
    for _ in range(8):
        name = "veth" + os.urandom(4).hex()
        if host.link(name) is None:
            return name
    return name


def add(req: Request, cfg: BridgeConfig | None = None) -> dict:
    """``cfg``: the config as a plugin delegating to bridge adjusted it."""
    cfg = cfg or parse_config(req)
    store = store_for(req, PLUGIN)
    require_new(store, req, PLUGIN)  # before IPAM, whose undo would release the live attachment's address
    with Sandbox(req.netns) as sandbox, Netlink() as host:
        ipam_result = delegate.run(req, "ADD")
        try:
            plan = make_plan(cfg, req, ipam_result, _free_veth_name(host), cfg.mac or random_mac())
            return commit(store, req, record_of(req, cfg, plan),
                          lambda: apply_plan(cfg, plan, host, sandbox),
                          lambda record: undo(record, req.netns))
        except BaseException:
            delegate.run(req, "DEL")
            raise


def delete(req: Request, masq_exempt: list[str] = ()) -> None:
    release(store_for(req, PLUGIN), req,
            lambda record: undo(record, req.netns, also=lambda: delegate.run(req, "DEL")),
            fallback=lambda req: record_from_prev_result(req, masq_exempt))


def check(req: Request) -> None:
    cfg = parse_config(req)
    prev = req.prev_result
    if prev is None:
        raise CNIError(INVALID_CONFIG, "bridge: CHECK needs prevResult")
    delegate.run(req, "CHECK")
    with Sandbox(req.netns, UNKNOWN_CONTAINER) as sandbox, Netlink() as host:
        record = store_for(req, PLUGIN).load(req.container_id, req.ifname)
        require_same(PLUGIN, differences(expected_state(cfg, req, prev, record), sandbox, host))


def gc(req: Request) -> None:
    """Remove host-side state of every attachment not in valid-attachments,
    then let IPAM release their addresses."""
    store_for(req, PLUGIN).collect(req.config, undo)
    delegate.run(req, "GC")


def status(req: Request) -> None:
    delegate.run(req, "STATUS")
