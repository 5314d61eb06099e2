"""nf_tables over netlink, without libnftables: set and map element
changes as one atomic batch, and the few reads that decide whether such a
batch can be used (a table's sets, its chains' rules: how many and the
first one's comment, a set's elements).

Why: before any command, libnftables fetches a cache of every table in
the network namespace (chains, sets, objects, interval sets' elements).
With a large table of someone else's loaded (network policy: 1,000
policies over 5,000 endpoints) that costs each of our element changes
about 10 ms; a batch sent here costs well under one, and the kernel
applies it all or nothing like any nf_tables transaction.

Elements are in a canonical form: a key is a tuple of (lo, hi) integer
pairs, one per concatenated field (lo == hi for a single value); a value
is None (sets), an integer (maps to a typed value) or a verdict
(("accept",), ("drop",), ("jump", chain), ("goto", chain)).  `from_json`
reads nft's JSON form of an element into it.

On the wire, as nft 1.0.6 sends them (tests/test_nfnetlink.py checks each
kind against nft's own listing):
- a field is big-endian in its type's length (FIELDS); an ifname is 16
  bytes, NUL-padded;
- a concatenation pads each field to 4 bytes (nft's registers);
- in an interval set of one field (the kernel's rbtree), [lo, hi] is an
  element at lo and one at hi + 1 flagged as the interval's end (none when
  hi is the last value);
- in an interval set of a concatenation (pipapo), the key holds each
  field's lo and NFTA_SET_ELEM_KEY_END each field's hi;
- map data is the data type's length, unpadded; verdicts are nested.
"""
from __future__ import annotations

import _thread
import errno
import ipaddress
import struct

from .errors import NetlinkError
from .netlink import (F_ACK, F_CREATE, F_DUMP, F_REQUEST, NLMSG_ERROR, Netlink, attr, attr_str, error_of,
                      iter_attrs, nested, parse_attrs)
from .netns import current_inode

NETLINK_NETFILTER = 12
NETLINK_CAP_ACK = 10
NFNL_SUBSYS_NFTABLES = 10
NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NFT_MSG_NEWTABLE, NFT_MSG_GETTABLE, NFT_MSG_DELTABLE = 0, 1, 2
NFT_MSG_NEWCHAIN, NFT_MSG_GETCHAIN, NFT_MSG_NEWRULE, NFT_MSG_GETRULE = 3, 4, 6, 7
NFT_MSG_NEWSET, NFT_MSG_GETSET = 9, 10
NFT_MSG_NEWSETELEM, NFT_MSG_GETSETELEM, NFT_MSG_DELSETELEM = 12, 13, 14
_OBJECTS = {NFT_MSG_NEWTABLE: "create table", NFT_MSG_DELTABLE: "delete table", NFT_MSG_NEWCHAIN: "create a chain in",
            NFT_MSG_NEWSET: "create a set in", NFT_MSG_NEWRULE: "create a rule in"}
F_EXCL, F_APPEND = 0x200, 0x800
NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_USERDATA = 1, 2, 6
NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY = 1, 3, 4, 5
NFTA_CHAIN_TYPE, NFTA_CHAIN_FLAGS, NFTA_CHAIN_USERDATA = 7, 10, 12
NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_COMPAT, NFTA_RULE_USERDATA = 1, 2, 4, 5, 7
NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS = 1, 2, 3
NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN = 4, 5, 6, 7
NFTA_SET_POLICY, NFTA_SET_DESC, NFTA_SET_ID, NFTA_SET_TIMEOUT, NFTA_SET_GC_INTERVAL = 8, 9, 10, 11, 12
NFTA_SET_USERDATA, NFTA_SET_EXPR, NFTA_SET_EXPRESSIONS = 13, 17, 18
NFT_SET_ANONYMOUS, NFT_SET_INTERVAL, NFT_SET_MAP, NFT_SET_EVAL, NFT_SET_OBJECT = 0x1, 0x4, 0x8, 0x20, 0x40
NFT_CHAIN_BASE = 0x1
_FLAGS = {NFT_MSG_NEWTABLE: NFTA_TABLE_FLAGS, NFT_MSG_NEWCHAIN: NFTA_CHAIN_FLAGS, NFT_MSG_NEWSET: NFTA_SET_FLAGS}
_ALLOWED_FLAGS = {NFT_MSG_NEWTABLE: 0, NFT_MSG_NEWCHAIN: NFT_CHAIN_BASE, NFT_MSG_NEWRULE: 0,
                  NFT_MSG_NEWSET: ~(NFT_SET_ANONYMOUS | NFT_SET_EVAL | NFT_SET_OBJECT)}
