"""Rendering reports: a text table per bin dir, a side-by-side table for
several, or JSON.  Text is wrapped or elided at word boundaries, never cut
inside a word; each starts with what the run changed of a deployed config."""
from __future__ import annotations

import json

from .checks import BY_ID, FAIL, NA, PASS, Report
from .text import elide, fit, wrap

_MARK = {PASS: "pass", FAIL: "FAIL", NA: "n/a"}
ID_WIDTH, MARK_WIDTH, SECTION_WIDTH = 22, 6, 30


def _ids(reports: list[Report]) -> list[str]:
    order = list(BY_ID)
    ids = list(dict.fromkeys(o.id for r in reports for o in r.outcomes))

    def key(cid: str):
        base, _, ver = cid.partition("@")
        return (order.index(base), tuple(int(x) for x in ver.split(".")) if ver else ())

    return sorted(ids, key=key)


def _hanging(text: str, width: int, indent: int) -> list[str]:
    """``text`` wrapped, continuation lines indented by two more."""
    lines = wrap(text, width - indent - 2)
    return [" " * indent + lines[0]] + [" " * (indent + 2) + line for line in lines[1:]]


def summary(report: Report) -> str:
    counts = {s: sum(1 for o in report.outcomes if o.status == s) for s in (PASS, FAIL, NA)}
    return (f"{report.label}: {counts[PASS]} pass, {counts[FAIL]} fail, {counts[NA]} n/a "
            f"(versions tested: {', '.join(report.versions) or 'none'})")


def derivation(report: Report, width: int = 100, notes: bool = True) -> list[str]:
    """What the run changed of the config as written, and notes on what it
    kept that reaches the host; empty for a suite config's template."""
    lines = []
    if report.changes:
        lines.append(f"[{report.label}] ran {report.config} with these changes (the file is untouched):")
        for change in report.changes:
            lines += _hanging(str(change), width, 2)
    if notes and report.notes:
        lines.append("notes:")
        for note in report.notes:
            lines += _hanging(note, width, 2)
    return lines


def table(report: Report, width: int = 100) -> str:
    evidence_width = width - ID_WIDTH - MARK_WIDTH - SECTION_WIDTH - 3
    lines = derivation(report, width)
    if lines:
        lines.append("")
    lines += [f"CNI conformance: {report.label}  [{report.bin_dir}, {report.config}]",
              f"{'check':<{ID_WIDTH}} {'result':<{MARK_WIDTH}} {'section':<{SECTION_WIDTH}} evidence",
              "-" * width]
    for cid in _ids([report]):
        o = report.get(cid)
        section = wrap(o.check.section, SECTION_WIDTH)
        evidence = fit(o.evidence, evidence_width, max(len(section), 6 if o.status == FAIL else 1))
        for i in range(max(len(section), len(evidence))):
            left = f"{cid if i == 0 else '':<{ID_WIDTH}} {_MARK[o.status] if i == 0 else '':<{MARK_WIDTH}}"
            sec = section[i] if i < len(section) else ""
            lines.append(f"{left} {sec:<{SECTION_WIDTH}} {evidence[i] if i < len(evidence) else ''}".rstrip())
    lines.append("-" * width)
    lines.append(summary(report))
    if report.forced_cleanup:
        lines.append(f"suite removed leftovers afterwards: {len(report.forced_cleanup)} item(s)")
    return "\n".join(lines)


def side_by_side(reports: list[Report], width: int = 100) -> str:
    """One row per check, one column per bin dir; evidence of failures below."""
    lines = []
    for i, r in enumerate(reports):
        lines += derivation(r, width, notes=i == len(reports) - 1)
    if lines:
        lines.append("")
    cols = [elide(r.label, 14) for r in reports]
    head = f"{'check':<{ID_WIDTH}} " + " ".join(f"{c:<14}" for c in cols) + " section"
    lines += [head, "-" * len(head)]
    for cid in _ids(reports):
        marks = []
        for r in reports:
            o = r.get(cid)
            marks.append(_MARK[o.status] if o else "-")
        lines.append(f"{cid:<{ID_WIDTH}} " + " ".join(f"{m:<14}" for m in marks) + " "
                     + BY_ID[cid.split('@')[0]].section)
    lines.append("")
    for r in reports:
        lines.append(summary(r))
    for r in reports:
        fails = r.failed
        if fails:
            lines.append("")
            lines.append(f"failures of {r.label}:")
            for o in fails:
                lines += _hanging(f"{o.id}: {elide(o.evidence, 300)}", width, 2)
    lines.append("")
    lines.append("requirements:")
    for c in BY_ID.values():
        lines += _hanging(f"{c.id} ({c.section}): {c.requirement}", width, 2)
    return "\n".join(lines)


def to_json(reports: list[Report]) -> str:
    return json.dumps([r.to_json() for r in reports], indent=2)
