"""Element changes sent as nf_tables netlink batches
(cni_plugins/kernel/nfnetlink.py) are the ones libnftables makes.

For every kind of element our plugin tables hold (bridge's masquerade and
anti-spoofing sets, portmap's maps and interval sets, firewall's sets),
and a table of the remaining single types and a verdict map: elements added
through a batch are listed by `nft -j` as the plugin wrote them, found by
`present`, and deleted one by one by libnftables (which refuses to delete
an element it cannot find); elements added by libnftables are removed by a
batch, which leaves the tables empty and so drops them.  While the
batches are in use libnftables is made unavailable, so a silent fallback
would fail the test.

kernel/nft.py falls back to libnftables, which declares the table, when
the table is missing (and it has not yet recorded how to create it), a
set is missing, a chain lost its rules or holds another release's (as many,
not marked with this declaration's digest); a table it creates again over
netlink from its record is the one libnftables declared; and removing
elements of a table that is not there changes nothing.
"""
import ipaddress
import json
import os
import subprocess

import pytest

from cni_plugins import bridge, firewall, portmap
from cni_plugins.kernel import nfnetlink, nft
from cni_plugins.kernel.netns import entered

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")

TYPES = nft.Table("inet", "pnltypes", sets={
    "mac": {"type": "ether_addr"},
    "proto": {"type": "inet_proto"},
    "port": {"type": "inet_service"},
    "port_to_proto": {"type": "inet_service", "map": "inet_proto"},
    "verdicts": {"type": ["ipv4_addr", "inet_service"], "map": "verdict"},
}, chains={"x": (None, [[{"accept": None}]])})


def plugin_elements() -> list[nft.Element]:
    """What each plugin adds for a dual-stack container (portmap: with and
    without a host address, three protocols, masquerading on)."""
    v4, v6 = ipaddress.ip_address("10.250.3.7"), ipaddress.ip_address("fd00:250::7")
    net4, net6 = ipaddress.ip_network("10.250.3.0/24"), ipaddress.ip_network("fd00:250::/64")
    out = bridge.masq_elements(str(v4), str(net4)) + bridge.masq_elements(str(v6), str(net6))
    out += bridge.spoofchk_elements("veth1a2b3c4d", "02:42:ac:11:00:02")
    for i, (proto, host_ip) in enumerate([("tcp", ""), ("udp", "10.1.2.3"), ("sctp", "")]):
        m = {"hostPort": 8080 + i, "containerPort": 80 + i, "protocol": proto, "hostIP": host_ip}
        out += portmap.mapping_elements(m, v4, net4, True)
        out += portmap.mapping_elements({**m, "hostIP": "fd00:1::3" if host_ip else ""}, v6, net6, True)
    cfg = firewall.FirewallConfig(network="n", ingress_policy="same-bridge")
    return out + firewall.make_elements(cfg, [v4, v6], {v4: "cni0", v6: "cni0"})


def type_elements() -> list[nft.Element]:
    return [(TYPES, "mac", "0e:00:00:00:00:ff"), (TYPES, "proto", "udp"), (TYPES, "port", 65535),
            (TYPES, "port_to_proto", [53, "udp"]),
            (TYPES, "verdicts", [nft.concat("10.250.9.1", 443), {"goto": {"target": "x"}}]),
            (TYPES, "verdicts", [nft.concat("10.250.9.2", 22), {"drop": None}])]


ELEMENTS = plugin_elements() + type_elements()
TABLES = list({(t.family, t.name): t for t, _, _ in ELEMENTS}.values())


@pytest.fixture
def inside(netns):
    """Kernel calls made inside our netns (setns for this thread only)."""
    fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        with entered(fd):
            yield netns
            nfnetlink.shared().close()   # it would keep the namespace alive
    finally:
        os.close(fd)


def forbid_libnftables(monkeypatch):
    monkeypatch.setattr(nft, "_nft", lambda: pytest.fail("libnftables was used"))


