"""python -m netpolicy apply|explain|status -f PATH ...

The one-shot forms of what the node agent does continuously, for
``pycni policy`` to wrap.  PATH: a YAML/JSON file or a directory of them
holding NetworkPolicy, Namespace and Pod objects.  Exit status 2 on an
invalid object (nothing is changed), 1 on a kernel error.
"""
from __future__ import annotations

import argparse
import json
import sys

from .compiler import TABLE
from .enforcer import Enforcer
from .explain import explain, status
from .nft import Kernel, NftError
from .parse import PolicyError
from .sources import DirectorySource, merge


def _inputs(paths):
    return merge([DirectorySource(p).list() for p in paths])


def _node_addresses(items) -> dict[str, list[str]]:
    nodes: dict[str, list[str]] = {}
    for item in items:
        node, _, address = item.partition("=")
        nodes.setdefault(node, []).append(address)
    return nodes


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m netpolicy")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("apply", "explain", "status"):
        p = sub.add_parser(name)
        p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH")
        p.add_argument("--json", action="store_true")
    sub.choices["apply"].add_argument("--node", default="", help="this node's name (default: \"\")")
    sub.choices["apply"].add_argument("--dry-run", action="store_true")
    ex = sub.choices["explain"]
    ex.add_argument("source")
    ex.add_argument("destination")
    ex.add_argument("port", help="PORT[/TCP|UDP|SCTP]")
    ex.add_argument("--node-address", action="append", default=[], metavar="NODE=ADDRESS")
    args = parser.parse_args(argv)
    try:
        inputs = _inputs(args.filename)
        if args.command == "apply":
            commands = Enforcer(args.node).apply(inputs, dry_run=args.dry_run)
            print(json.dumps(commands) if args.json else f"{len(commands)} change(s)")
        elif args.command == "explain":
            port, _, protocol = args.port.partition("/")
            result = explain(inputs, args.source, args.destination, int(port), protocol.upper() or "TCP",
                             _node_addresses(args.node_address))
            print(json.dumps(result.to_dict()) if args.json else result)
            return 0 if result.allowed else 3
        else:
            found = status(inputs, Kernel().counters("inet", TABLE))
            if args.json:
                print(json.dumps([s.__dict__ for s in found]))
            for s in [] if args.json else found:
                print(f"{s.policy}  {'+'.join(s.policy_types)}  {s.packets} packets {s.bytes} bytes  "
                      f"selects: {', '.join(s.selects) or '-'}")
                for r in s.rules:
                    print(f"    {r['rule']}: {r['packets']} packets {r['bytes']} bytes")
    except PolicyError as e:
        print(f"invalid: {e}", file=sys.stderr)
        return 2
    except (NftError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
