"""The shape of results, errors and VERSION output, per spec version.

A small hand-written validator (no jsonschema dependency): each function
returns a list of problems, empty when the document is valid.  Field sets
follow the spec's "Result Types" section: 0.3.x/0.4.0 IP configs carry a
"version" of "4"/"6"; from 1.0.0 on they do not; 1.1.0 adds interface
mtu/socketPath/pciID and route mtu/advmss/priority/table/scope.
"""
from __future__ import annotations

import ipaddress
import re

_MAC = re.compile(r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5,19}$")


def _vt(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in version.split("."))
    except (AttributeError, ValueError):
        return (0,)


def legacy(version: str) -> bool:
    return _vt(version) < (1, 0, 0)


def _is_cidr(v) -> bool:
    if not isinstance(v, str) or "/" not in v:
        return False
    try:
        ipaddress.ip_interface(v)
        return True
    except ValueError:
        return False


def _is_ip(v) -> bool:
    try:
        ipaddress.ip_address(v)
        return True
    except ValueError:
        return False


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strlist(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def validate_result(doc, version: str) -> list[str]:
    """Problems with an ADD success result for ``version``."""
    p: list[str] = []
    if not isinstance(doc, dict):
        return ["result is not a JSON object"]
    v11 = _vt(version) >= (1, 1, 0)
    if not isinstance(doc.get("cniVersion"), str):
        p.append("cniVersion missing or not a string")
    ifaces = doc.get("interfaces", [])
    if ifaces is None:
        ifaces = []
    if not isinstance(ifaces, list):
        p.append("interfaces is not a list")
        ifaces = []
    for i, it in enumerate(ifaces):
        where = f"interfaces[{i}]"
        if not isinstance(it, dict):
            p.append(f"{where} is not an object")
            continue
        if not isinstance(it.get("name"), str) or not it.get("name"):
            p.append(f"{where}.name missing")
        if "mac" in it and it["mac"] != "" and not (isinstance(it["mac"], str) and _MAC.match(it["mac"])):
            p.append(f"{where}.mac {it['mac']!r} is not a hardware address")
        if "sandbox" in it and not isinstance(it["sandbox"], str):
            p.append(f"{where}.sandbox is not a string")
        for key, ok in (("mtu", _is_int), ("socketPath", lambda x: isinstance(x, str)),
                        ("pciID", lambda x: isinstance(x, str))):
            if key in it:
                if not v11:
                    p.append(f"{where}.{key} does not exist before 1.1.0")
                elif not ok(it[key]):
                    p.append(f"{where}.{key} has the wrong type")
    ips = doc.get("ips", [])
    if ips is None:
        ips = []
    if not isinstance(ips, list):
        p.append("ips is not a list")
        ips = []
    for i, ip in enumerate(ips):
        where = f"ips[{i}]"
        if not isinstance(ip, dict):
            p.append(f"{where} is not an object")
            continue
        if not _is_cidr(ip.get("address")):
            p.append(f"{where}.address {ip.get('address')!r} is not an address/prefix")
        if "gateway" in ip and not _is_ip(ip["gateway"]):
            p.append(f"{where}.gateway {ip['gateway']!r} is not an IP address")
        if "interface" in ip:
            if not _is_int(ip["interface"]) or not 0 <= ip["interface"] < len(ifaces):
                p.append(f"{where}.interface {ip['interface']!r} is not an index into interfaces")
        if legacy(version):
            fam = None
            if _is_cidr(ip.get("address")):
                fam = str(ipaddress.ip_interface(ip["address"]).version)
            if ip.get("version") not in ("4", "6"):
                p.append(f"{where}.version must be \"4\" or \"6\" in {version}")
            elif fam and ip["version"] != fam:
                p.append(f"{where}.version {ip['version']} does not match {ip['address']}")
    routes = doc.get("routes", [])
    if routes is None:
        routes = []
    if not isinstance(routes, list):
        p.append("routes is not a list")
        routes = []
    for i, r in enumerate(routes):
        where = f"routes[{i}]"
        if not isinstance(r, dict):
            p.append(f"{where} is not an object")
            continue
        if not _is_cidr(r.get("dst")):
            p.append(f"{where}.dst {r.get('dst')!r} is not a CIDR")
        if "gw" in r and not _is_ip(r["gw"]):
            p.append(f"{where}.gw {r['gw']!r} is not an IP address")
        for key in ("mtu", "advmss", "priority", "table", "scope"):
            if key in r:
                if not v11:
                    p.append(f"{where}.{key} does not exist before 1.1.0")
                elif not _is_int(r[key]):
                    p.append(f"{where}.{key} is not an integer")
    dns = doc.get("dns")
    if dns is not None:
        if not isinstance(dns, dict):
            p.append("dns is not an object")
        else:
            for key in ("nameservers", "search", "options"):
                if key in dns and not _strlist(dns[key]):
                    p.append(f"dns.{key} is not a list of strings")
            if "domain" in dns and not isinstance(dns["domain"], str):
                p.append("dns.domain is not a string")
    return p


def version_shape(doc, version: str) -> list[str]:
    """Is the result in the requested version (not just well formed)?"""
    if not isinstance(doc, dict):
        return ["result is not a JSON object"]
    p = []
    if doc.get("cniVersion") != version:
        p.append(f"cniVersion is {doc.get('cniVersion')!r}, config asked for {version!r}")
    for i, ip in enumerate(doc.get("ips") or []):
        if not isinstance(ip, dict):
            continue
        if legacy(version) and "version" not in ip:
            p.append(f"ips[{i}] lacks \"version\" required before 1.0.0")
        if not legacy(version) and "version" in ip:
            p.append(f"ips[{i}] carries \"version\", which 1.0.0 and later dropped")
    return p


def validate_error(doc) -> list[str]:
    if not isinstance(doc, dict):
        return ["error output is not a JSON object"]
    p = []
    if not _is_int(doc.get("code")):
        p.append("code missing or not an integer")
    if not isinstance(doc.get("msg"), str):
        p.append("msg missing or not a string")
    if "details" in doc and not isinstance(doc["details"], str):
        p.append("details is not a string")
    return p


def validate_version_output(doc) -> list[str]:
    if not isinstance(doc, dict):
        return ["VERSION output is not a JSON object"]
    p = []
    if not isinstance(doc.get("cniVersion"), str):
        p.append("cniVersion missing")
    sv = doc.get("supportedVersions")
    if not _strlist(sv) or not sv:
        p.append("supportedVersions missing or not a non-empty list of strings")
    elif any(_vt(v) == (0,) for v in sv):
        p.append(f"supportedVersions has a malformed entry: {sv}")
    return p
