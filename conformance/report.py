"""Rendering reports: a text table per bin dir, a side-by-side table for
several, or JSON."""
from __future__ import annotations

import json
import textwrap

from .checks import BY_ID, FAIL, NA, PASS, Report

_MARK = {PASS: "pass", FAIL: "FAIL", NA: "n/a"}


def _ids(reports: list[Report]) -> list[str]:
    order = list(BY_ID)
    ids = list(dict.fromkeys(o.id for r in reports for o in r.outcomes))

    def key(cid: str):
        base, _, ver = cid.partition("@")
        return (order.index(base), tuple(int(x) for x in ver.split(".")) if ver else ())

    return sorted(ids, key=key)


def summary(report: Report) -> str:
    counts = {s: sum(1 for o in report.outcomes if o.status == s) for s in (PASS, FAIL, NA)}
    return (f"{report.label}: {counts[PASS]} pass, {counts[FAIL]} fail, {counts[NA]} n/a "
            f"(versions tested: {', '.join(report.versions) or 'none'})")


def table(report: Report, width: int = 100) -> str:
    lines = [f"CNI conformance: {report.label}  [{report.bin_dir}, {report.config}]",
             f"{'check':<28} {'section':<34} result  evidence", "-" * width]
    for cid in _ids([report]):
        o = report.get(cid)
        ev = o.evidence.replace("\n", " ")
        wrapped = textwrap.wrap(ev, max(20, width - 73)) or [""]
        lines.append(f"{cid:<28} {o.check.section[:34]:<34} {_MARK[o.status]:<7} {wrapped[0]}")
        if o.status == FAIL:
            lines += [" " * 72 + w for w in wrapped[1:4]]
    lines.append("-" * width)
    lines.append(summary(report))
    if report.forced_cleanup:
        lines.append(f"suite removed leftovers afterwards: {len(report.forced_cleanup)} item(s)")
    return "\n".join(lines)


def side_by_side(reports: list[Report]) -> str:
    """One row per check, one column per bin dir; evidence of failures below."""
    cols = [r.label[:14] for r in reports]
    head = f"{'check':<28} " + " ".join(f"{c:<14}" for c in cols) + " section"
    lines = [head, "-" * len(head)]
    for cid in _ids(reports):
        marks = []
        for r in reports:
            o = r.get(cid)
            marks.append(_MARK[o.status] if o else "-")
        lines.append(f"{cid:<28} " + " ".join(f"{m:<14}" for m in marks) + " " + BY_ID[cid.split('@')[0]].section)
    lines.append("")
    for r in reports:
        lines.append(summary(r))
    for r in reports:
        fails = r.failed
        if fails:
            lines.append("")
            lines.append(f"failures of {r.label}:")
            for o in fails:
                lines.append(f"  {o.id}: {o.evidence[:300]}")
    lines.append("")
    lines.append("requirements:")
    for c in BY_ID.values():
        lines.append(f"  {c.id:<22} ({c.section}) {c.requirement}")
    return "\n".join(lines)


def to_json(reports: list[Report]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=2)
