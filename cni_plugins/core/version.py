"""Spec versions and conversion of results between them.

Internally every result has the 1.x shape: ``interfaces``, ``ips`` (each with
an optional ``interface`` index), ``routes`` and ``dns``.  0.3.0 to 0.4.0
differ only in that every IP config carries ``"version": "4"|"6"``.
"""
import ipaddress

from .errors import CNIError, INCOMPATIBLE_VERSION, DECODE_FAILURE, INVALID_CONFIG

SUPPORTED = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")


def parse(version: str) -> tuple[int, int, int]:
    try:
        major, minor, patch = (int(p) for p in version.split("."))
    except (AttributeError, ValueError):
        raise CNIError(INCOMPATIBLE_VERSION, f"invalid cniVersion {version!r}") from None
    return major, minor, patch


def require_supported(version: str) -> None:
    if version not in SUPPORTED:
        raise CNIError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI versions; config is {version!r}, plugin supports {list(SUPPORTED)}",
        )


def at_least(version: str, other: str) -> bool:
    return parse(version) >= parse(other)


def _is_v6(address: str) -> bool:
    return ":" in address


def _parses(parse, value) -> bool:
    try:
        parse(value)
        return True
    except (ValueError, TypeError):
        return False


def _objects(result: dict, key: str):
    items = result.get(key)
    if items is None:
        return
    if not isinstance(items, list):
        raise ValueError(f"{key} must be a list")
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise ValueError(f"{key}[{i}] must be an object")
        yield f"{key}[{i}]", item


_HEX = frozenset("0123456789abcdefABCDEF")


def _hardware_address(mac: str) -> bool:
    """Colon-separated hex octets, 6 (Ethernet) to 20 (InfiniBand)."""
    octets = mac.split(":")
    return 6 <= len(octets) <= 20 and all(len(o) == 2 and set(o) <= _HEX for o in octets)


def _typed_fields(obj: dict, where: str, kinds: dict) -> None:
    """ValueError when one of the optional fields ``kinds`` names is there
    with another type (a bool is no int)."""
    for key, kind in kinds.items():
        value = obj.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, kind)):
            raise ValueError(f"{where}.{key} must be {'an integer' if kind is int else 'a string'}, got {value!r}")


def _shape_problem(result: dict) -> str | None:
    """What makes a result unusable to a plugin (fields of the wrong type
    or unparsable addresses), or None."""
    try:
        interfaces = list(_objects(result, "interfaces"))
        for where, iface in interfaces:
            if not isinstance(iface.get("name"), str) or not iface["name"] \
                    or not isinstance(iface.get("sandbox", ""), str):
                raise ValueError(f"{where}: name must be a non-empty string, sandbox a string")
            mac = iface.get("mac", "")
            if not isinstance(mac, str) or mac and not _hardware_address(mac):
                raise ValueError(f"{where}.mac must be a hardware address, got {mac!r}")
            _typed_fields(iface, where, {"mtu": int, "socketPath": str, "pciID": str})
        for where, ip in _objects(result, "ips"):
            if not isinstance(ip.get("address"), str) or "/" not in ip["address"] \
                    or not _parses(ipaddress.ip_interface, ip["address"]):
                raise ValueError(f"{where}.address must be an address/prefix, got {ip.get('address')!r}")
            if ip.get("gateway") is not None and not _parses(ipaddress.ip_address, ip["gateway"]):
                raise ValueError(f"{where}.gateway must be an IP address, got {ip['gateway']!r}")
            if "interface" in ip and (isinstance(ip["interface"], bool) or not isinstance(ip["interface"], int)
                                      or not 0 <= ip["interface"] < len(interfaces)):
                raise ValueError(f"{where}.interface must be an index into interfaces, got {ip['interface']!r}")
        for where, route in _objects(result, "routes"):
            if not isinstance(route.get("dst"), str) or not _parses(lambda d: ipaddress.ip_network(d, strict=False),
                                                                    route["dst"]):
                raise ValueError(f"{where}.dst must be a network, got {route.get('dst')!r}")
            if route.get("gw") not in (None, "") and not _parses(ipaddress.ip_address, route["gw"]):
                raise ValueError(f"{where}.gw must be an IP address, got {route['gw']!r}")
            _typed_fields(route, where, dict.fromkeys(("mtu", "advmss", "priority", "table", "scope"), int))
        dns = result.get("dns")
        if dns is not None:
            if not isinstance(dns, dict):
                raise ValueError("dns must be an object")
            dns_problem(dns)
    except ValueError as e:
        return str(e)
    return None


def dns_problem(dns: dict) -> None:
    """ValueError when a CNI ``dns`` object has a field of the wrong type."""
    for key in ("nameservers", "search", "options"):
        value = dns.get(key)
        if value is not None and (not isinstance(value, list) or not all(isinstance(v, str) for v in value)):
            raise ValueError(f"dns.{key} must be a list of strings")
    if dns.get("domain") is not None and not isinstance(dns["domain"], str):
        raise ValueError("dns.domain must be a string")


def _without_nulls(result: dict) -> dict:
    """``result`` with the null fields of its interfaces, IPs and routes
    left out: every such field is optional, and Go decodes null into one as
    its absence (a result printed back must not hold a null gateway)."""
    out = dict(result)
    for key in ("interfaces", "ips", "routes"):
        if isinstance(out.get(key), list):
            out[key] = [{k: v for k, v in item.items() if v is not None} if isinstance(item, dict) else item
                        for item in out[key]]
    return out


def result_to_internal(result: dict, where: str = "prevResult") -> dict:
    """Normalise a (prev)Result of any supported version to the 1.x shape;
    a result of the wrong shape is code 7 naming the field."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, f"{where} is not a JSON object")
    result = _without_nulls(result)
    problem = _shape_problem(result)
    if problem:
        raise CNIError(INVALID_CONFIG, f"{where}: {problem}")
    version = result.get("cniVersion", "1.0.0")
    if version not in SUPPORTED:
        raise CNIError(INCOMPATIBLE_VERSION, f"cannot convert a result of version {version!r}")
    out = {"cniVersion": "1.0.0"}
    for key in ("interfaces", "routes", "dns"):
        if key in result:
            out[key] = result[key]
    ips = []
    for ip in result.get("ips") or []:
        ip = {k: v for k, v in ip.items() if k != "version"}
        ips.append(ip)
    if ips:
        out["ips"] = ips
    return out


def result_for_version(result: dict, version: str) -> dict:
    """Render an internal (1.x) result in the requested spec version."""
    out = {"cniVersion": version}
    legacy = not at_least(version, "1.0.0")
    if result.get("interfaces"):
        out["interfaces"] = result["interfaces"]
    ips = []
    for ip in result.get("ips") or []:
        ip = dict(ip)
        if legacy:
            ip["version"] = "6" if _is_v6(ip["address"]) else "4"
        ips.append(ip)
    if ips:
        out["ips"] = ips
    routes = result.get("routes") or []
    if routes:
        if not at_least(version, "1.1.0"):
            # mtu/advmss/priority/table/scope only exist from 1.1.0 on.
            routes = [{k: v for k, v in r.items() if k in ("dst", "gw")} for r in routes]
        out["routes"] = routes
    dns = result.get("dns")
    out["dns"] = dns if dns else {}
    return out
