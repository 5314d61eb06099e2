"""Indexes that answer "which selectors match this label set?" without
trying every selector: what makes one pod's registration cost the same
with ten policies or a thousand.

A selector is filed under one label it requires (a matchLabels pair, an
`In` requirement's values, an `Exists` key); only selectors requiring none
(empty, or only NotIn/DoesNotExist) are tried for every label set.  The
candidates are then checked against the whole selector.
"""
from __future__ import annotations

from typing import Callable, Hashable, Iterable, Mapping

from .model import LabelSelector


def _anchors(selector: LabelSelector) -> tuple[str, list]:
    for key, value in selector.match_labels:
        return "pair", [(key, value)]
    for r in selector.match_expressions:
        if r.operator == "In":
            return "pair", [(r.key, v) for v in r.values]
    for r in selector.match_expressions:
        if r.operator == "Exists":
            return "key", [r.key]
    return "always", [None]


class SelectorIndex:
    """Items (hashable) each with a selector."""

    def __init__(self):
        self._buckets: dict[tuple, dict[Hashable, LabelSelector]] = {}
        self._filed: dict[Hashable, list[tuple]] = {}

    def __len__(self) -> int:
        return len(self._filed)

    def add(self, selector: LabelSelector, item: Hashable) -> None:
        kind, anchors = _anchors(selector)
        places = [(kind, a) for a in anchors]
        for place in places:
            self._buckets.setdefault(place, {})[item] = selector
        self._filed[item] = places

    def remove(self, item: Hashable) -> None:
        for place in self._filed.pop(item, ()):
            bucket = self._buckets[place]
            del bucket[item]
            if not bucket:
                del self._buckets[place]

    def matching(self, labels: Mapping[str, str]) -> list:
        """Items whose selector matches ``labels``."""
        candidates: dict[Hashable, LabelSelector] = dict(self._buckets.get(("always", None), {}))
        for key, value in labels.items():
            candidates.update(self._buckets.get(("pair", (key, value)), {}))
            candidates.update(self._buckets.get(("key", key), {}))
        return [item for item, selector in candidates.items() if selector.matches(labels)]


class PeerIndex:
    """Peer groups by the selectors of their peers: which groups an
    endpoint (namespace and labels) is a member of.  Peers confined to one
    namespace are filed by it; peers with a namespaceSelector by that
    selector, whose matching namespaces are remembered per namespace until
    its labels change."""

    def __init__(self, namespace_labels: Callable[[str], Mapping[str, str]]):
        self.namespace_labels = namespace_labels
        self._fixed: dict[str, SelectorIndex] = {}
        self._selected: dict[LabelSelector, SelectorIndex] = {}
        self._namespace_matches: dict[str, list[SelectorIndex]] = {}

    def add(self, group: str, peer) -> None:
        """``peer``: a compiler.SelectorPeer of ``group``."""
        if peer.namespace is not None:
            self._fixed.setdefault(peer.namespace, SelectorIndex()).add(peer.pod_selector, (group, peer))
            return
        if peer.namespace_selector not in self._selected:
            self._selected[peer.namespace_selector] = SelectorIndex()
            self._namespace_matches.clear()
        self._selected[peer.namespace_selector].add(peer.pod_selector, (group, peer))

    def remove(self, group: str, peer) -> None:
        if peer.namespace is not None:
            index = self._fixed[peer.namespace]
            index.remove((group, peer))
            if not len(index):
                del self._fixed[peer.namespace]
            return
        index = self._selected[peer.namespace_selector]
        index.remove((group, peer))
        if not len(index):
            del self._selected[peer.namespace_selector]
            self._namespace_matches.clear()

    def namespace_changed(self, namespace: str) -> None:
        self._namespace_matches.pop(namespace, None)

    def _indexes(self, namespace: str) -> Iterable[SelectorIndex]:
        if namespace not in self._namespace_matches:
            labels = self.namespace_labels(namespace)
            self._namespace_matches[namespace] = [index for selector, index in self._selected.items()
                                                  if selector.matches(labels)]
        fixed = self._fixed.get(namespace)
        return [fixed, *self._namespace_matches[namespace]] if fixed else self._namespace_matches[namespace]

    def groups(self, namespace: str, labels: Mapping[str, str]) -> set[str]:
        """Names of the groups a pod with ``labels`` in ``namespace`` is in."""
        return {group for index in self._indexes(namespace) for group, _ in index.matching(labels)}
