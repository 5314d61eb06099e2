"""Spec versions and conversion of results between them.

Internally every result has the 1.x shape: ``interfaces``, ``ips`` (each with
an optional ``interface`` index), ``routes`` and ``dns``.  0.3.0 to 0.4.0
differ only in that every IP config carries ``"version": "4"|"6"``.
"""
from .errors import CNIError, INCOMPATIBLE_VERSION, DECODE_FAILURE

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


def result_to_internal(result: dict) -> dict:
    """Normalise a (prev)Result of any supported version to the 1.x shape."""
    if not isinstance(result, dict):
        raise CNIError(DECODE_FAILURE, "result is not a JSON object")
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
