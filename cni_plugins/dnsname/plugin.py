"""dnsname: containers on a network resolve each other by name.

A chained plugin, config-compatible with the reference dnsname (the one
podman generates)::

    {"type": "dnsname", "domainName": "dns.podman", "capabilities": {"aliases": true}}

ADD registers the container's name (``K8S_POD_NAME`` in CNI_ARGS, as podman
passes it) and its aliases (``runtimeConfig.aliases``: a map network name ->
list, as podman 4.x sends it, or a plain list) with the addresses of the
prevResult, under the network's domain; DEL removes them.  The result gains
the network's gateways as nameservers and the domain as first search entry.

Names are answered by our resolver (server.py), one process per network
namespace serving every network of it on each network's gateway address,
port 53 (UDP and TCP).  The first ADD starts it as a detached daemon; it
exits when the last container of its networks is gone.  Our extension:
``upstreams`` (list of "ADDR" or "ADDR:PORT", "[V6]:PORT") replaces the
host's /etc/resolv.conf servers for the names we do not own.

config -> plan -> files: the plan is the container's record and the
network's metadata (layout.py), written under the lock before the resolver
is told; DEL works from the record.  Module-level imports stay lean: this
runs on every container start.
"""
import ipaddress
import json
import os
import re

from ..core.config import bad_config
from ..core.errors import CNIError, require_same
from ..core.plain import plain
from ..core.records import read_json, write_atomic
from ..core.request import Request
from ..kernel.netns import current_inode
from . import layout
from .control import control, notify
from .layout import DEFAULT_DOMAIN, Lock

PLUGIN = "dnsname"
_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


# --- config -----------------------------------------------------------------------
@plain
class DnsnameConfig:
    network: str
    domain: str = DEFAULT_DOMAIN
    upstreams: list[str] = []
    name: str = ""              # the container's own name (K8S_POD_NAME)
    aliases: list[str] = []


def _check_name(what: str, name) -> str:
    if not isinstance(name, str):
        raise bad_config(PLUGIN, f"{what} must be a string, got {name!r}")
    name = name.rstrip(".")
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise bad_config(PLUGIN, f"{what} {name!r} is not a valid DNS name")
    return name.lower()


def parse_config(req: Request) -> DnsnameConfig:
    c = req.config
    domain = c.get("domainName")
    upstreams = c.get("upstreams") or []
    if not isinstance(upstreams, list) or not all(isinstance(u, str) and u for u in upstreams):
        raise bad_config(PLUGIN, "upstreams must be a list of addresses")
    aliases = req.runtime_config.get("aliases") or []
    if isinstance(aliases, dict):  # podman: network name -> aliases
        aliases = aliases.get(c["name"]) or []
    if not isinstance(aliases, list):
        raise bad_config(PLUGIN, "runtimeConfig.aliases must be a map of lists or a list")
    name = req.args.get("K8S_POD_NAME", "")
    return DnsnameConfig(
        network=c["name"],
        domain=_check_name("domainName", domain) if domain else DEFAULT_DOMAIN,
        upstreams=upstreams,
        name=_check_name("K8S_POD_NAME", name) if name else "",
        aliases=list(dict.fromkeys(_check_name("alias", a) for a in aliases)),
    )


# --- plan ---------------------------------------------------------------------
@plain
class Plan:
    record: dict    # the container's names and addresses
    meta: dict      # the network's domain, gateways, upstreams, netns


def gateways_of(prev: dict) -> list[str]:
    """The addresses to serve DNS on: the result's gateways or, with none
    there, the addresses of the host interface holding the container's
    networks (the bridge), as the reference does."""
    gws = [ip["gateway"] for ip in prev.get("ips") or [] if ip.get("gateway")]
    if not gws:
        from ..kernel.netlink import Netlink

        nets = [ipaddress.ip_interface(ip["address"]).network for ip in prev.get("ips") or []]
        host_ifs = [i["name"] for i in prev.get("interfaces") or [] if not i.get("sandbox")]
        with Netlink() as nl:
            for name in host_ifs:
                link = nl.link(name)
                if link is not None:
                    gws += [str(a.ip) for _, a in nl.addresses(link.index) if a.network in nets]
    return list(dict.fromkeys(g.split("/")[0] for g in gws))


def make_plan(cfg: DnsnameConfig, req: Request, prev: dict, gateways: list[str], netns: int) -> Plan:
    ips = [ip["address"] for ip in prev.get("ips") or []]
    if not ips:
        raise bad_config(PLUGIN, "prevResult has no IP addresses")
    if not gateways:
        raise bad_config(PLUGIN, "no gateway address to serve DNS on (set isGateway on the bridge)")
    return Plan(
        record={"containerID": req.container_id, "ifname": req.ifname, "name": cfg.name,
                "aliases": cfg.aliases, "ips": ips},
        meta={"domain": cfg.domain, "gateways": gateways, "upstreams": cfg.upstreams, "netns": netns},
    )