def listing(netns) -> dict[tuple, set]:
    """(family, table, set) -> canonical elements, as the nft tool lists them."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
                         check=True, capture_output=True, text=True).stdout
    found = {}
    for item in json.loads(out)["nftables"]:
        for kind in ("set", "map"):
            if kind in item:
                s = item[kind]
                found[(s["family"], s["table"], s["name"])] = {nft.canonical(e) for e in s.get("elem", [])}
    return found


def ruleset(netns) -> list:
    """Everything `nft -j list ruleset` shows, but handles and the order of
    set elements (which the kernel's hash sets keep as they please)."""
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "ruleset"],
                         check=True, capture_output=True, text=True).stdout

    def strip(x):
        if isinstance(x, dict):
            return {k: sorted(map(nft.canonical, v)) if k == "elem" else strip(v) for k, v in x.items() if k != "handle"}
        return [strip(v) for v in x] if isinstance(x, list) else x
    return strip(json.loads(out)["nftables"][1:])   # [0] is the tool's version


def expected(elements) -> dict[tuple, set]:
    found = {(t.family, t.name, s): set() for t in TABLES for s in t.sets}
    for t, s, e in elements:
        found[(t.family, t.name, s)].add(nft.canonical(e))
    return found


def declare_tables():
    nft.run([c for t in TABLES for c in t.skeleton()])


def test_elements_added_by_a_batch_are_libnftables_elements(inside, monkeypatch):
    declare_tables()
    with monkeypatch.context() as m:
        forbid_libnftables(m)
        nft.add_elements(ELEMENTS)
        assert nft.present(ELEMENTS) == [True] * len(ELEMENTS)
        other_value = [(portmap.TABLE, s, [e[0], "10.250.3.8"]) for _, s, e in ELEMENTS if s == "addr4"]
        assert nft.present(other_value) == [False] * len(other_value)
    assert listing(inside) == expected(ELEMENTS)
    for t, s, e in ELEMENTS:  # one transaction each: each must find its element
        nft.run([nft.element_command(t, "delete", s, e)])
    assert listing(inside) == expected([])


def test_removal_by_batch_drops_the_tables_it_empties(inside, monkeypatch):
    declare_tables()
    nft.run([nft.element_command(t, "add", s, e) for t, s, e in ELEMENTS])
    assert listing(inside) == expected(ELEMENTS)
    keep = [e for e in ELEMENTS if e[0] is TYPES]
    forbid_libnftables(monkeypatch)
    nft.remove_elements(nft.from_record(nft.to_record([e for e in ELEMENTS if e[0] is not TYPES])))
    assert listing(inside) == {k: v for k, v in expected(keep).items() if k[1] == TYPES.name}
    nft.remove_elements(nft.from_record(nft.to_record(keep)))
    assert listing(inside) == {}


def chain_rules(netns, family, table, chain) -> int:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "chain", family, table, chain],
                         check=True, capture_output=True, text=True).stdout
    return sum("rule" in item for item in json.loads(out)["nftables"])


def first_rule_comment(netns, family, table, chain) -> str | None:
    out = subprocess.run(["ip", "netns", "exec", netns, "nft", "-j", "list", "chain", family, table, chain],
                         check=True, capture_output=True, text=True).stdout
    return next(item["rule"].get("comment") for item in json.loads(out)["nftables"] if "rule" in item)


@pytest.mark.parametrize("damage", ["no table", "chain flushed", "chain flushed and set deleted",
                                    "another release's rules, as many"])
def test_a_table_not_as_declared_is_declared_again(inside, monkeypatch, damage):
    monkeypatch.setattr(nft, "_creations", {})   # nothing recorded: libnftables creates the table
    table, elements = bridge.MASQUERADE, bridge.masq_elements("10.250.4.2", "10.250.4.0/24")
    if damage.startswith("another"):
        hook, rules = table.chains["postrouting"]
        older = nft.Table(table.family, table.name, table.sets,
                          {**table.chains, "postrouting": (hook, [rules[1], rules[0], *rules[2:]])})
        nft.run(older.skeleton())
        assert first_rule_comment(inside, "inet", table.name, "postrouting") == older.mark != table.mark
    elif damage != "no table":
        declare_tables()
        subprocess.run(["ip", "netns", "exec", inside, "nft", "flush", "chain", "inet", table.name, "postrouting"],
                       check=True)
        if "set" in damage:
            subprocess.run(["ip", "netns", "exec", inside, "nft", "delete", "set", "inet", table.name, "nomasq4"],
                           check=True)
    declared = []
    monkeypatch.setattr(nft, "run", lambda commands, run=nft.run: declared.append(commands) or run(commands))
    nft.add_elements(elements)
    assert len(declared) == 1
    assert chain_rules(inside, "inet", table.name, "postrouting") == len(table.chains["postrouting"][1])
    assert first_rule_comment(inside, "inet", table.name, "postrouting") == table.mark
    assert {k: v for k, v in listing(inside).items() if k[1] == table.name and k[0] == "inet"} == \
        {k: v for k, v in expected(elements).items() if k[1] == table.name and k[0] == "inet"}
    nft.add_elements(elements)   # now as declared: a batch
    assert len(declared) == 1


