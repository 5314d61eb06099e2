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


def _parses(parse, v) -> bool:
    try:
        parse(v)
        return True
    except ValueError:
        return False


def _is_cidr(v) -> bool:
    return isinstance(v, str) and "/" in v and _parses(ipaddress.ip_interface, v)


def _is_ip(v) -> bool:
    return _parses(ipaddress.ip_address, v)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _strlist(v) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


def _objects(doc: dict, key: str, p: list[str]):
    """(where, item) for each object in the list ``doc[key]`` (absent or
    null: none), noting what is not a list or not an object."""
    items = doc.get(key, [])
    if items is None:
        return
    if not isinstance(items, list):
        p.append(f"{key} is not a list")
        return
    for i, item in enumerate(items):
        if isinstance(item, dict):
            yield f"{key}[{i}]", item
        else:
            p.append(f"{key}[{i}] is not an object")


def _is_str(v) -> bool:
    return isinstance(v, str)


def _since_1_1(item: dict, where: str, v11: bool, p: list[str], checks) -> None:
    """Fields that exist only from 1.1.0 on: (key, check, complaint)."""
    for key, ok, complaint in checks:
        if key in item:
            if not v11:
                p.append(f"{where}.{key} does not exist before 1.1.0")
            elif not ok(item[key]):
                p.append(f"{where}.{key} {complaint}")


def _cidr_and_ip(item: dict, where: str, cidr_key: str, cidr_what: str, ip_key: str, p: list[str]) -> None:
    if not _is_cidr(item.get(cidr_key)):
        p.append(f"{where}.{cidr_key} {item.get(cidr_key)!r} is not {cidr_what}")
    if ip_key in item and not _is_ip(item[ip_key]):
        p.append(f"{where}.{ip_key} {item[ip_key]!r} is not an IP address")


def validate_result(doc, version: str) -> list[str]:
    """Problems with an ADD success result for ``version``."""
    p: list[str] = []
    if not isinstance(doc, dict):
        return ["result is not a JSON object"]
    v11 = _vt(version) >= (1, 1, 0)
    if not isinstance(doc.get("cniVersion"), str):
        p.append("cniVersion missing or not a string")
    ifaces = doc.get("interfaces") if isinstance(doc.get("interfaces"), list) else []
    for where, it in _objects(doc, "interfaces", p):
        if not isinstance(it.get("name"), str) or not it.get("name"):
            p.append(f"{where}.name missing")
        if "mac" in it and it["mac"] != "" and not (isinstance(it["mac"], str) and _MAC.match(it["mac"])):
            p.append(f"{where}.mac {it['mac']!r} is not a hardware address")
        if "sandbox" in it and not isinstance(it["sandbox"], str):
            p.append(f"{where}.sandbox is not a string")
        _since_1_1(it, where, v11, p, [("mtu", _is_int, "has the wrong type"),
                                       ("socketPath", _is_str, "has the wrong type"),
                                       ("pciID", _is_str, "has the wrong type")])
    for where, ip in _objects(doc, "ips", p):
        _cidr_and_ip(ip, where, "address", "an address/prefix", "gateway", p)
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
    for where, r in _objects(doc, "routes", p):
        _cidr_and_ip(r, where, "dst", "a CIDR", "gw", p)
        _since_1_1(r, where, v11, p, [(k, _is_int, "is not an integer")
                                      for k in ("mtu", "advmss", "priority", "table", "scope")])
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
