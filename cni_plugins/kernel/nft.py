"""Our nftables state: tables of our own, changed only in atomic transactions.

A plugin declares its firewall as a `Table`: sets and base chains with
static rules.  What varies per container is set (or map) elements, so a
lookup costs the same with one container as with thousands, and ADD/DEL are
one transaction each.  Every transaction re-declares the table's skeleton
(chains are flushed and refilled), so it is idempotent and heals a ruleset
someone flushed.  Deleting an element that may be absent is done as
add-then-delete in the same transaction (nftables 1.0.6 has no `destroy`).
A table that holds no element after a removal is deleted, so a node with no
attachment carries no pycni state.

libnftables is loaded lazily: only plugins that touch the firewall pay for it.
"""
import fcntl
import os
from contextlib import contextmanager

from ..core.errors import CNIError, KERNEL_FAILURE


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
    hook spec or None, list of rules, each a list of expressions)."""

    registry: dict = {}  # (family, name) -> Table, to read elements back from records

    def __init__(self, family: str, name: str, sets: dict, chains: dict):
        self.family = family
        self.name = name
        self.sets = sets
        self.chains = chains
        Table.registry[(family, name)] = self

    def skeleton(self) -> list[dict]:
        ref = {"family": self.family, "table": self.name}
        cmds = [{"add": {"table": {"family": self.family, "name": self.name}}}]
        for set_name, spec in self.sets.items():
            kind = "map" if "map" in spec else "set"
            cmds.append({"add": {kind: {**ref, "name": set_name, **spec}}})
        for chain, (hook, rules) in self.chains.items():
            cmds.append({"add": {"chain": {**ref, "name": chain, **(hook or {})}}})
            cmds.append({"flush": {"chain": {**ref, "name": chain}}})
            for expr in rules:
                cmds.append({"add": {"rule": {**ref, "chain": chain, "expr": expr}}})
        return cmds

    def element(self, op: str, set_name: str, elem) -> dict:
        # elements of sets and of maps are added and deleted alike
        return {op: {"element": {"family": self.family, "table": self.name, "name": set_name, "elem": [elem]}}}

    def elements(self) -> dict[str, list]:
        """Every element of this table's sets; {} when the table is absent."""
        rc, output, _ = _nft().json_cmd(
            {"nftables": [{"list": {"table": {"family": self.family, "name": self.name}}}]})
        found = {}
        for item in output.get("nftables", []) if rc == 0 else []:
            for kind in ("set", "map"):
                if kind in item:
                    found[item[kind]["name"]] = item[kind].get("elem", [])
        return found


# An element is (table, set name, element value).
Element = tuple


def to_record(elements: list[Element]) -> list:
    """JSON-ready form of elements, for a plugin's attachment record."""
    return [[t.family, t.name, s, e] for t, s, e in elements]


def from_record(items: list) -> list[Element]:
    out = []
    for family, table, set_name, elem in items:
        t = Table.registry.get((family, table))
        if t is not None:
            out.append((t, set_name, elem))
    return out


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


def _tables(elements) -> list[Table]:
    return list({id(e[0]): e[0] for e in elements}.values())


def add_elements(elements: list[Element], extra: list[dict] = ()) -> None:
    """Add elements (and any extra commands) in one transaction."""
    if not elements and not extra:
        return
    with locked():
        cmds = [c for t in _tables(elements) for c in t.skeleton()]
        run(cmds + [t.element("add", s, e) for t, s, e in elements] + list(extra))


def remove_elements(elements: list[Element]) -> None:
    """Remove elements (absent ones are fine) in one transaction, then drop
    every touched table that is left empty."""
    if not elements:
        return
    with locked():
        tables = _tables(elements)
        cmds = []
        for t, s, e in elements:
            cmds += [t.element("add", s, e), t.element("delete", s, e)]
        # Usually the tables are there and this is all; if a table is gone,
        # declare the skeleton so the same commands apply (and it is dropped
        # again below as empty).
        rc, _, _ = _nft().json_cmd({"nftables": cmds})
        if rc != 0:
            run([c for t in tables for c in t.skeleton()] + cmds)
        empty = [t for t in tables if not any(t.elements().values())]
        if empty:
            run([{"delete": {"table": {"family": t.family, "name": t.name}}} for t in empty])


def elements_of(table: Table) -> dict[str, list]:
    with locked():
        return table.elements()
