"""The VXLAN guard: our own nftables table drops VXLAN (our UDP port) from
any underlay address that is not a known node's.  The known addresses are
set elements, so a lookup costs the same for 3 nodes or 500, and a change
is one atomic libnftables JSON transaction that keeps the drop counters.

    table inet pycni_overlay {
        set peers4 { type ipv4_addr }   set peers6 { type ipv6_addr }
        chain input { type filter hook input priority -10
            udp dport PORT ip saddr != @peers4 counter drop
            udp dport PORT ip6 saddr != @peers6 counter drop } }
"""
import json

import netaddr

FAMILY = "inet"
TABLE = "pycni_overlay"
CHAIN = "input"
SETS = {4: ("peers4", "ipv4_addr", "ip"), 6: ("peers6", "ipv6_addr", "ip6")}


class FirewallError(Exception):
    pass


def _nft():
    import nftables  # Debian's python3-nftables: only on /usr/bin/python3's path

    nft = nftables.Nftables()
    nft.set_json_output(True)
    return nft


def _run(commands: list[dict]) -> dict:
    rc, out, err = _nft().json_cmd({"nftables": commands})
    if rc != 0:
        raise FirewallError(f"nft: {err.strip() if isinstance(err, str) else err}")
    return out if isinstance(out, dict) else (json.loads(out) if out else {})


def observe(port: int) -> frozenset[str] | None:
    """The allowed addresses in our table; None when the table is missing
    or guards another port (it is then rebuilt)."""
    try:
        listing = _run([{"list": {"table": {"family": FAMILY, "name": TABLE}}}])
    except FirewallError:
        return None
    allowed, guarded = set(), 0
    for item in listing.get("nftables", []):
        if "set" in item:
            for element in item["set"].get("elem", []):
                allowed.add(element if isinstance(element, str) else json.dumps(element))
        elif "rule" in item and _guards(item["rule"], port):
            guarded += 1
    return frozenset(allowed) if guarded == len(SETS) else None


def _guards(rule: dict, port: int) -> bool:
    return any(e.get("match", {}).get("left") == {"payload": {"protocol": "udp", "field": "dport"}}
               and e["match"].get("right") == port for e in rule.get("expr", []))


def apply(allowed: frozenset[str], port: int, rebuild: bool) -> None:
    """Make the allowed set exactly ``allowed``: the whole table in one
    transaction when ``rebuild``, else only the set elements."""
    table = {"family": FAMILY, "name": TABLE}
    inside = {"family": FAMILY, "table": TABLE}
    commands = []
    if rebuild:
        commands += [{"add": {"table": table}}, {"delete": {"table": table}}, {"add": {"table": table}},
                     {"add": {"chain": {**inside, "name": CHAIN, "type": "filter", "hook": "input",
                                        "prio": -10, "policy": "accept"}}}]
        for name, kind, _ in SETS.values():
            commands.append({"add": {"set": {**inside, "name": name, "type": kind}}})
        for name, _, proto in SETS.values():
            commands.append({"add": {"rule": {**inside, "chain": CHAIN, "expr": [
                {"match": {"op": "==", "left": {"payload": {"protocol": "udp", "field": "dport"}}, "right": port}},
                {"match": {"op": "!=", "left": {"payload": {"protocol": proto, "field": "saddr"}},
                           "right": f"@{name}"}},
                {"counter": None}, {"drop": None}]}}})
    else:
        commands += [{"flush": {"set": {**inside, "name": name}}} for name, _, _ in SETS.values()]
    for version, (name, _, _) in SETS.items():
        elements = sorted(a for a in allowed if netaddr.IPAddress(a).version == version)
        if elements:
            commands.append({"add": {"element": {**inside, "name": name, "elem": elements}}})
    _run(commands)


def dropped() -> int:
    """Packets the guard dropped so far (its counters)."""
    try:
        listing = _run([{"list": {"chain": {"family": FAMILY, "table": TABLE, "name": CHAIN}}}])
    except FirewallError:
        return 0
    return sum(e["counter"]["packets"] for item in listing.get("nftables", []) if "rule" in item
               for e in item["rule"]["expr"] if "counter" in e)


def remove() -> None:
    table = {"family": FAMILY, "name": TABLE}
    _run([{"add": {"table": table}}, {"delete": {"table": table}}])
