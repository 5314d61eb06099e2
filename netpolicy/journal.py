"""Our two tables as the incremental compiler changes them, remembering
what each object it touches was before the current commit: the commit's
difference is then only the touched objects, before and after (partial
tables), which `ruleset.transaction` turns into commands as it does whole
tables."""
from __future__ import annotations

from .compiler import TABLE, base_tables
from .ruleset import Chain, SetSpec, Table, transaction

ABSENT = object()   # an element that is not there
FAMILIES = ("inet", "bridge")


class Delta:
    """What one commit changed: per family, the touched objects before and
    after (None: the table is absent)."""

    def __init__(self, before: dict[str, Table | None], after: dict[str, Table | None]):
        self.before, self.after = before, after

    def commands(self) -> list[dict]:
        """The transaction making that change."""
        return [c for f in FAMILIES for c in transaction(self.before.get(f), self.after.get(f))]


class JournalledTables:
    """Profiles, classes, group sets and counters live in the inet table;
    pods' elements in both.  The tables exist while a policy does."""

    def __init__(self):
        self.inet: Table | None = None
        self.bridge: Table | None = None
        self._reset()

    @property
    def exists(self) -> bool:
        return self.inet is not None

    def tables(self) -> list[Table]:
        return [self.inet, self.bridge] if self.exists else []

    def create(self) -> None:
        self.inet, self.bridge = base_tables()

    def drop(self) -> None:
        self.inet = self.bridge = None

    def _reset(self) -> None:
        self._counters: dict[str, str | None] = {}
        self._chains: dict[str, Chain | None] = {}
        self._sets: dict[str, SetSpec | None] = {}
        self._elements: dict[tuple[str, str], dict] = {}
        self._existed = self.exists

    # --- changes, each remembering the object's state before the commit ------------------
    def counter(self, name: str, comment: str | None) -> None:
        self._counters.setdefault(name, self.inet.counters.get(name))
        if comment is None:
            del self.inet.counters[name]
        else:
            self.inet.counters[name] = comment

    def chain(self, name: str, chain: Chain | None) -> None:
        self._chains.setdefault(name, self.inet.chains.get(name))
        if chain is None:
            del self.inet.chains[name]
        else:
            self.inet.chains[name] = chain

    def declare_set(self, name: str, spec: SetSpec | None, elements: dict | None) -> None:
        self._sets.setdefault(name, self.inet.sets.get(name))
        if spec is None:
            del self.inet.sets[name]
            del self.inet.elements[name]
        else:
            self.inet.sets[name] = spec
            self.inet.elements[name] = elements

    def element(self, family: str, set_name: str, key: tuple, value) -> None:
        """``value``: the element's (None for a set's), or ABSENT to remove it."""
        elements = (self.inet if family == "inet" else self.bridge).elements[set_name]
        old = elements.get(key, ABSENT)
        if old is value or old == value:
            return
        self._elements.setdefault((family, set_name), {}).setdefault(key, old)
        if value is ABSENT:
            del elements[key]
        else:
            elements[key] = value

    # --- the commit's difference -------------------------------------------------------------
    def take(self) -> Delta:
        """What changed since the last take(), and start again."""
        existed = self._existed
        counters, chains, sets, elements = self._counters, self._chains, self._sets, self._elements
        self._reset()
        if not existed and not self.exists:
            return Delta({}, {})
        if not existed:
            return Delta({"inet": None, "bridge": None}, {"inet": self.inet, "bridge": self.bridge})
        if not self.exists:
            return Delta({f: Table(f, TABLE) for f in FAMILIES}, {"inet": None, "bridge": None})
        tables = {"inet": self.inet, "bridge": self.bridge}
        before = {f: Table(f, TABLE) for f in FAMILIES}
        after = {f: Table(f, TABLE) for f in FAMILIES}
        was, now, inet = before["inet"], after["inet"], self.inet
        for name, old in counters.items():
            if old is not None:
                was.counters[name] = old
            if name in inet.counters:
                now.counters[name] = inet.counters[name]
        for name, old in chains.items():
            if old is not None:
                was.chains[name] = Chain([], old.hook)
                was.live_digests[name] = old.digests()
            if name in inet.chains:
                now.chains[name] = inet.chains[name]
        for name, old in sets.items():
            if old is not None:
                was.sets[name] = old
                was.elements[name] = {}
            if name in inet.sets:   # a new set: all its elements
                now.sets[name] = inet.sets[name]
                now.elements[name] = dict(inet.elements[name]) if old is None else {}
        for (family, set_name), keys in elements.items():
            table = tables[family]
            if set_name not in table.sets or sets.get(set_name, ABSENT) is None:
                continue  # the set went (and its elements with it), or came with all of them
            for side in (before[family], after[family]):
                side.sets.setdefault(set_name, table.sets[set_name])
                side.elements.setdefault(set_name, {})
            current = table.elements[set_name]
            for key, old in keys.items():
                if old is not ABSENT:
                    before[family].elements[set_name][key] = old
                if key in current:
                    after[family].elements[set_name][key] = current[key]
        return Delta(before, after)
