"""The checks: what the CNI specification requires that can be observed
from outside a plugin, each with an id, the spec section and our own
paraphrase of the requirement.

Checks run in scenarios (one ADD feeds several checks); ``run_suite`` runs
them all against one bin dir and returns a ``Report``.  Ids ending in
``@<version>`` are repeated for every spec version under test.
"""
from __future__ import annotations

import ipaddress
import os
import threading
from dataclasses import dataclass, field

from cni_plugins.core.version import SUPPORTED

from . import knowledge, schema
from .config import SuiteConfig
from .derive import Change
from .runner import (Sandbox, addresses, firewall_text, host_links, ipam_files, mentions, routes,
                     wait_link_gone)
from .text import elide

PASS, FAIL, NA = "pass", "fail", "n/a"


@dataclass(frozen=True)
class Check:
    id: str
    section: str
    requirement: str


CHECKS = [
    Check("version.output", "2 Execution Protocol: VERSION",
          "VERSION needs no network config; it exits 0 and prints an object with the output's "
          "cniVersion and a non-empty list of supportedVersions."),
    Check("version.overlap", "2 Execution Protocol: VERSION",
          "The plugins of the network share at least one spec version the suite can test "
          "(the versions tested are the claimed ones, intersected with the config's)."),
    Check("add", "2 Execution Protocol: ADD",
          "For every version the plugin claims, ADD with a config of that version exits 0 and "
          "prints a result on stdout."),
    Check("result.schema", "5 Result Types: ADD success",
          "The ADD result is well formed: cniVersion present, interfaces have names, ips carry "
          "address/prefix and valid interface indices, routes have a CIDR dst, and no field the "
          "version does not define."),
    Check("result.version", "2 Execution Protocol; 5 Result Types",
          "The result is rendered in the version the config asked for: same cniVersion, and the "
          "IP-config shape of that version (\"version\" key before 1.0.0, none after)."),
    Check("result.present", "2 Execution Protocol: ADD; 5 Result Types",
          "What the result reports is real: sandbox interfaces exist in the container netns and "
          "host interfaces on the host (with the reported MACs), the addresses are configured, "
          "the routes are installed."),
    Check("check", "2 Execution Protocol: CHECK",
          "From 0.4.0 on, CHECK right after a successful ADD, given that ADD's result as "
          "prevResult, finds nothing wrong: it exits 0."),
    Check("del", "2 Execution Protocol: DEL",
          "DEL with the ADD result as prevResult exits 0."),
    Check("del.idempotent", "2 Execution Protocol: DEL",
          "A runtime may repeat DEL; a second DEL of an attachment already deleted also succeeds."),
    Check("cleanup", "2 Execution Protocol: DEL",
          "DEL releases what the attachment held: no host link, container interface, address, "
          "firewall rule or set element mentioning the container's address, or IPAM reservation "
          "survives it."),
    Check("del.missing-netns", "2 Execution Protocol: DEL",
          "DEL must succeed even when the container's network namespace is already gone, "
          "cleaning up whatever it can."),
    Check("cleanup.missing-netns", "2 Execution Protocol: DEL",
          "With the netns gone, DEL still removes the host-side state: IPAM reservations, "
          "firewall rules or elements for the container's address, host links."),
    Check("del.no-netns", "2 Execution Protocol: DEL",
          "Without CNI_NETNS, DEL still succeeds and releases what it can reach from the host: "
          "host links, firewall rules or elements for the address, IPAM reservations."),
    Check("del.never-added", "2 Execution Protocol: DEL",
          "DEL for a container that was never added has nothing to release and succeeds."),
    Check("errors.decode", "2 Execution Protocol: Errors; 5 Result Types: Error",
          "A config that cannot be decoded makes the plugin exit non-zero and print the error "
          "object (cniVersion, code, msg) on stdout, with code 6."),
    Check("errors.version", "2 Execution Protocol: Errors",
          "A config whose cniVersion the plugin does not support is refused with error code 1, "
          "as an error object on stdout."),
    Check("errors.env", "2 Execution Protocol: Parameters, Errors",
          "ADD missing a required variable (CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME) fails with "
          "error code 4, as an error object on stdout."),
    Check("concurrency", "2 Execution Protocol (runtime may run different containers in parallel)",
          "Parallel ADDs of different containers to one network all succeed with distinct, "
          "really configured addresses, and parallel DELs leave nothing behind."),
    Check("chain.prevresult", "3 Execution of Network Configurations; 4 Plugin Delegation",
          "A plugin chained after another receives the previous result as prevResult and its "
          "ADD output carries it forward (interfaces and addresses not dropped)."),
    Check("gc", "2 Execution Protocol: GC (1.1.0)",
          "GC releases the resources of attachments absent from cni.dev/valid-attachments and "
          "keeps those of the valid ones."),
    Check("status", "2 Execution Protocol: STATUS (1.1.0)",
          "STATUS exits 0 when the plugin can serve ADDs, otherwise prints an error object with "
          "code 50 or 51."),
]
BY_ID = {c.id: c for c in CHECKS}