def test_removing_from_a_missing_table_changes_nothing(inside, monkeypatch):
    forbid_libnftables(monkeypatch)
    nft.remove_elements(nft.from_record(nft.to_record(ELEMENTS)))
    assert listing(inside) == {}


def test_a_table_created_again_over_netlink_is_the_one_libnftables_declared(inside, monkeypatch):
    monkeypatch.setattr(nft, "_creations", {})
    nft.add_elements(ELEMENTS)   # declared by libnftables, and recorded
    declared = ruleset(inside)
    nft.remove_elements(nft.from_record(nft.to_record(ELEMENTS)))
    assert ruleset(inside) == []
    forbid_libnftables(monkeypatch)
    nft.add_elements(ELEMENTS)
    assert ruleset(inside) == declared


SPELLINGS = nft.Table("inet", "pnlspell", sets={
    "mac": {"type": "ether_addr"}, "name": {"type": "ifname"}, "addr4": {"type": "ipv4_addr"},
    "addr6": {"type": "ipv6_addr"}, "proto": {"type": "inet_proto"}, "port": {"type": "inet_service"},
    "nets": {"type": ["ipv4_addr", "inet_service"], "flags": ["interval"]},
}, chains={})


@pytest.mark.parametrize("set_name, value", [
    ("mac", "0e:0:0:0:0:ff"), ("mac", "0E:00:00:00:00:FF"), ("mac", "1:2:3:4:5"), ("mac", "0x1:2:3:4:5:6"),
    ("name", ""), ("name", "a b"), ("name", "ab*c"), ("name", "a\\b"), ("name", "eth*"), ("name", "x" * 16),
    ("addr4", {"prefix": {"addr": "10.250.0.1", "len": 32}}), ("addr4", "010.250.0.1"),
    ("addr6", "fe80::1%lo"), ("addr6", "::ffff:10.250.0.1"), ("proto", "icmpv6"), ("proto", "6"), ("proto", 300),
    ("port", "0080"), ("port", "http"), ("port", "\u0663"), ("port", 65536), ("port", True),
    ("nets", nft.concat({"prefix": {"addr": "10.250.1.9", "len": 24}}, 80)),
    ("nets", nft.concat({"range": ["10.250.1.9", "10.250.1.1"]}, 80)),
    ("nets", nft.concat({"prefix": {"addr": "10.250.1.0", "len": "24"}}, 80)),
])
def test_a_spelling_is_encoded_as_libnftables_adds_it_or_left_to_it(inside, set_name, value):
    """Whatever we encode is what libnftables adds for the same JSON; what
    libnftables refuses or reads otherwise (names it resolves, lenient
    octets) we do not encode, so the fallback decides."""
    nft.run(SPELLINGS.skeleton())
    shape = nfnetlink.Shape.declared(SPELLINGS.sets[set_name])
    try:
        ours = {nfnetlink.identity(e) for e in nfnetlink.encode_elements(shape, [nfnetlink.from_json(shape, value)],
                                                                         True)}
    except nfnetlink.Unencodable:
        return
    nft.run([nft.element_command(SPELLINGS, "add", set_name, value)])   # refused: NftError fails the test
    assert {nfnetlink.identity(e) for e in nfnetlink.shared().elements("inet", SPELLINGS.name, set_name)} == ours
