"""Our nftables state: tables of our own, changed only in atomic transactions.

A plugin declares its firewall as a `Table`: sets and base chains with
static rules.  What varies per container is set (or map) elements, so a
lookup costs the same with one container as with thousands, and ADD/DEL are
one transaction each.  Every adding transaction re-declares the table's
skeleton (chains are flushed and refilled), so it is idempotent and heals a
ruleset someone flushed.  Deleting an element that may be absent is done as
add-then-delete in the same transaction (nftables 1.0.6 has no `destroy`).
A table that holds no element after a removal is deleted, so a node with no
attachment carries no pycni state.

An element is (table, set name, value).  Records keep elements as
[family, table, set, value]: removing them needs only those names, so an
element read back from a record is removed whether or not the plugin that
declared its table was ever imported in this process.

libnftables is loaded lazily: only plugins that touch the firewall pay for it.
"""
import fcntl
import os
from contextlib import contextmanager

from .errors import NftError


# --- expression helpers (nftables JSON) ----------------------------------------
def match(left, right, op="=="):
    return {"match": {"op": op, "left": left, "right": right}}


def payload(proto, field):
    return {"payload": {"protocol": proto, "field": field}}


def meta(key):
    return {"meta": {"key": key}}


def concat(*items):
    return {"concat": list(items)}


def prefix(cidr: str):
    addr, length = cidr.split("/")
    return {"prefix": {"addr": addr, "len": int(length)}}


RETURN = {"return": None}


class Table:
    """One nftables table of ours: ``sets`` maps name -> spec (``type``,
    optional ``flags``, ``map``...), ``chains`` maps name -> (base chain
    hook spec or None, list of rules, each a list of expressions).
    ``counters`` are named counter objects (rules count into them with
    ``{"counter": name}``): unlike a rule's own counter they keep their
    values when the skeleton is declared again."""

    def __init__(self, family: str, name: str, sets: dict, chains: dict, counters: tuple[str, ...] = ()):
        self.family = family
        self.name = name
        self.sets = sets
        self.chains = chains
        self.counters = counters

    def skeleton(self) -> list[dict]:
        ref = {"family": self.family, "table": self.name}
        cmds = [{"add": {"table": {"family": self.family, "name": self.name}}}]
        for set_name, spec in self.sets.items():
            kind = "map" if "map" in spec else "set"
            cmds.append({"add": {kind: {**ref, "name": set_name, **spec}}})
        cmds += [{"add": {"counter": {**ref, "name": counter}}} for counter in self.counters]
        for chain, (hook, rules) in self.chains.items():
            cmds.append({"add": {"chain": {**ref, "name": chain, **(hook or {})}}})
            cmds.append({"flush": {"chain": {**ref, "name": chain}}})
            for expr in rules:
                cmds.append({"add": {"rule": {**ref, "chain": chain, "expr": expr}}})
        return cmds


class TableName:
    """A table known only by name (an element read back from a record)."""

    __slots__ = ("family", "name")

    def __init__(self, family: str, name: str):
        self.family, self.name = family, name


def element_command(table, op: str, set_name: str, elem) -> dict:
    # elements of sets and of maps are added and deleted alike
    return {op: {"element": {"family": table.family, "table": table.name, "name": set_name, "elem": [elem]}}}


def table_elements(table) -> dict[str, list] | None:
    """Every element of a table's sets and maps; None when the table is absent."""
    rc, output, _ = _nft().json_cmd({"nftables": [{"list": {"table": {"family": table.family, "name": table.name}}}]})
    if rc != 0:
        return None
    found = {}
    for item in output.get("nftables", []):
        for kind in ("set", "map"):
            if kind in item:
                found[item[kind]["name"]] = item[kind].get("elem", [])
    return found


Element = tuple


def to_record(elements: list[Element]) -> list:
    """JSON-ready form of elements, for a plugin's attachment record."""
    return [[t.family, t.name, s, e] for t, s, e in elements]