_UNCREATABLE = {NFT_MSG_NEWSET: (NFTA_SET_EXPR, NFTA_SET_EXPRESSIONS), NFT_MSG_NEWRULE: (NFTA_RULE_COMPAT,)}
# what creates each kind of object, of what the kernel lists about it
_CREATION = {
    NFT_MSG_NEWTABLE: (NFTA_TABLE_NAME, NFTA_TABLE_FLAGS, NFTA_TABLE_USERDATA),
    NFT_MSG_NEWCHAIN: (NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME, NFTA_CHAIN_HOOK, NFTA_CHAIN_POLICY, NFTA_CHAIN_TYPE,
                       NFTA_CHAIN_USERDATA),
    NFT_MSG_NEWSET: (NFTA_SET_TABLE, NFTA_SET_NAME, NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN,
                     NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN, NFTA_SET_POLICY, NFTA_SET_DESC, NFTA_SET_TIMEOUT,
                     NFTA_SET_GC_INTERVAL, NFTA_SET_USERDATA),
    NFT_MSG_NEWRULE: (NFTA_RULE_TABLE, NFTA_RULE_CHAIN, NFTA_RULE_EXPRESSIONS, NFTA_RULE_USERDATA),
}
NFTA_SET_ELEM_LIST_TABLE, NFTA_SET_ELEM_LIST_SET, NFTA_SET_ELEM_LIST_ELEMENTS = 1, 2, 3
NFTA_LIST_ELEM = 1
NFTA_SET_ELEM_KEY, NFTA_SET_ELEM_DATA, NFTA_SET_ELEM_FLAGS, NFTA_SET_ELEM_KEY_END = 1, 2, 3, 10
NFTA_DATA_VALUE, NFTA_DATA_VERDICT = 1, 2
NFTA_VERDICT_CODE, NFTA_VERDICT_CHAIN = 1, 2
NFT_SET_ELEM_INTERVAL_END = 1
NFT_DATA_VERDICT = 0xFFFFFF00
VERDICTS = {"accept": 1, "drop": 0, "jump": -3, "goto": -4}
FAMILIES = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
# nft type name -> (nft's datatype number, bytes); a concatenation's type
# number is its fields' numbers, 6 bits each, the first field highest
FIELDS = {"ipv4_addr": (7, 4), "ipv6_addr": (8, 16), "ether_addr": (9, 6), "inet_proto": (12, 1),
          "inet_service": (13, 2), "ifname": (41, 16)}
_TYPE_NAMES = {number: name for name, (number, _) in FIELDS.items()}
PROTOCOLS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58, "sctp": 132}
MESSAGE_BYTES = 60000   # the elements of one message: an attribute's length is 16 bits
_HEADER = struct.Struct("=IHHII")
_NFGEN = struct.Struct(">BBH")   # nfgenmsg: family, version, resource id (big-endian)
_U32 = struct.Struct(">I")


class Unencodable(ValueError):
    """An element or set this module does not encode (libnftables does)."""


class Shape:
    """What a set holds: ``key``, the nft types of its (concatenated)
    fields; ``data``, a map's data type ("verdict" or a field type; None
    for a plain set); ``interval``: ranges allowed."""

    __slots__ = ("key", "data", "interval")

    def __init__(self, key: tuple[str, ...], data: str | None = None, interval: bool = False):
        self.key, self.data, self.interval = tuple(key), data, interval

    @classmethod
    def declared(cls, spec: dict) -> Shape:
        """The shape of an nft JSON set or map declaration."""
        key = spec.get("type")
        return cls(tuple(key) if isinstance(key, list) else (key,), spec.get("map"),
                   "interval" in spec.get("flags", ()))

    def _astuple(self):
        return self.key, self.data, self.interval

    def __eq__(self, other):
        return isinstance(other, Shape) and self._astuple() == other._astuple()

    def __hash__(self):
        return hash(self._astuple())

    def __repr__(self):
        return f"Shape{self._astuple()!r}"