@dataclass
class Outcome:
    id: str
    status: str
    evidence: str = ""

    @property
    def base(self) -> str:
        return self.id.split("@")[0]

    @property
    def check(self) -> Check:
        return BY_ID[self.base]


@dataclass
class Report:
    label: str
    bin_dir: str
    config: str
    versions: list[str]
    outcomes: list[Outcome] = field(default_factory=list)
    forced_cleanup: list[str] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)   # what the run changed of a deployed config
    notes: list[str] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == FAIL]

    def get(self, cid: str) -> Outcome | None:
        return next((o for o in self.outcomes if o.id == cid), None)

    def to_json(self) -> dict:
        return {"label": self.label, "binDir": self.bin_dir, "config": self.config,
                "versions": self.versions, "forcedCleanup": self.forced_cleanup,
                "derived": [c.to_json() for c in self.changes], "notes": self.notes,
                "checks": [{"id": o.id, "section": o.check.section, "requirement": o.check.requirement,
                            "result": o.status, "evidence": o.evidence} for o in self.outcomes]}


class Recorder:
    def __init__(self):
        self.outcomes: list[Outcome] = []
        self._lock = threading.Lock()

    def put(self, cid: str, status: str, evidence: str = "") -> None:
        assert cid.split("@")[0] in BY_ID, cid
        with self._lock:
            self.outcomes.append(Outcome(cid, status, evidence))

    def verdict(self, cid: str, problems: list[str], ok_note: str = "") -> bool:
        if problems:
            self.put(cid, FAIL, elide("; ".join(problems), 600))
            return False
        self.put(cid, PASS, ok_note)
        return True


def _vt(v: str) -> tuple[int, ...]:
    return tuple(int(p) for p in v.split("."))


# --- observations ------------------------------------------------------------------
def _norm_dst(dst: str, family: int | None) -> ipaddress._BaseNetwork | None:
    if dst == "default":
        return ipaddress.ip_network("::/0" if family == 6 else "0.0.0.0/0")
    try:
        return ipaddress.ip_network(dst, strict=False)
    except ValueError:
        return None


def present_problems(result: dict, ns: str, ns_path: str) -> list[str]:
    p = []
    ns_links = {l["ifname"]: (l.get("address") or "").lower() for l in host_links(ns)}
    h_links = {l["ifname"]: (l.get("address") or "").lower() for l in host_links()}
    ns_addrs = addresses(ns)
    h_addrs = addresses()
    ifaces = result.get("interfaces") or []
    for it in ifaces:
        if not isinstance(it, dict):
            continue
        name, mac = it.get("name", ""), (it.get("mac") or "").lower()
        where, links = ("netns", ns_links) if it.get("sandbox") else ("host", h_links)
        if it.get("sandbox") and it["sandbox"] != ns_path:
            p.append(f"interface {name} has sandbox {it['sandbox']!r}, not the netns {ns_path}")
        if name not in links:
            p.append(f"interface {name} not found in {where}")
        elif mac and links[name] != mac:
            p.append(f"interface {name} has MAC {links[name]} in {where}, result says {mac}")
    for ip in result.get("ips") or []:
        if not isinstance(ip, dict) or "address" not in ip:
            continue
        try:
            want = ipaddress.ip_interface(ip["address"])
        except ValueError:
            continue
        idx = ip.get("interface")
        if isinstance(idx, int) and 0 <= idx < len(ifaces):
            it = ifaces[idx]
            table = ns_addrs if it.get("sandbox") else h_addrs
            have = [ipaddress.ip_interface(a) for a in table.get(it.get("name"), [])]
            where = f"{it.get('name')} in {'netns' if it.get('sandbox') else 'host'}"
        else:
            have = [ipaddress.ip_interface(a) for v in ns_addrs.values() for a in v]
            where = "any netns interface"
        if want not in have:
            p.append(f"address {want} not configured on {where}")
    have_routes = routes(ns)
    for r in result.get("routes") or []:
        if not isinstance(r, dict):
            continue
        dst = _norm_dst(str(r.get("dst", "")), None)
        if dst is None:
            continue
        found = False
        for k in have_routes:
            kd = _norm_dst(k.get("dst", ""), 6 if ":" in str(k.get("gateway", k.get("prefsrc", ""))) or
                           ":" in k.get("dst", "") else 4)
            if kd == dst and (not r.get("gw") or k.get("gateway") == r["gw"]):
                found = True
                break
        if not found:
            p.append(f"route {r.get('dst')} via {r.get('gw', '-')} not installed in netns")
    return p