def from_record(items: list) -> list[Element]:
    return [(TableName(family, table), set_name, elem) for family, table, set_name, elem in items]


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
        raise NftError("nftables transaction failed", (error or "").strip())
    return output or {}


@contextmanager
def locked():
    """Serialise our read-then-write transactions (dropping an empty table
    must not race an ADD).  The tables belong to a network namespace, so the
    lock does too: flock on the namespace file itself, which every process
    and thread in that netns sees as the same inode."""
    fd = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _tables(elements) -> list:
    return list({(e[0].family, e[0].name): e[0] for e in elements}.values())


def add_elements(elements: list[Element], extra: list[dict] = ()) -> None:
    """Add elements (and any extra commands) in one transaction; each
    element's table is a Table, whose skeleton the transaction declares."""
    if not elements and not extra:
        return
    with locked():
        cmds = [c for t in _tables(elements) for c in t.skeleton()]
        run(cmds + [element_command(t, "add", s, e) for t, s, e in elements] + list(extra))


def _removal(group: list[Element]) -> list[dict]:
    return [c for t, s, e in group for c in (element_command(t, "add", s, e), element_command(t, "delete", s, e))]


def _owner_groups(elements: list[Element]) -> list[list[Element]]:
    """Map elements of one table with the same key were added together for
    one owner (portmap's address and port maps): they stand or fall
    together, so a key another container holds now keeps all its maps."""
    groups: dict = {}
    for i, (t, s, e) in enumerate(elements):
        key = (t.family, t.name, repr(e[0])) if isinstance(e, list) else i
        groups.setdefault(key, []).append((t, s, e))
    return list(groups.values())


def remove_elements(elements: list[Element]) -> None:
    """Remove elements (absent ones are fine) in one transaction, then drop
    every touched table that is left empty.  When that transaction is
    refused (a table or set is gone, or a map key holds another owner's
    value), each owner group is removed on its own, and the refused ones,
    which are not there or not ours, are left alone."""
    if not elements:
        return
    with locked():
        rc, _, _ = _nft().json_cmd({"nftables": _removal(elements)})
        if rc != 0:
            for group in _owner_groups(elements):
                _nft().json_cmd({"nftables": _removal(group)})
        left = [(t, table_elements(t)) for t in _tables(elements)]
        empty = [t for t, held in left if held is not None and not any(held.values())]
        if empty:
            run([{"delete": {"table": {"family": t.family, "name": t.name}}} for t in empty])


def canonical(value) -> str:
    """An element as comparable text: nftables lists a /32 prefix as a bare
    address and addresses in their compressed form."""
    import ipaddress
    import json

    def norm(v):
        if isinstance(v, dict) and "prefix" in v:
            p = v["prefix"]
            addr = ipaddress.ip_address(p["addr"])
            if p["len"] == addr.max_prefixlen:
                return addr.compressed
            return {"prefix": {"addr": addr.compressed, "len": p["len"]}}
        if isinstance(v, dict):
            return {k: norm(x) for k, x in v.items()}
        if isinstance(v, list):
            return [norm(x) for x in v]
        if isinstance(v, str):
            try:
                return ipaddress.ip_address(v).compressed
            except ValueError:
                return v
        return v
    return json.dumps(norm(value), sort_keys=True)


def present(elements: list[Element]) -> list[bool]:
    """For each element: is it in its table now?  (One read per table.)"""
    held = {}
    for t in _tables(elements):
        held[(t.family, t.name)] = {name: {canonical(e) for e in elems}
                                    for name, elems in elements_of(t).items()}
    return [canonical(e) in held[(t.family, t.name)].get(s, ()) for t, s, e in elements]


def elements_of(table) -> dict[str, list]:
    """Every element of a table's sets and maps ({} when it is absent)."""
    with locked():
        return table_elements(table) or {}
