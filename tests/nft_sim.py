"""A small interpreter of nftables JSON, for judging compiled rulesets
without root: it executes the commands a transaction would send (the
subset of nft our compiler emits: payload/meta/ct matches, sets and
verdict maps with ranges, prefixes and concatenations, jump/goto/return,
accept/drop) for one packet through the inet table's forward hook.

It knows nft, not netpolicy: it reads only the JSON, so comparing its
verdicts with the independent evaluator checks the compiler's output.
"""
import ipaddress

PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58, "icmpv6": 58}
ICMPV6_TYPES = {"nd-router-solicit": 133, "nd-router-advert": 134, "nd-neighbor-solicit": 135,
                "nd-neighbor-advert": 136, "nd-redirect": 137, "echo-request": 128}


class NoMatch(Exception):
    """An expression that cannot be evaluated for this packet (e.g. `ip
    saddr` of an IPv6 packet): the rule does not match."""


class Packet:
    def __init__(self, saddr, daddr, l4proto, dport=None, ct_state="new", icmpv6_type=None):
        self.saddr, self.daddr = ipaddress.ip_address(saddr), ipaddress.ip_address(daddr)
        self.l4proto, self.dport, self.ct_state, self.icmpv6_type = l4proto, dport, ct_state, icmpv6_type
        self.mark = 0


def _scalar(value):
    if isinstance(value, str):
        if value in PROTOCOLS:
            return PROTOCOLS[value]
        if value in ICMPV6_TYPES:
            return ICMPV6_TYPES[value]
        return ipaddress.ip_address(value)
    return value


def _covers(pattern, value):
    """Does a set element field (value, range or prefix) hold ``value``?"""
    if isinstance(pattern, dict) and "range" in pattern:
        lo, hi = (_scalar(x) for x in pattern["range"])
        return type(lo) is type(value) and lo <= value <= hi
    if isinstance(pattern, dict) and "prefix" in pattern:
        network = ipaddress.ip_network(f"{pattern['prefix']['addr']}/{pattern['prefix']['len']}")
        return isinstance(value, (ipaddress.IPv4Address, ipaddress.IPv6Address)) and value in network
    return _scalar(pattern) == value


def _element_matches(key, value):
    if isinstance(key, dict) and "concat" in key:
        return all(_covers(k, v) for k, v in zip(key["concat"], value))
    return _covers(key, value)


class Ruleset:
    def __init__(self, commands):
        self.chains, self.hooks, self.sets = {}, {}, {}
        self.rules_run = 0  # rules evaluated so far: the per-packet cost
        for command in commands:
            (op, body), = command.items()
            (kind, obj), = body.items()
            if op == "add" and kind == "chain":
                self.chains.setdefault(obj["name"], [])
                if "hook" in obj:
                    self.hooks[obj["hook"]] = obj["name"]
            elif op == "add" and kind == "rule":
                self.chains[obj["chain"]].append(obj["expr"])
            elif op == "add" and kind in ("set", "map"):
                self.sets.setdefault(obj["name"], [])
            elif op == "add" and kind == "element":
                self.sets[obj["name"]].extend(obj["elem"])
            elif op == "add" and kind in ("table", "counter"):
                pass
            else:
                raise ValueError(f"the simulator does not know {command}")

    # --- expressions ------------------------------------------------------------
    def value(self, expr, pkt):
        if "payload" in expr:
            proto, field = expr["payload"]["protocol"], expr["payload"]["field"]
            if proto in ("ip", "ip6"):
                if pkt.saddr.version != (4 if proto == "ip" else 6):
                    raise NoMatch
                return pkt.saddr if field == "saddr" else pkt.daddr
            if proto == "th" and field == "dport" and pkt.dport is not None:
                return pkt.dport
            if proto == "icmpv6" and field == "type" and pkt.icmpv6_type is not None:
                return pkt.icmpv6_type
            raise NoMatch
        if "meta" in expr:
            return {"l4proto": pkt.l4proto, "mark": pkt.mark}[expr["meta"]["key"]]
        if "ct" in expr:
            return pkt.ct_state
        if "concat" in expr:
            return tuple(self.value(e, pkt) for e in expr["concat"])
        if "&" in expr:
            left, mask = expr["&"]
            return self.value(left, pkt) & mask
        if "|" in expr:
            left, bits = expr["|"]
            return self.value(left, pkt) | bits
        raise ValueError(f"unknown expression {expr}")

    def lookup(self, name_or_set, value):
        """Look ``value`` up in a named set (``@name``) or an anonymous one."""
        elements = self.sets[name_or_set[1:]] if isinstance(name_or_set, str) else name_or_set["set"]
        for element in elements:
            key, verdict = (element[0], element[1]) if isinstance(element, list) else (element, None)
            if _element_matches(key, value):
                return True, verdict
        return False, None

    def matches(self, match, pkt):
        left, right, op = self.value(match["left"], pkt), match["right"], match["op"]
        if op == "in":  # flags: ct state in [..]
            return left in right
        if isinstance(right, str) and right.startswith("@"):
            return self.lookup(right, left)[0]
        if isinstance(right, dict) and "set" in right:
            return any(_scalar(x) == left for x in right["set"])
        if isinstance(right, dict) and "range" in right:
            return _covers(right, left)
        return left == _scalar(right)

    # --- execution ----------------------------------------------------------------
    def run_chain(self, name, pkt):
        """'accept', 'drop' or None (fell off the end or returned)."""
        for rule in self.chains[name]:
            verdict = self.run_rule(rule, pkt)
            if verdict is None:
                continue
            kind, target = verdict
            if kind in ("accept", "drop"):
                return kind
            if kind == "return":
                return None
            if kind == "jump":
                result = self.run_chain(target, pkt)
                if result is not None:
                    return result
                continue
            if kind == "goto":
                return self.run_chain(target, pkt)
        return None

    def run_rule(self, rule, pkt):
        self.rules_run += 1
        try:
            for stmt in rule:
                if "match" in stmt:
                    if not self.matches(stmt["match"], pkt):
                        return None
                elif "vmap" in stmt:
                    found, verdict = self.lookup(stmt["vmap"]["data"], self.value(stmt["vmap"]["key"], pkt))
                    if not found:
                        return None
                    return self.verdict(verdict)
                elif "mangle" in stmt:
                    pkt.mark = self.value(stmt["mangle"]["value"], pkt)
                elif "counter" in stmt:
                    continue
                else:
                    return self.verdict(stmt)
        except NoMatch:
            return None
        return None

    @staticmethod
    def verdict(stmt):
        (kind, arg), = stmt.items()
        return kind, (arg or {}).get("target") if isinstance(arg, dict) else None

    def forward(self, pkt) -> str:
        """The verdict of the forward hook (policy accept)."""
        return self.run_chain(self.hooks["forward"], pkt) or "accept"