class Attachment:
    """One container on the network: netns, id, result, and what it touched."""

    def __init__(self, sb: Sandbox, version: str, ifname: str):
        self.sb, self.version, self.ifname = sb, version, ifname
        self.ns, self.path = sb.make_netns()
        self.cid = sb.container_id()
        self.result = None
        self.execs = []

    def add(self):
        self.result, self.execs = self.sb.add_list(self.version, self.cid, self.path, self.ifname)
        return self.result

    def delete(self, prev=True):
        return self.sb.del_list(self.version, self.cid, self.path, self.ifname,
                                self.result if prev else None)

    def drop_netns(self):
        self.sb.delete_netns(self.ns)

    @property
    def ips(self) -> list[str]:
        return [ip["address"].split("/")[0] for ip in (self.result or {}).get("ips") or []
                if isinstance(ip, dict) and "address" in ip]

    @property
    def host_ifaces(self) -> list[str]:
        return [i.get("name") for i in (self.result or {}).get("interfaces") or []
                if isinstance(i, dict) and not i.get("sandbox") and i.get("name") not in self.sb.bridges]

    @property
    def _routable_ips(self) -> list[str]:
        return [ip for ip in self.ips if not ipaddress.ip_address(ip).is_loopback]

    def _holding(self, addrs_by_ifname: dict) -> list[tuple[str, str]]:
        """(address, interface) for each of our addresses still configured."""
        return [(ip, ifn) for ip in self._routable_ips for ifn, addrs in addrs_by_ifname.items()
                if any(a.split("/")[0] == ip for a in addrs)]

    def leaks(self, fw_before: str, *, netns_alive: bool) -> list[str]:
        sb, p = self.sb, []
        left = wait_link_gone(self.host_ifaces)
        p += [f"host link {n} left" for n in left]
        enslaved = [(l["ifname"], l["master"]) for l in host_links() if l.get("master") in sb.bridges
                    and l["ifname"] not in left]
        # links on the bridge belong to us only if no other attachment is live
        p += [f"link {n} still on bridge {br}" for n, br in enslaved if self._sole]
        if netns_alive and os.path.exists(self.path):
            ns_links = {l["ifname"] for l in host_links(self.ns)}
            for it in (self.result or {}).get("interfaces") or []:
                if isinstance(it, dict) and it.get("sandbox") and it.get("name") != "lo" and it.get("name") in ns_links:
                    p.append(f"container interface {it['name']} left in netns")
            p += [f"address {ip} left on {ifn} in netns" for ip, ifn in self._holding(addresses(self.ns))]
        p += [f"address {ip} left on host {ifn}" for ip, ifn in self._holding(addresses())]
        fw_after = firewall_text()
        for ip in self._routable_ips:
            new = [l for l in mentions(fw_after, ip) if l not in set(mentions(fw_before, ip))]
            for line in dict.fromkeys(new):
                p.append(f"firewall: {line[:140]}")
        for name, content in ipam_files(sb.values["dataDir"]).items():
            base = os.path.basename(name)
            if base in self.ips or self.cid in content:
                p.append(f"IPAM reservation {name} ({content.strip().splitlines()[0] if content.strip() else ''}) left")
        return p

    def looked_at(self) -> str:
        """What ``leaks`` could judge for this network."""
        what = "links, addresses, firewall"
        ipams = knowledge.ipam_types(self.sb.plugins)
        if any(t in knowledge.ALLOCATING_IPAM for t in ipams):
            what += ", IPAM reservations"
        unknown = [t for t in ipams if t not in knowledge.ALLOCATING_IPAM]
        note = f"; state of IPAM {', '.join(unknown)} not checked (unknown to the suite)" if unknown else ""
        return f"checked {what} for {', '.join(self.ips) or 'no address'}{note}"

    _sole = True