def result_with_dns(prev: dict, cfg: DnsnameConfig, gateways: list[str]) -> dict:
    result = dict(prev)
    dns = dict(result.get("dns") or {})
    dns["nameservers"] = list(dict.fromkeys(gateways + list(dns.get("nameservers") or [])))
    dns["search"] = list(dict.fromkeys([cfg.domain] + list(dns.get("search") or [])))
    result["dns"] = dns
    return result


# --- files and the resolver (the caller holds the lock) -----------------------------
def _drop_network_if_empty(netdir: str) -> None:
    if not layout.network_records(netdir):
        for name in os.listdir(netdir) if os.path.isdir(netdir) else []:
            try:
                os.unlink(os.path.join(netdir, name))
            except OSError:
                pass
        try:
            os.rmdir(netdir)
        except OSError:
            pass


def _forget(base: str, network: str, attachments: list[tuple[str, str]], netns: int) -> None:
    """Remove the records of these (container id, ifname) attachments (in
    either name format), the network's dir if it is left empty, and tell
    the resolver (which exits when nothing is left).  DEL must not fail for
    the resolver: the names are gone from our records either way."""
    for cid, ifname in attachments:
        while (path := layout.find_container_record(base, network, cid, ifname)) is not None:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    _drop_network_if_empty(layout.network_dir(base, network))
    try:
        notify(base, netns, start=False)
    except CNIError:
        pass


def apply(plan: Plan, base: str, network: str) -> None:
    old = read_json(layout.meta_path(base, network))
    meta = dict(plan.meta)
    if isinstance(old, dict):  # keep gateways other containers got
        meta["gateways"] = list(dict.fromkeys(meta["gateways"] + list(old.get("gateways") or [])))
    if old != meta:
        write_atomic(layout.meta_path(base, network), json.dumps(meta).encode())
    path = layout.record_path(base, network, plan.record["containerID"], plan.record["ifname"])
    write_atomic(path, json.dumps(plan.record).encode())
    try:
        notify(base, meta["netns"], start=True)
    except BaseException:
        _forget(base, network, [(plan.record["containerID"], plan.record["ifname"])], meta["netns"])
        raise


def _netns_of(base: str, network: str) -> int:
    """The netns whose resolver serves ``network`` (ours when unknown)."""
    return (read_json(layout.meta_path(base, network)) or {}).get("netns") or current_inode()


# --- CNI commands -----------------------------------------------------------------
def add(req: Request) -> dict:
    cfg = parse_config(req)
    prev = req.require_prev_result(PLUGIN)
    gateways = gateways_of(prev)
    plan = make_plan(cfg, req, prev, gateways, current_inode())
    base = layout.base_dir(req.run_dir)
    with Lock(base):
        apply(plan, base, cfg.network)
    return result_with_dns(prev, cfg, gateways)


def delete(req: Request) -> None:
    base = layout.base_dir(req.run_dir)
    if layout.find_container_record(base, req.network, req.container_id, req.ifname) is None:
        return
    with Lock(base):
        _forget(base, req.network, [(req.container_id, req.ifname)], _netns_of(base, req.network))


def check(req: Request) -> None:
    parse_config(req)
    if req.prev_result is None:
        raise bad_config(PLUGIN, "CHECK needs prevResult")
    base = layout.base_dir(req.run_dir)
    if layout.find_container_record(base, req.network, req.container_id, req.ifname) is None:
        differences = [f"no record of {req.container_id}/{req.ifname} on {req.network}"]
    elif control(layout.resolver_files(base, _netns_of(base, req.network))["sock"], b"ping") != "ok":
        differences = [f"the resolver of network {req.network} is not running"]
    else:
        differences = []
    require_same(PLUGIN, differences)


def gc(req: Request) -> None:
    valid = {(a.get("containerID"), a.get("ifname")) for a in req.config.get("cni.dev/valid-attachments") or []}
    base = layout.base_dir(req.run_dir)
    netdir = layout.network_dir(base, req.network)
    if not os.path.isdir(netdir):
        return
    with Lock(base):
        stale = [(rec.get("containerID"), rec.get("ifname")) for rec in layout.network_records(netdir)
                 if (rec.get("containerID"), rec.get("ifname")) not in valid]
        _forget(base, req.network, stale, _netns_of(base, req.network))
