"""Our nftables state: tables of our own, changed only in atomic transactions.

Rules are static; what varies per container is set elements, so a lookup
costs the same with one container as with thousands, and ADD/DEL are one
transaction each.  Every transaction re-declares the skeleton (tables, sets,
chains, rules — chains are flushed and refilled), so it is idempotent and
heals a ruleset someone flushed.  Deleting an element that may be absent is
done as add-then-delete in the same transaction (nftables 1.0.6 has no
`destroy`).

libnftables is loaded lazily: only plugins that touch the firewall pay for it.
"""
import fcntl
import os
from contextlib import contextmanager

from .errors import CNIError, KERNEL_FAILURE

TABLE = "pycni"

# --- skeleton -------------------------------------------------------------
_SETS = {
    # family, set name -> (type, flags)
    ("inet", "masq4"): ("ipv4_addr", []),
    ("inet", "masq6"): ("ipv6_addr", []),
    ("inet", "nomasq4"): (["ipv4_addr", "ipv4_addr"], ["interval"]),
    ("inet", "nomasq6"): (["ipv6_addr", "ipv6_addr"], ["interval"]),
    ("bridge", "spoofchk_ports"): ("ifname", []),
    ("bridge", "spoofchk_macs"): (["ifname", "ether_addr"], []),
}


def _match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def _payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def _concat(*items):
    return {"concat": list(items)}


_RETURN = {"return": None}


def _masq_rules(ip: str, saddr_set: str, exempt_set: str, multicast: str):
    src, dst = _payload(ip, "saddr"), _payload(ip, "daddr")
    prefix, length = multicast.split("/")
    return [
        # traffic within the container's own subnet keeps its source
        [_match(_concat(src, dst), f"@{exempt_set}"), _RETURN],
        [_match(dst, {"prefix": {"addr": prefix, "len": int(length)}}), _RETURN],
        [_match(src, f"@{saddr_set}"), {"masquerade": None}],
    ]


_CHAINS = {
    ("inet", "postrouting"): (
        {"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
        _masq_rules("ip", "masq4", "nomasq4", "224.0.0.0/4")
        + _masq_rules("ip6", "masq6", "nomasq6", "ff00::/8"),
    ),
    ("bridge", "spoofchk"): (
        {"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"},
        [
            [_match(_concat({"meta": {"key": "iifname"}}, _payload("ether", "saddr")),
                    "@spoofchk_macs"), _RETURN],
            [_match({"meta": {"key": "iifname"}}, "@spoofchk_ports"), {"drop": None}],
        ],
    ),
}


def skeleton() -> list[dict]:
    cmds = []
    for family in ("inet", "bridge"):
        cmds.append({"add": {"table": {"family": family, "name": TABLE}}})
    for (family, name), (kind, flags) in _SETS.items():
        spec = {"family": family, "table": TABLE, "name": name, "type": kind}
        if flags:
            spec["flags"] = flags
        cmds.append({"add": {"set": spec}})
    for (family, name), (hook, rules) in _CHAINS.items():
        cmds.append({"add": {"chain": {"family": family, "table": TABLE, "name": name, **hook}}})
        cmds.append({"flush": {"chain": {"family": family, "table": TABLE, "name": name}}})
        for expr in rules:
            cmds.append({"add": {"rule": {"family": family, "table": TABLE, "chain": name, "expr": expr}}})
    return cmds


# --- elements ---------------------------------------------------------------
def masq_elements(address: str, subnet: str) -> list[tuple[str, str, object]]:
    """(family, set, element) triples that masquerade one container address
    for everything outside ``subnet``."""
    v6 = ":" in address
    net, plen = subnet.split("/")
    return [
        ("inet", "masq6" if v6 else "masq4", address),
        ("inet", "nomasq6" if v6 else "nomasq4",
         _concat(address, {"prefix": {"addr": net, "len": int(plen)}})),
    ]


def spoofchk_elements(host_ifname: str, mac: str) -> list[tuple[str, str, object]]:
    return [
        ("bridge", "spoofchk_ports", host_ifname),
        ("bridge", "spoofchk_macs", _concat(host_ifname, mac)),
    ]


def _element_cmd(op: str, family: str, set_name: str, element) -> dict:
    return {op: {"element": {"family": family, "table": TABLE, "name": set_name, "elem": [element]}}}


# --- applying -----------------------------------------------------------------
_ctx = None


def _nft():
    global _ctx
    if _ctx is None:
        import nftables

        _ctx = nftables.Nftables()
        _ctx.set_json_output(True)
        _ctx.set_handle_output(False)
    return _ctx


def run(commands: list[dict]) -> dict:
    """Apply a list of JSON commands as one atomic transaction."""
    rc, output, error = _nft().json_cmd({"nftables": commands})
    if rc != 0:
        raise CNIError(KERNEL_FAILURE, "nftables transaction failed", (error or "").strip())
    return output or {}


@contextmanager
def _locked():
    """Serialise our transactions that read before they write (removing the
    tables once empty must not race an ADD).  The tables belong to a network
    namespace, so the lock does too: flock on the namespace file itself,
    which every process in that netns sees as the same inode."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def add_elements(elements: list[tuple[str, str, object]]) -> None:
    if not elements:
        return
    with _locked():
        run(skeleton() + [_element_cmd("add", *e) for e in elements])


def remove_elements(elements: list[tuple[str, str, object]]) -> None:
    """Remove elements (absent ones are fine); drop our tables once they
    hold no element at all, so a node with no attachment has no pycni state."""
    if not elements:
        return
    with _locked():
        cmds = skeleton()
        for e in elements:
            cmds.append(_element_cmd("add", *e))
            cmds.append(_element_cmd("delete", *e))
        run(cmds)
        if not any(_elements().values()):
            run([{"delete": {"table": {"family": f, "name": TABLE}}} for f in ("inet", "bridge")])


def _elements() -> dict[tuple[str, str], list]:
    """Every element of our sets; {} without our tables.  One listing per
    table (libnftables 1.0.6 answers only the first of several list
    commands in one batch)."""
    found = {}
    for family in ("inet", "bridge"):
        rc, output, _ = _nft().json_cmd({"nftables": [{"list": {"table": {"family": family, "name": TABLE}}}]})
        for item in output.get("nftables", []) if rc == 0 else []:
            if "set" in item:
                found[(family, item["set"]["name"])] = item["set"].get("elem", [])
    return found


def all_elements() -> dict[tuple[str, str], list]:
    """Every element of our sets, for GC and tests."""
    with _locked():
        return _elements()