# --- canonical -> wire ------------------------------------------------------------
def _field_bytes(kind: str, value: int) -> bytes:
    if kind not in FIELDS:
        raise Unencodable(f"cannot encode a field of type {kind}")
    size = FIELDS[kind][1]
    if not 0 <= value < 1 << (8 * size):
        raise Unencodable(f"{value} does not fit {kind}")
    return value.to_bytes(size, "big")


def _key(kinds: tuple[str, ...], values: list[int]) -> bytes:
    if len(kinds) == 1:
        return _field_bytes(kinds[0], values[0])
    parts = [_field_bytes(k, v) for k, v in zip(kinds, values)]
    return b"".join(p + b"\0" * (-len(p) % 4) for p in parts)


def _data(kind: str, value) -> bytes:
    if kind == "verdict":
        verdict = [attr(NFTA_VERDICT_CODE, struct.pack(">i", VERDICTS[value[0]]))]
        if len(value) > 1:
            verdict.append(attr_str(NFTA_VERDICT_CHAIN, value[1]))
        return nested(NFTA_SET_ELEM_DATA, nested(NFTA_DATA_VERDICT, *verdict))
    return nested(NFTA_SET_ELEM_DATA, attr(NFTA_DATA_VALUE, _field_bytes(kind, value)))


def _element(key: bytes, data: bytes = b"", key_end: bytes = b"", end: bool = False) -> bytes:
    attrs = [nested(NFTA_SET_ELEM_KEY, attr(NFTA_DATA_VALUE, key))]
    if key_end:
        attrs.append(nested(NFTA_SET_ELEM_KEY_END, attr(NFTA_DATA_VALUE, key_end)))
    if end:
        attrs.append(attr(NFTA_SET_ELEM_FLAGS, _U32.pack(NFT_SET_ELEM_INTERVAL_END)))
    if data:
        attrs.append(data)
    return nested(NFTA_LIST_ELEM, *attrs)


def encode_elements(shape: Shape, items, with_data: bool) -> list[bytes]:
    """Netlink elements of canonical (key, value) items; ``with_data``:
    send a map's values (adds, not deletes)."""
    if shape.data is not None and shape.data != "verdict" and shape.data not in FIELDS:
        raise Unencodable(f"cannot encode map data of type {shape.data}")
    out = []
    for key, value in items:
        if len(key) != len(shape.key):
            raise Unencodable(f"a key of {len(key)} fields for a set of type {shape.key}")
        data = _data(shape.data, value) if with_data and shape.data is not None else b""
        lows, highs = [lo for lo, _ in key], [hi for _, hi in key]
        if not shape.interval:
            if lows != highs:
                raise Unencodable(f"a range in a set without intervals: {key}")
            out.append(_element(_key(shape.key, lows), data))
        elif len(shape.key) > 1:
            out.append(_element(_key(shape.key, lows), data, key_end=_key(shape.key, highs)))
        else:
            out.append(_element(_key(shape.key, lows), data))
            if highs[0] != (1 << (8 * FIELDS[shape.key[0]][1])) - 1:
                out.append(_element(_key(shape.key, [highs[0] + 1]), end=True))
    return out


def identity(element: bytes) -> tuple:
    """An encoded element (or one the kernel lists) as comparable data:
    key, key end, interval-end flag, map data."""
    attrs = parse_attrs(element, 4)   # inside its NFTA_LIST_ELEM header
    flags = _U32.unpack(attrs[NFTA_SET_ELEM_FLAGS])[0] if NFTA_SET_ELEM_FLAGS in attrs else 0
    data = parse_attrs(attrs.get(NFTA_SET_ELEM_DATA, b""))
    verdict = parse_attrs(data.get(NFTA_DATA_VERDICT, b""))
    return (parse_attrs(attrs[NFTA_SET_ELEM_KEY]).get(NFTA_DATA_VALUE),
            parse_attrs(attrs.get(NFTA_SET_ELEM_KEY_END, b"")).get(NFTA_DATA_VALUE),
            flags & NFT_SET_ELEM_INTERVAL_END, data.get(NFTA_DATA_VALUE),
            verdict.get(NFTA_VERDICT_CODE), verdict.get(NFTA_VERDICT_CHAIN, b"").rstrip(b"\0"))