# --- scenarios -------------------------------------------------------------------------
def _plugin_versions(sb: Sandbox, rec: Recorder, cfg: SuiteConfig) -> list[str]:
    main = sb.exec(cfg.main, "VERSION", "")
    doc = main.json
    problems = []
    if not main.ok:
        problems.append(main.brief())
    if main.json_error:
        problems.append(f"stdout is not JSON: {main.json_error}")
    if main.ok and not main.json_error:
        problems += schema.validate_version_output(doc)
    claimed = list(doc.get("supportedVersions") or []) if isinstance(doc, dict) else []
    rec.verdict("version.output", problems, f"claims {', '.join(claimed)}" if claimed else "")
    common = set(claimed)
    notes = []
    for plugin in sb.plugins:
        if plugin["type"] == cfg.main:
            continue
        e = sb.exec(plugin["type"], "VERSION", "")
        theirs = (e.json or {}).get("supportedVersions") if isinstance(e.json, dict) else None
        if isinstance(theirs, list):
            common &= set(theirs)
        else:
            notes.append(f"{plugin['type']}: {e.brief()}")
    wanted = cfg.versions or list(SUPPORTED)
    tested = [v for v in SUPPORTED if v in common and v in wanted]
    if tested:
        rec.put("version.overlap", PASS, "testing " + ", ".join(tested) + ("; " + "; ".join(notes) if notes else ""))
    else:
        rec.put("version.overlap", FAIL, f"claimed {sorted(common)}, suite supports {list(SUPPORTED)}, "
                f"config wants {wanted}" + ("; " + "; ".join(notes) if notes else ""))
    return tested, claimed


