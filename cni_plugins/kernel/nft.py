"""Our nftables state: tables of our own, changed only in atomic transactions.

A plugin declares its firewall as a `Table`: sets and base chains with
static rules.  What varies per container is set (or map) elements, so a
lookup costs the same with one container as with thousands, and ADD/DEL are
one transaction each.

Element changes go to the kernel as one nf_tables netlink batch
(nfnetlink.py) when the table stands as declared: every set there with its
declared type, every chain holding its declared number of rules, the first
marked with a digest of the declaration, so that a table another release
declared is declared again (a query or two, well under a millisecond).
Otherwise, or when the kernel refuses the batch, they go through
libnftables in a transaction that re-declares the table's skeleton (chains
are flushed and refilled), which creates the table or heals one someone
flushed.  libnftables is the slow path on a node with large tables of
others: it first fetches a cache of every table in the namespace (about
10 ms with 1,000 network policies loaded).  So a process records how the
kernel holds a table it declared, and when the table is absent again (its
last element left and it was dropped) creates it from that record in the
batch that adds the elements.

Deleting an element that may be absent is done as add-then-delete in the
same transaction (nftables 1.0.6 has no `destroy`; the add also refuses a
map key that holds another owner's value).  A table that holds no element
after a removal is deleted, so a node with no attachment carries no pycni
state.

An element is (table, set name, value), the value in nft's JSON form.
Records keep elements as [family, table, set, value]: removing them needs
only those names (the kernel tells the sets' types), so an element read
back from a record is removed whether or not the plugin that declared its
table was ever imported in this process.

libnftables is loaded lazily: only what takes the slow path pays for it.
"""
import fcntl
import os
from contextlib import contextmanager

from . import nfnetlink
from .errors import NetlinkError, NftError
from .netns import current_inode
from .nfnetlink import NfTables, Shape, Unencodable, shared


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
        self._mark = None

    @property
    def mark(self) -> str:
        """The comment of each chain's first rule: a digest of the whole
        declaration, so that a table in the kernel can be told to be this
        declaration and not another release's that holds as many rules."""
        if self._mark is None:
            import json
            import zlib   # hashlib would add ~5 ms to a plugin's start; this is no defence, just a tag

            declared = json.dumps([self.family, self.name, self.sets, self.chains, list(self.counters)],
                                  sort_keys=True).encode()
            self._mark = f"pycni {zlib.crc32(declared):08x}{zlib.adler32(declared):08x}"
        return self._mark

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
            for n, expr in enumerate(rules):
                rule = {**ref, "chain": chain, "expr": expr}
                cmds.append({"add": {"rule": {**rule, "comment": self.mark} if n == 0 else rule}})
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
_ctx = (0, None)   # (network namespace, libnftables context)


def _nft():
    """The libnftables context for the calling thread's network namespace:
    a context keeps the netlink socket of the namespace it was made in."""
    global _ctx
    if _ctx[0] != current_inode():
        import nftables

        ctx = nftables.Nftables()
        ctx.set_json_output(True)
        ctx.set_handle_output(False)
        _ctx = (current_inode(), ctx)
    return _ctx[1]


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


def _as_declared(client: NfTables, table: Table, shapes: dict | None) -> bool:
    """Whether the table stands as declared: each set there with its
    declared type (``shapes``: the kernel's, None when the table is absent),
    each chain with its number of rules, the first of them marked with this
    declaration's digest (`Table.mark`: a table another release declared is
    declared again).  A rule someone else changed in place, keeping its
    chain's count and the first rule, goes unnoticed until the table is
    dropped with its last element.  A table with named counters is always
    declared again: they are not checked here."""
    if shapes is None or table.counters:
        return False
    if any(shapes.get(name) != Shape.declared(spec) for name, spec in table.sets.items()):
        return False
    held = client.chain_rules(table.family, table.name)
    mark = table.mark.encode()
    for chain, (_, rules) in table.chains.items():
        count, first = held.get(chain, (0, b""))
        if count != len(rules) or (rules and mark not in first):
            return False
    return True


# Table -> what creates it over netlink, as the kernel listed it right after
# libnftables declared it in this process (see `add_elements`)
_creations: dict = {}


def _record_creation(tables: list) -> None:
    """Record how to create each table libnftables just declared, when it
    holds just what it declares.  Any older record is dropped first: this
    runs only when the netlink path was refused or unusable, and a record
    that failed to create its table must not be tried on every ADD."""
    for t in tables:
        _creations.pop(t, None)
        if t.counters:   # named counters are not in a recreation
            continue
        try:
            objects = shared().recreation(t.family, t.name, list(t.chains))
        except OSError:
            continue
        if objects and len(objects) == 1 + len(t.chains) + len(t.sets) + sum(len(r) for _, r in t.chains.values()):
            _creations[t] = objects


