"""The VXLAN guard: our own nftables table drops VXLAN (our UDP port) from
any underlay address that is not a known node's.  The known addresses are
set elements, so a lookup costs the same for 3 nodes or 500; the table is
declared with the project's one nftables mechanism (`cni_plugins.kernel.nft`).

    table inet pycni_overlay {
        set peers4 { type ipv4_addr }   set peers6 { type ipv6_addr }
        set ports { type inet_service }  counter dropped
        chain input { type filter hook input priority -10
            udp dport @ports ip saddr != @peers4 counter name dropped drop
            udp dport @ports ip6 saddr != @peers6 counter name dropped drop } }

Everything that varies (the port, the peers) is a set element, so every
apply declares the whole table and its elements in one atomic transaction:
it heals a flushed chain as well, and the named counter keeps its count.
"""
from cni_plugins.kernel import nft
from cni_plugins.kernel.nft import match, payload

SETS = {4: "peers4", 6: "peers6"}
PORTS = "ports"


def _guard(ip: str, peers: str) -> list:
    return [match(payload("udp", "dport"), f"@{PORTS}"), match(payload(ip, "saddr"), f"@{peers}", "!="),
            {"counter": "dropped"}, {"drop": None}]


GUARD = nft.Table("inet", "pycni_overlay", sets={
    SETS[4]: {"type": "ipv4_addr"},
    SETS[6]: {"type": "ipv6_addr"},
    PORTS: {"type": "inet_service"},
}, chains={
    "input": ({"type": "filter", "hook": "input", "prio": -10, "policy": "accept"},
              [_guard("ip", SETS[4]), _guard("ip6", SETS[6])]),
}, counters=("dropped",))


def observe(port: int) -> frozenset[str] | None:
    """The allowed addresses in our table; None when the table is missing
    or guards another port (it is then declared again)."""
    with nft.locked():
        held = nft.table_elements(GUARD)
    if held is None or held.get(PORTS) != [port]:
        return None
    return frozenset(address for name in SETS.values() for address in held.get(name, []))


def apply(allowed: frozenset[str], port: int) -> None:
    """Make the table guard ``port`` and allow exactly ``allowed``."""
    ref = {"family": GUARD.family, "table": GUARD.name}
    commands = GUARD.skeleton()
    commands += [{"flush": {"set": {**ref, "name": name}}} for name in (*SETS.values(), PORTS)]
    commands.append(nft.element_command(GUARD, "add", PORTS, port))
    for version, name in SETS.items():
        elements = sorted(a for a in allowed if (":" in a) == (version == 6))
        if elements:
            commands.append({"add": {"element": {**ref, "name": name, "elem": elements}}})
    with nft.locked():
        nft.run(commands)


def remove() -> None:
    table = {"family": GUARD.family, "name": GUARD.name}
    with nft.locked():
        nft.run([{"add": {"table": table}}, {"delete": {"table": table}}])