# --- nft JSON -> canonical -----------------------------------------------------------
def _scalar(kind: str, item) -> int:
    """A value in the one spelling whose meaning is certain; nft's others
    (host and service names, a MAC's one-digit octets, a scoped IPv6
    address, an ifname wildcard) are left to libnftables."""
    try:
        if kind in ("ipv4_addr", "ipv6_addr") and isinstance(item, str) and "%" not in item:
            address = ipaddress.ip_address(item)
            if address.version == (4 if kind == "ipv4_addr" else 6):
                return int(address)
        elif kind == "ifname" and isinstance(item, str) and item and "\0" not in item \
                and not item.endswith(("*", "\\")):
            name = item.encode()
            if len(name) < 16:
                return int.from_bytes(name.ljust(16, b"\0"), "big")
        elif kind == "ether_addr" and isinstance(item, str):
            octets = item.split(":")
            if len(octets) == 6 and all(len(o) == 2 and o.isascii() and o.isalnum() for o in octets):
                return int("".join(octets), 16)
        elif kind == "inet_proto":
            return PROTOCOLS[item] if isinstance(item, str) else _integer(item)
        elif kind == "inet_service":
            return int(item) if isinstance(item, str) and item.isascii() and item.isdigit() else _integer(item)
    except (ValueError, KeyError):
        pass
    raise Unencodable(f"cannot encode {item!r} as {kind}")


def _integer(item) -> int:
    if isinstance(item, int) and not isinstance(item, bool):
        return item
    raise ValueError(item)


def _field(kind: str, item, interval: bool) -> tuple[int, int]:
    """One field's (lo, hi); a prefix or range only where nft takes one
    (an interval set: it refuses them elsewhere, even a /32), and as nft
    takes it (a prefix's host bits cleared, a range not reversed)."""
    if not isinstance(item, dict):
        value = _scalar(kind, item)
        return value, value
    if interval and "prefix" in item and kind in ("ipv4_addr", "ipv6_addr"):
        prefix = item["prefix"]
        base = _scalar(kind, prefix.get("addr"))
        network_class = ipaddress.IPv4Network if kind == "ipv4_addr" else ipaddress.IPv6Network
        try:
            network = network_class((base, _integer(prefix.get("len"))), strict=False)
        except ValueError:
            raise Unencodable(f"cannot encode {item!r} as {kind}") from None
        return int(network.network_address), int(network.broadcast_address)
    if interval and "range" in item and len(item["range"]) == 2:
        lo, hi = (_scalar(kind, end) for end in item["range"])
        if lo <= hi:
            return lo, hi
    raise Unencodable(f"cannot encode {item!r} as {kind}{'' if interval else ' in a set without intervals'}")


def _verdict(item) -> tuple:
    if isinstance(item, dict) and len(item) == 1:
        (verdict, arg), = item.items()
        if verdict in ("accept", "drop") and arg is None:
            return (verdict,)
        if verdict in ("jump", "goto") and isinstance(arg, dict) and isinstance(arg.get("target"), str):
            return verdict, arg["target"]
    raise Unencodable(f"cannot encode {item!r} as a verdict")


def from_json(shape: Shape, element) -> tuple[tuple, object]:
    """An element as nft JSON writes it (a map's as [key, value]) ->
    canonical (key, value)."""
    value = None
    if shape.data is not None:
        if not (isinstance(element, list) and len(element) == 2):
            raise Unencodable(f"a map element needs a key and a value: {element!r}")
        element, data = element
        value = _verdict(data) if shape.data == "verdict" else _scalar(shape.data, data)
    fields = element["concat"] if isinstance(element, dict) and "concat" in element else [element]
    if len(fields) != len(shape.key):
        raise Unencodable(f"{element!r} does not fit a set of type {shape.key}")
    return tuple(_field(kind, f, shape.interval) for kind, f in zip(shape.key, fields)), value


# --- wire -> shapes ---------------------------------------------------------------------
def _types(number: int, length: int) -> tuple[str, ...] | None:
    names = []
    while number:
        if number & 0x3F not in _TYPE_NAMES:
            return None
        names.insert(0, _TYPE_NAMES[number & 0x3F])
        number >>= 6
    if not names:
        return None
    sizes = [FIELDS[n][1] for n in names]
    size = sizes[0] if len(sizes) == 1 else sum(s + -s % 4 for s in sizes)
    return tuple(names) if size == length else None


