"""``pycni conformance``: run the CNI conformance suite against bin dirs.

    pycni conformance --bin-dir DIR --config FILE [--label NAME] [--json]
    pycni conformance --bin-dir A --label ours --bin-dir B --label reference --config FILE

With several --bin-dir the table is side by side.  Exit status: 0 when no
applicable check failed in any bin dir, 1 otherwise, 2 on usage errors.
"""
from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _config_path(name: str) -> str:
    if os.path.exists(name):
        return name
    for candidate in (os.path.join(HERE, "configs", name), os.path.join(HERE, "configs", name + ".yaml")):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(f"no conformance config {name!r} (a path, or one of "
                            f"{sorted(os.listdir(os.path.join(HERE, 'configs')))})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pycni conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", action="append", required=True, help="plugin directory (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="column label per --bin-dir")
    ap.add_argument("--config", default="bridge", help="suite config (YAML/JSON path, or a shipped "
                    "name: bridge, loopback)")
    ap.add_argument("--versions", help="comma-separated spec versions to test (default: all claimed)")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("pycni conformance: needs root (network namespaces, links, firewall)", file=sys.stderr)
        return 2

    from .checks import run_suite
    from .report import side_by_side, table, to_json
    from .runner import SuiteConfig

    try:
        cfg = SuiteConfig.load(_config_path(args.config))
    except (OSError, ValueError, KeyError) as e:
        print(f"pycni conformance: bad config: {e}", file=sys.stderr)
        return 2
    if args.versions:
        cfg.versions = [v.strip() for v in args.versions.split(",") if v.strip()]
    reports = []
    for i, bin_dir in enumerate(args.bin_dir):
        if not os.path.isdir(bin_dir):
            print(f"pycni conformance: no such bin dir {bin_dir}", file=sys.stderr)
            return 2
        label = args.label[i] if i < len(args.label) else bin_dir

        def progress(msg, label=label):
            if not args.quiet:
                print(f"[{label}] {msg}", file=sys.stderr, flush=True)

        reports.append(run_suite(bin_dir, cfg, label=label, progress=progress))
    if args.json:
        print(to_json(reports))
    elif len(reports) == 1:
        print(table(reports[0]))
    else:
        print(side_by_side(reports))
    return 1 if any(r.failed for r in reports) else 0