def _wire(shapes: dict, element: Element, with_data: bool) -> list[bytes]:
    t, s, e = element
    shape = shapes[(t.family, t.name)][s]
    if shape is None:
        raise Unencodable(f"set {t.family} {t.name} {s} is of a type we do not encode")
    return nfnetlink.encode_elements(shape, [nfnetlink.from_json(shape, e)], with_data)


def _encode(batch: nfnetlink.Batch, op: str, shapes: dict, elements: list[Element]) -> None:
    for element in elements:
        t, s, _ = element
        batch.add(op, t.family, t.name, s, _wire(shapes, element, op == "add"))


def _add_by_netlink(elements: list[Element]) -> bool:
    """Add through one netlink batch, which also creates a table that is
    absent when this process has recorded how; False (nothing changed) when
    a table must be declared by libnftables, or the kernel refused."""
    try:
        client = shared()
        shapes, batch = {}, nfnetlink.Batch()
        for t in _tables(elements):
            found = client.sets(t.family, t.name)
            if found is None and _creations.get(t):
                batch.create_table(t.family, t.name, _creations[t])
                found = {name: Shape.declared(spec) for name, spec in t.sets.items()}
            elif not _as_declared(client, t, found):
                return False
            shapes[(t.family, t.name)] = found
        _encode(batch, "add", shapes, elements)
        client.commit(batch)
    except (OSError, Unencodable):
        return False
    return True


def add_elements(elements: list[Element]) -> None:
    """Add elements in one transaction; each element's table is a Table,
    declared (with its skeleton) when it is not there as declared.  The
    first declaration in a process goes through libnftables, and is then
    recorded to be repeated over netlink when the table is absent again
    (after the last element left, the table was dropped)."""
    if not elements:
        return
    with locked():
        if not _add_by_netlink(elements):
            tables = _tables(elements)
            run([c for t in tables for c in t.skeleton()] + [element_command(t, "add", s, e) for t, s, e in elements])
            _record_creation(tables)


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


def _remove_by_netlink(elements: list[Element]) -> bool:
    """`remove_elements` through netlink batches; False when something
    failed (then libnftables does it all again: removing is idempotent)."""
    try:
        client = shared()
        tables = _tables(elements)
        shapes = {(t.family, t.name): client.sets(t.family, t.name) for t in tables}
        batches = []
        for group in _owner_groups(elements):
            if all(s in (shapes[(t.family, t.name)] or ()) for t, s, _ in group):  # else absent, or not ours
                batch = nfnetlink.Batch()
                _encode(batch, "add", shapes, group)
                _encode(batch, "delete", shapes, group)
                batches.append(batch)
        whole = nfnetlink.Batch()
        for batch in batches:
            whole.extend(batch)
        try:
            client.commit(whole)
        except NetlinkError:  # refused: remove each owner group on its own
            for batch in batches:
                try:
                    client.commit(batch)
                except NetlinkError:
                    pass
        empty = nfnetlink.Batch()
        for t in tables:
            held = shapes[(t.family, t.name)]
            if held is not None and not any(client.elements(t.family, t.name, s) for s in held):
                empty.delete_table(t.family, t.name)
        client.commit(empty)
    except (OSError, Unencodable):
        return False
    return True


def remove_elements(elements: list[Element]) -> None:
    """Remove elements (absent ones are fine) in one transaction, then drop
    every touched table that is left empty.  When that transaction is
    refused (a table or set is gone, or a map key holds another owner's
    value), each owner group is removed on its own, and the refused ones,
    which are not there or not ours, are left alone."""
    if not elements:
        return
    with locked():
        if _remove_by_netlink(elements):
            return
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


def _present_by_netlink(elements: list[Element]) -> list[bool]:
    client = shared()
    shapes = {(t.family, t.name): client.sets(t.family, t.name) or {} for t in _tables(elements)}
    held: dict = {}
    found = []
    for t, s, e in elements:
        if s not in shapes[(t.family, t.name)]:
            found.append(False)
            continue
        if (t.family, t.name, s) not in held:
            held[(t.family, t.name, s)] = {nfnetlink.identity(x) for x in client.elements(t.family, t.name, s)}
        ours = {nfnetlink.identity(x) for x in _wire(shapes, (t, s, e), True)}
        found.append(ours <= held[(t.family, t.name, s)])
    return found


def present(elements: list[Element]) -> list[bool]:
    """For each element: is it in its table now?  (One read per set.)"""
    with locked():
        try:
            return _present_by_netlink(elements)
        except (OSError, Unencodable):
            pass
        held = {}
        for t in _tables(elements):
            held[(t.family, t.name)] = {name: {canonical(e) for e in elems}
                                        for name, elems in (table_elements(t) or {}).items()}
    return [canonical(e) in held[(t.family, t.name)].get(s, ()) for t, s, e in elements]


def elements_of(table) -> dict[str, list]:
    """Every element of a table's sets and maps ({} when it is absent)."""
    with locked():
        return table_elements(table) or {}
