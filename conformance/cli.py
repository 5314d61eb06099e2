"""Run the CNI conformance suite against plugin directories.

    pycni conformance --bin-dir DIR --config FILE [--label NAME] [--json]
    pycni conformance --bin-dir A --label ours --bin-dir B --label reference --config FILE

FILE is one of:
  - a CNI network config as deployed (e.g. /etc/cni/net.d/87-podman.conflist):
    a .conf (an object with "type") or a .conflist (with "plugins"), told
    apart by content whatever the extension.  Each run uses a private copy:
    a unique network name, its own bridge (a macvlan/ipvlan master is the
    host's device and is kept), a fresh 10.2xx subnet that the IPAM ranges,
    gateways and routes move into consistently, a private dataDir and
    private state dirs for pycni's plugins.  Everything else runs as
    written, and the output starts with the list of what was changed.  The
    machine's own bridge, subnet and dataDir are never touched.
  - a suite config (YAML or JSON with "network"), for what a network config
    cannot say: env, ifname, concurrency, versions, chained.  Its "network"
    is inline or a path to a .conf/.conflist.  Shipped: bridge, loopback.

Plugins of any type are welcome: types the suite knows (pycni's bridge,
loopback, portmap, firewall, tuning, bandwidth, dnsname) get every check;
any other gets the generic ones (VERSION, ADD/CHECK/DEL results and
versions, error codes, DEL idempotence, missing netns, leaks of what the
result reports) and n/a with the reason for the rest.

With several --bin-dir the table is side by side.  Exit status: 0 when no
applicable check failed in any bin dir, 1 otherwise, 2 when the suite
cannot run (a one-line reason on stderr: an unusable config, a plugin
missing from a bin dir, ...).
"""
from __future__ import annotations

import argparse
import os
import sys

from .checks import run_suite
from .config import ConfigError, SuiteConfig, missing_plugin, parse_versions
from .report import side_by_side, table, to_json


def _refuse(reason: str) -> int:
    print(f"pycni conformance: {reason}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="pycni conformance", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", action="append", required=True, help="plugin directory (repeatable)")
    ap.add_argument("--label", action="append", default=[], help="column label per --bin-dir")
    ap.add_argument("--config", default="bridge", metavar="FILE",
                    help="a .conf/.conflist, a suite config, or a shipped name (default: bridge)")
    ap.add_argument("--versions", help="comma-separated spec versions to test (default: all the plugins "
                    "claim; a deployed config's own cniVersion is one of them)")
    ap.add_argument("--json", action="store_true", help="print the reports as JSON (with what was derived)")
    ap.add_argument("-q", "--quiet", action="store_true", help="no progress on stderr")
    args = ap.parse_args(argv)
    try:
        cfg = SuiteConfig.load(args.config)
        if args.versions:
            cfg.versions = parse_versions(args.versions)
    except ConfigError as e:
        return _refuse(str(e))
    if len(args.label) > len(args.bin_dir):
        return _refuse("more --label than --bin-dir")
    for bin_dir in args.bin_dir:
        if not os.path.isdir(bin_dir):
            return _refuse(f"{bin_dir}: no such bin dir")
        missing = missing_plugin(cfg, bin_dir)
        if missing:
            return _refuse(missing)
    if os.geteuid() != 0:
        return _refuse("needs root (network namespaces, links, firewall)")

    reports = []
    for i, bin_dir in enumerate(args.bin_dir):
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