def _shape(attrs: dict[int, bytes]) -> Shape | None:
    """A set's shape from its netlink attributes; None for one of types
    this module does not know."""
    u32 = {k: _U32.unpack(v)[0] for k, v in attrs.items()
           if k in (NFTA_SET_FLAGS, NFTA_SET_KEY_TYPE, NFTA_SET_KEY_LEN, NFTA_SET_DATA_TYPE, NFTA_SET_DATA_LEN)}
    flags = u32.get(NFTA_SET_FLAGS, 0)
    key = _types(u32.get(NFTA_SET_KEY_TYPE, 0), u32.get(NFTA_SET_KEY_LEN, 0))
    if key is None or flags & NFT_SET_OBJECT:
        return None
    data = None
    if flags & NFT_SET_MAP:
        if u32.get(NFTA_SET_DATA_TYPE) == NFT_DATA_VERDICT:
            data = "verdict"
        else:
            found = _types(u32.get(NFTA_SET_DATA_TYPE, 0), u32.get(NFTA_SET_DATA_LEN, 0))
            if found is None or len(found) != 1:
                return None
            data = found[0]
    return Shape(key, data, bool(flags & NFT_SET_INTERVAL))


def _raw_attrs(data: bytes, offset: int):
    """(type, the attribute as sent, header and flags included) of each."""
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        yield kind & 0x3FFF, data[offset:offset + length] + b"\0" * (-length % 4)
        offset += length + -length % 4


def _name(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode()


# --- batches ---------------------------------------------------------------------------
class _Message:
    __slots__ = ("kind", "family", "table", "set_name", "flags", "parts")

    def __init__(self, kind: int, family: str, table: str, set_name: str = "", flags: int = 0, parts=()):
        self.kind, self.family, self.table, self.set_name = kind, family, table, set_name
        self.flags, self.parts = flags, list(parts)

    def body(self) -> bytes:
        if self.kind == NFT_MSG_DELTABLE:
            return attr_str(NFTA_TABLE_NAME, self.table)
        if self.kind in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM):
            return (attr_str(NFTA_SET_ELEM_LIST_TABLE, self.table) + attr_str(NFTA_SET_ELEM_LIST_SET, self.set_name)
                    + nested(NFTA_SET_ELEM_LIST_ELEMENTS, *self.parts))
        return self.parts[0]   # a table, chain, set or rule as the kernel listed it

    def __str__(self) -> str:
        where = f"{self.family} {self.table}"
        if self.kind in (NFT_MSG_NEWSETELEM, NFT_MSG_DELSETELEM):
            return f"{'add' if self.kind == NFT_MSG_NEWSETELEM else 'delete'} elements of {where} {self.set_name}"
        return f"{_OBJECTS[self.kind]} {where}"


class Batch:
    """Changes to send as one transaction, in the order added: element
    adds and deletes (consecutive ones of one set share a message), table
    creations and deletions."""

    def __init__(self):
        self.messages: list[_Message] = []

    def add(self, op: str, family: str, table: str, set_name: str, elements: list[bytes]) -> None:
        kind = NFT_MSG_NEWSETELEM if op == "add" else NFT_MSG_DELSETELEM
        for element in elements:
            last = self.messages[-1] if self.messages else None
            if (last is None or (last.kind, last.family, last.table, last.set_name) != (kind, family, table, set_name)
                    or sum(map(len, last.parts)) + len(element) > MESSAGE_BYTES):
                last = _Message(kind, family, table, set_name, F_CREATE if kind == NFT_MSG_NEWSETELEM else 0)
                self.messages.append(last)
            last.parts.append(element)

    def create_table(self, family: str, table: str, objects: list[tuple[int, bytes]]) -> None:
        """Create a table from what `NfTables.recreation` recorded; refused
        if the table exists."""
        for kind, body in objects:
            flags = {NFT_MSG_NEWTABLE: F_CREATE | F_EXCL, NFT_MSG_NEWRULE: F_CREATE | F_APPEND}.get(kind, F_CREATE)
            self.messages.append(_Message(kind, family, table, flags=flags, parts=[body]))

    def delete_table(self, family: str, table: str) -> None:
        self.messages.append(_Message(NFT_MSG_DELTABLE, family, table))

    def extend(self, other: Batch) -> None:
        self.messages += other.messages

    def __len__(self) -> int:
        return len(self.messages)

    def encode(self, seq: int) -> bytes:
        """The batch as netlink messages numbered from ``seq`` (the
        batch's begin); each change asks for an acknowledgement."""
        def message(kind, flags, family, body, number):
            payload = _NFGEN.pack(family, 0, NFNL_SUBSYS_NFTABLES if kind < 0x100 else 0) + body
            return _HEADER.pack(_HEADER.size + len(payload), kind, flags, number, 0) + payload

        parts = [message(NFNL_MSG_BATCH_BEGIN, F_REQUEST, 0, b"", seq)]
        for i, m in enumerate(self.messages, 1):
            parts.append(message((NFNL_SUBSYS_NFTABLES << 8) | m.kind, F_REQUEST | F_ACK | m.flags,
                                 FAMILIES[m.family], m.body(), seq + i))
        parts.append(message(NFNL_MSG_BATCH_END, F_REQUEST, 0, b"", seq + len(self.messages) + 1))
        return b"".join(parts)