def _lifecycle(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    dependent = ["result.schema", "result.version", "result.present", "check", "del", "del.idempotent", "cleanup"]
    fw_before = firewall_text()
    att = Attachment(sb, v, cfg.ifname)
    try:
        res = att.add()
        if res is None:
            rec.put(f"add@{v}", FAIL, att.execs[-1].brief())
            for d in dependent:
                rec.put(f"{d}@{v}", FAIL, f"not run: add@{v} failed")
            att.delete(prev=False)
            return
        rec.put(f"add@{v}", PASS, f"{len(res.get('ips') or [])} ip(s), {len(res.get('interfaces') or [])} interface(s)")
        prob, vprob = [], []
        for e in att.execs:
            prob += [f"{e.plugin}: {x}" for x in schema.validate_result(e.json, v)]
            vprob += [f"{e.plugin}: {x}" for x in schema.version_shape(e.json, v)]
        rec.verdict(f"result.schema@{v}", prob)
        rec.verdict(f"result.version@{v}", vprob)
        rec.verdict(f"result.present@{v}", present_problems(res, att.ns, att.path))
        if _vt(v) >= (0, 4, 0):
            execs = sb.check_list(v, att.cid, att.path, att.ifname, res)
            bad = [e.brief() for e in execs if not e.ok]
            rec.verdict(f"check@{v}", bad)
        else:
            rec.put(f"check@{v}", NA, "CHECK exists from 0.4.0 on")
        execs = att.delete()
        rec.verdict(f"del@{v}", [e.brief() for e in execs if not e.ok])
        execs = att.delete()
        rec.verdict(f"del.idempotent@{v}", [e.brief() for e in execs if not e.ok])
        rec.verdict(f"cleanup@{v}", att.leaks(fw_before, netns_alive=True),
                    att.looked_at())
    finally:
        att.drop_netns()


def _missing_netns(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    fw_before = firewall_text()
    att = Attachment(sb, v, cfg.ifname)
    res = att.add()
    if res is None:
        att.delete(prev=False)
        att.drop_netns()
        for d in ("del.missing-netns", "cleanup.missing-netns"):
            rec.put(d, FAIL, f"not run: ADD failed: {att.execs[-1].brief()}")
        return
    att.drop_netns()
    wait_link_gone(att.host_ifaces)  # the kernel tears the veth down asynchronously
    execs = att.delete()
    rec.verdict("del.missing-netns", [e.brief() for e in execs if not e.ok], f"netns {att.path} deleted before DEL")
    rec.verdict("cleanup.missing-netns", att.leaks(fw_before, netns_alive=False),
                att.looked_at())


def _no_netns(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    fw_before = firewall_text()
    att = Attachment(sb, v, cfg.ifname)
    try:
        if att.add() is None:
            att.delete(prev=False)
            rec.put("del.no-netns", FAIL, f"not run: ADD failed: {att.execs[-1].brief()}")
            return
        execs = sb.del_list(v, att.cid, "", att.ifname, att.result)
        p = [e.brief() for e in execs if not e.ok]
        p += att.leaks(fw_before, netns_alive=False)
        rec.verdict("del.no-netns", p, "DEL with prevResult, CNI_NETNS unset")
    finally:
        att.delete()  # with the netns, so the run leaves nothing
        att.drop_netns()


def _never_added(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    att = Attachment(sb, v, cfg.ifname)
    try:
        execs = att.delete(prev=False)
        rec.verdict("del.never-added", [e.brief() for e in execs if not e.ok], "DEL without prevResult")
    finally:
        att.drop_netns()


def _error_problems(e, want_code: int) -> list[str]:
    if e.ok:
        return [f"exit 0 (expected failure): {e.brief()}"]
    if e.json_error or e.json is None:
        return [f"stdout is not an error object: {e.brief()}"]
    p = schema.validate_error(e.json)
    if "cniVersion" not in e.json:
        e.note = "error object lacks cniVersion (the spec lists it; Go's libcni omits it)"
    if not p and e.json.get("code") != want_code:
        p.append(f"code {e.json.get('code')} (expected {want_code}): {e.json.get('msg', '')[:100]}")
    return p


def _err_note(e) -> str:
    msg = (e.json or {}).get("msg", "") if isinstance(e.json, dict) else ""
    note = f"code {(e.json or {}).get('code') if isinstance(e.json, dict) else '?'}: {msg[:70]}"
    return note + (f"; note: {e.note}" if getattr(e, "note", "") else "")


def _errors(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    main = next(p for p in sb.plugins if p["type"] == cfg.main)
    ns, path = sb.make_netns()
    try:
        cid = sb.container_id("err")
        kw = dict(container_id=cid, netns=path, ifname=cfg.ifname)
        e = sb.exec(cfg.main, "ADD", '{"cniVersion": "%s", "name": "broken", "type": ' % v, **kw)
        rec.verdict("errors.decode", _error_problems(e, 6), _err_note(e))
        conf = sb.plugin_conf(main, "99.0.0")
        e = sb.exec(cfg.main, "ADD", conf, **kw)
        rec.verdict("errors.version", _error_problems(e, 1), _err_note(e))
        problems = []
        for var in ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME"):
            e = sb.exec(cfg.main, "ADD", sb.plugin_conf(main, v), drop=(var,), **kw)
            problems += [f"without {var}: {x}" for x in _error_problems(e, 4)]
            if e.ok:  # undo whatever it made
                sb.exec(cfg.main, "DEL", sb.plugin_conf(main, v, e.json if isinstance(e.json, dict) else None), **kw)
        rec.verdict("errors.env", problems, "code 4 for each" + (f"; note: {e.note}" if e.note else ""))
    finally:
        sb.delete_netns(ns)


def _concurrency(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    unknown = knowledge.unknown_types(sb.plugins)
    if cfg.concurrency is None and unknown:
        rec.put("concurrency", NA, f"{', '.join(unknown)}: a type the suite has no special knowledge of, so "
                "whether one network serves parallel containers with it is not known (host-device cannot); "
                "a suite config with concurrency: N runs N")
        return
    n = max(2, cfg.concurrency or 4)
    distinct = knowledge.allocating_ipam(sb.plugins)
    fw_before = firewall_text()
    atts = [Attachment(sb, v, cfg.ifname) for _ in range(n)]
    for a in atts:
        a._sole = False
    try:
        threads = [threading.Thread(target=a.add) for a in atts]
        [t.start() for t in threads]
        [t.join() for t in threads]
        p = [f"{a.cid}: {a.execs[-1].brief()}" for a in atts if a.result is None]
        ips = [ip for a in atts for ip in a.ips if not ipaddress.ip_address(ip).is_loopback]
        dup = {ip for ip in ips if ips.count(ip) > 1}
        if dup and distinct:
            p.append(f"same address handed out twice: {sorted(dup)}")
        for a in atts:
            if a.result is not None:
                p += [f"{a.cid}: {x}" for x in present_problems(a.result, a.ns, a.path)]
        dels = {}

        def do_del(a):
            dels[a.cid] = a.delete(prev=a.result is not None)

        threads = [threading.Thread(target=do_del, args=(a,)) for a in atts]
        [t.start() for t in threads]
        [t.join() for t in threads]
        for cid, execs in dels.items():
            p += [f"{cid} DEL: {e.brief()}" for e in execs if not e.ok]
        for a in atts:
            a._sole = a is atts[-1]
            p += [f"{a.cid}: {x}" for x in a.leaks(fw_before, netns_alive=True)]
        rec.verdict("concurrency", p, f"{n} parallel ADDs/DELs, addresses {', '.join(sorted(ips))}"
                    + ("" if distinct or not ips else "; not required to differ (no IPAM the suite knows allocates)"))
    finally:
        for a in atts:
            a.drop_netns()


def _chain(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, v: str) -> None:
    if len(sb.plugins) > 1:
        att = Attachment(sb, v, cfg.ifname)
        try:
            res = att.add()
            p = []
            if res is None:
                p.append(f"ADD failed: {att.execs[-1].brief()}")
            for prev, cur in zip(att.execs, att.execs[1:]):
                p += [f"{cur.plugin}: {x}" for x in _carried(prev.json, cur.json)]
            att.delete()
            rec.verdict("chain.prevresult", p, " -> ".join(e.plugin for e in att.execs))
        finally:
            att.drop_netns()
        return
    if not cfg.chained:
        rec.put("chain.prevresult", NA, "the network has one plugin and the config does not mark it chained")
        return
    ns, path = sb.make_netns()
    try:
        cid = sb.container_id("chain")
        addr = str(sb.subnet.network_address + 251) + f"/{sb.subnet.prefixlen}"
        ip = {"address": addr, "interface": 0}
        if schema.legacy(v):
            ip["version"] = "4"
        prev = {"cniVersion": v, "interfaces": [{"name": "cfprev0", "mac": "02:00:00:c0:ff:ee", "sandbox": path}],
                "ips": [ip], "dns": {}}
        main = next(p for p in sb.plugins if p["type"] == cfg.main)
        e = sb.exec(cfg.main, "ADD", sb.plugin_conf(main, v, prev), container_id=cid, netns=path, ifname=cfg.ifname)
        p = [e.brief()] if not e.ok else _carried(prev, e.json)
        sb.exec(cfg.main, "DEL", sb.plugin_conf(main, v, e.json if e.ok else prev), container_id=cid,
                netns=path, ifname=cfg.ifname)
        rec.verdict("chain.prevresult", p, "synthetic prevResult carried through")
    finally:
        sb.delete_netns(ns)


def _carried(prev, cur) -> list[str]:
    if not isinstance(prev, dict) or not isinstance(cur, dict):
        return ["no result to compare"]
    p = []
    names = {i.get("name") for i in cur.get("interfaces") or [] if isinstance(i, dict)}
    for i in prev.get("interfaces") or []:
        if i.get("name") not in names:
            p.append(f"interface {i.get('name')} from prevResult dropped")
    addrs = {ip.get("address") for ip in cur.get("ips") or [] if isinstance(ip, dict)}
    for ip in prev.get("ips") or []:
        if ip.get("address") not in addrs:
            p.append(f"address {ip.get('address')} from prevResult dropped")
    return p


def _gc_status(sb: Sandbox, rec: Recorder, cfg: SuiteConfig, claimed: list[str]) -> None:
    if "1.1.0" not in claimed or "1.1.0" not in SUPPORTED:
        why = "1.1.0 is not among the versions claimed and selected"
        rec.put("gc", NA, why)
        rec.put("status", NA, why)
        return
    v = "1.1.0"
    # STATUS
    p = []
    for plugin in sb.plugins:
        e = sb.exec(plugin["type"], "STATUS", sb.plugin_conf(plugin, v))
        if not e.ok:
            prob = _error_problems(e, 50)
            if prob and isinstance(e.json, dict) and e.json.get("code") == 51:
                prob = []
            p += [f"{plugin['type']}: {x}" for x in prob]
    rec.verdict("status", p, "exit 0")
    # GC
    fw_before = firewall_text()
    keep, drop = Attachment(sb, v, cfg.ifname), Attachment(sb, v, cfg.ifname)
    keep._sole = drop._sole = False
    try:
        if keep.add() is None or drop.add() is None:
            rec.put("gc", FAIL, "not run: ADD failed: " + (keep.execs or drop.execs)[-1].brief())
            return
        valid = [{"containerID": keep.cid, "ifname": keep.ifname}]
        kept_before = [n for n in ipam_files(sb.values["dataDir"]) if os.path.basename(n) in keep.ips]
        p = []
        for plugin in sb.plugins:
            e = sb.exec(plugin["type"], "GC", sb.plugin_conf(plugin, v, extra={"cni.dev/valid-attachments": valid}))
            if not e.ok:
                p.append(e.brief())
        gone = drop.leaks(fw_before, netns_alive=False)
        p += [f"stale attachment {drop.cid}: {x}" for x in gone if "netns" not in x]
        files = ipam_files(sb.values["dataDir"])
        lost = [n for n in kept_before if n not in files]
        if lost:
            p.append(f"GC released the valid attachment's reservation(s) {lost}")
        if keep.result:
            p += [f"valid attachment broken by GC: {x}" for x in present_problems(keep.result, keep.ns, keep.path)]
        rec.verdict("gc", p, f"released {drop.cid}, kept {keep.cid}")
    finally:
        keep.delete()
        drop.delete()
        keep.drop_netns()
        drop.drop_netns()


def run_suite(bin_dir: str, cfg: SuiteConfig, label: str = "", progress=None) -> Report:
    sb = Sandbox(bin_dir, cfg)
    rec = Recorder()
    say = progress or (lambda msg: None)
    report = Report(label or bin_dir, os.path.abspath(bin_dir), cfg.source or cfg.name, [],
                    changes=list(sb.changes), notes=list(sb.notes))
    try:
        tested, claimed = _plugin_versions(sb, rec, cfg)
        report.versions = tested
        written = cfg.network.get("cniVersion")
        if cfg.derived and tested and tested != [written]:
            report.changes.append(Change("cniVersion", written or "(unset)", f"each version tested in turn "
                                         f"({', '.join(tested)})" + (f"; --versions {written} keeps the file's"
                                                                     if written in tested else "")))
        for v in tested:
            say(f"lifecycle {v}")
            _lifecycle(sb, rec, cfg, v)
        once = ["del.missing-netns", "cleanup.missing-netns", "del.no-netns", "del.never-added", "errors.decode",
                "errors.version", "errors.env", "concurrency", "chain.prevresult"]
        if tested:
            top = tested[-1]
            for name, fn in (("missing netns", _missing_netns), ("no netns", _no_netns), ("never added", _never_added),
                             ("errors", _errors), ("concurrency", _concurrency), ("chain", _chain)):
                say(f"{name} {top}")
                fn(sb, rec, cfg, top)
        else:
            for cid in once:
                rec.put(cid, NA, "no version to test")
        say("gc/status")
        _gc_status(sb, rec, cfg, [v for v in claimed if v in tested])
    finally:
        report.forced_cleanup = sb.close()
    report.outcomes = rec.outcomes
    return report
