"""The bridge plugin's firewall: masquerade and MAC anti-spoofing as set
elements in static nftables rules (see nft.py)."""
from .kernel import nft
from .kernel.nft import RETURN, concat, match, meta, payload, prefix


def _masq_rules(ip: str, saddr_set: str, exempt_set: str, multicast: str):
    src, dst = payload(ip, "saddr"), payload(ip, "daddr")
    return [
        # traffic within the container's own subnet keeps its source
        [match(concat(src, dst), f"@{exempt_set}"), RETURN],
        [match(dst, prefix(multicast)), RETURN],
        [match(src, f"@{saddr_set}"), {"masquerade": None}],
    ]


MASQUERADE = nft.Table("inet", "pycni_bridge", sets={
    "masq4": {"type": "ipv4_addr"},
    "masq6": {"type": "ipv6_addr"},
    "nomasq4": {"type": ["ipv4_addr", "ipv4_addr"], "flags": ["interval"]},
    "nomasq6": {"type": ["ipv6_addr", "ipv6_addr"], "flags": ["interval"]},
}, chains={
    "postrouting": ({"type": "nat", "hook": "postrouting", "prio": 100, "policy": "accept"},
                    _masq_rules("ip", "masq4", "nomasq4", "224.0.0.0/4")
                    + _masq_rules("ip6", "masq6", "nomasq6", "ff00::/8")),
})

SPOOFCHK = nft.Table("bridge", "pycni_bridge", sets={
    "spoofchk_ports": {"type": "ifname"},
    "spoofchk_macs": {"type": ["ifname", "ether_addr"]},
}, chains={
    "spoofchk": ({"type": "filter", "hook": "prerouting", "prio": -300, "policy": "accept"}, [
        [match(concat(meta("iifname"), payload("ether", "saddr")), "@spoofchk_macs"), RETURN],
        [match(meta("iifname"), "@spoofchk_ports"), {"drop": None}],
    ]),
})


def masq_elements(address: str, subnet: str) -> list[nft.Element]:
    """Masquerade one container address for everything outside ``subnet``."""
    v6 = ":" in address
    return [
        (MASQUERADE, "masq6" if v6 else "masq4", address),
        (MASQUERADE, "nomasq6" if v6 else "nomasq4", concat(address, prefix(subnet))),
    ]


def spoofchk_elements(host_ifname: str, mac: str) -> list[nft.Element]:
    return [
        (SPOOFCHK, "spoofchk_ports", host_ifname),
        (SPOOFCHK, "spoofchk_macs", concat(host_ifname, mac)),
    ]
