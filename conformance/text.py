"""Fitting text into columns without cutting a word: wrap at spaces, or
elide at a space with "…".  A single word longer than the room is kept
whole (the line runs over) rather than cut."""
from __future__ import annotations

import textwrap

ELLIPSIS = "…"


def wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(" ".join(text.split()), width, break_long_words=False, break_on_hyphens=False) or [""]


def elide(text: str, width: int) -> str:
    """``text`` on one line of at most ``width`` characters, ending in "…"
    at a word boundary when it does not fit."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    cut = text.rfind(" ", 0, width)     # the room holds the words before it and the ellipsis
    if cut <= 0:
        return text.split(" ", 1)[0] + ELLIPSIS
    return text[:cut].rstrip(",;:") + ELLIPSIS


def fit(text: str, width: int, lines: int) -> list[str]:
    """``text`` wrapped into at most ``lines`` lines, the last elided."""
    wrapped = wrap(text, width)
    if len(wrapped) <= lines:
        return wrapped
    return wrapped[:lines - 1] + [elide(" ".join(wrapped[lines - 1:]), width)]