# --- the client ---------------------------------------------------------------------------
class NfTables:
    """One nf_tables netlink socket in the calling thread's network
    namespace.  Raises NetlinkError (errno and the kernel's message); after
    any other failure (a timeout) the socket is closed."""

    def __init__(self):
        self.netns = current_inode()
        self.nl = Netlink(NETLINK_NETFILTER)
        self.nl.sock.setsockopt(270, NETLINK_CAP_ACK, 1)   # SOL_NETLINK: errors without our request echoed

    @property
    def closed(self) -> bool:
        return self.nl.sock.fileno() < 0

    def close(self) -> None:
        self.nl.close()

    def _dump(self, kind: int, family: str, body: bytes) -> list[bytes]:
        header = _NFGEN.pack(FAMILIES[family], 0, 0)
        try:
            return self.nl.request((NFNL_SUBSYS_NFTABLES << 8) | kind, F_DUMP, header + body)
        except NetlinkError:
            raise
        except OSError:
            self.close()
            raise

    def sets(self, family: str, table: str) -> dict[str, Shape | None] | None:
        """Set name -> shape (None: of types we do not encode) of every
        set and map in a table; None when the table is absent."""
        try:
            found = self._dump(NFT_MSG_GETSET, family, attr_str(NFTA_SET_TABLE, table))
        except NetlinkError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        out = {}
        for payload in found:
            attrs = parse_attrs(payload, _NFGEN.size)
            out[_name(attrs[NFTA_SET_NAME])] = _shape(attrs)
        return out

    def recreation(self, family: str, table: str, chains: list[str]) -> list[tuple[int, bytes]] | None:
        """What creates the table as it stands now, elements aside: the
        kernel's own listing of it, the named chains, its sets and rules, as
        creation messages (for `Batch.create_table`).  None when a chain is
        missing or something would not be created the same (table or chain
        flags, sets that are anonymous, updated by rules or hold objects or
        expressions); named objects are not looked at."""
        header = _NFGEN.pack(FAMILIES[family], 0, 0)

        def get(kind, body):   # one object (a dump of chains would list every table's)
            return self.nl.request((NFNL_SUBSYS_NFTABLES << 8) | kind, 0, header + body)

        try:
            tables = get(NFT_MSG_GETTABLE, attr_str(NFTA_TABLE_NAME, table))
            chains = [p for c in chains for p in get(NFT_MSG_GETCHAIN, attr_str(NFTA_CHAIN_TABLE, table)
                                                        + attr_str(NFTA_CHAIN_NAME, c))]
        except NetlinkError as e:
            if e.errno == errno.ENOENT:
                return None
            raise
        sets = self._dump(NFT_MSG_GETSET, family, attr_str(NFTA_SET_TABLE, table))
        rules = self._dump(NFT_MSG_GETRULE, family, attr_str(NFTA_RULE_TABLE, table))
        out = []
        for kind, listing in ((NFT_MSG_NEWTABLE, tables), (NFT_MSG_NEWCHAIN, chains), (NFT_MSG_NEWSET, sets),
                              (NFT_MSG_NEWRULE, rules)):
            for payload in listing:
                attrs = dict(_raw_attrs(payload, _NFGEN.size))
                flags = _U32.unpack(attrs[_FLAGS[kind]][4:8])[0] if _FLAGS.get(kind) in attrs else 0
                if flags & ~_ALLOWED_FLAGS[kind] or any(a in attrs for a in _UNCREATABLE.get(kind, ())):
                    return None
                body = b"".join(attrs[a] for a in _CREATION[kind] if a in attrs)
                if kind == NFT_MSG_NEWSET:
                    body += attr(NFTA_SET_ID, _U32.pack(len(out) + 1))
                out.append((kind, body))
        return out

    def chain_rules(self, family: str, table: str) -> dict[str, tuple[int, bytes]]:
        """Chain name -> (how many rules it holds, its first rule's user data,
        where a rule's comment is); {} when the table is absent."""
        held: dict[str, tuple[int, bytes]] = {}
        for payload in self._dump(NFT_MSG_GETRULE, family, attr_str(NFTA_RULE_TABLE, table)):
            attrs = parse_attrs(payload, _NFGEN.size)
            chain = _name(attrs[NFTA_RULE_CHAIN])
            count, first = held.get(chain, (0, attrs.get(NFTA_RULE_USERDATA, b"")))
            held[chain] = (count + 1, first)
        return held

    def elements(self, family: str, table: str, set_name: str) -> list[bytes]:
        """Every element of a set, encoded as in a batch (see `identity`)."""
        body = attr_str(NFTA_SET_ELEM_LIST_TABLE, table) + attr_str(NFTA_SET_ELEM_LIST_SET, set_name)
        out = []
        for payload in self._dump(NFT_MSG_GETSETELEM, family, body):
            listed = parse_attrs(payload, _NFGEN.size).get(NFTA_SET_ELEM_LIST_ELEMENTS, b"")
            out += [attr(NFTA_LIST_ELEM, element) for _, element in iter_attrs(listed)]
        return out

    def commit(self, batch: Batch, timeout: float = 10.0) -> None:
        """Send the batch and wait for the kernel's answer to each change:
        all applied, or NetlinkError and nothing applied."""
        if not batch:
            return
        seq = self.nl.seq + 1
        self.nl.seq += len(batch) + 2
        data = batch.encode(seq)
        sock = self.nl.sock
        sock.setsockopt(1, 32, max(len(data) * 2, 1 << 20))   # SOL_SOCKET, SO_SNDBUFFORCE
        sock.settimeout(timeout)
        changes = range(seq + 1, seq + len(batch) + 1)
        waiting, first = set(changes), None
        try:
            sock.send(data)
            while waiting:
                reply = sock.recv(1 << 16)
                offset = 0
                while offset + _HEADER.size <= len(reply):
                    length, kind, flags, reply_seq, _ = _HEADER.unpack_from(reply, offset)
                    payload = reply[offset + _HEADER.size:offset + length]
                    offset += max(length + (-length % 4), _HEADER.size)
                    if kind != NLMSG_ERROR or not seq <= reply_seq <= changes.stop:
                        continue  # not an answer to this batch
                    where = f" ({batch.messages[reply_seq - seq - 1]})" if reply_seq in changes else ""
                    error = error_of(payload, flags, where)
                    if error is not None:
                        first = first or error
                        if reply_seq not in changes:  # the batch itself was refused
                            waiting.clear()
                    waiting.discard(reply_seq)
        except OSError:
            self.close()
            raise
        finally:
            if not self.closed:
                sock.settimeout(None)
        if first is not None:
            raise first


_local = _thread._local()


def shared() -> NfTables:
    """The calling thread's socket in its current network namespace, kept
    open from one call to the next: closing an nf_tables socket after a
    transaction that deleted anything waits, holding the namespace's
    nf_tables commit lock, for the kernel's deferred destruction (an RCU
    grace period, 10 to 20 ms here).  One per thread (a thread that moves to
    another namespace gets a new one, and the old one is closed), so at
    most one namespace per thread is kept alive by it."""
    client = getattr(_local, "client", None)
    if client is not None and not client.closed and client.netns == current_inode():
        return client
    if client is not None:
        client.close()
    _local.client = NfTables()
    return _local.client
