"""``pycni policy apply|explain|status``: the one-shot forms of what the
node agent does continuously.

PATH (``-f``, repeatable): a YAML/JSON file or a directory of them holding
NetworkPolicy, Namespace and Pod objects.  The pods the netpolicy CNI
plugin registered on this node (under ``--state-dir``) count too, as the
agent counts them, and with ``--store`` (the overlay's: ``file:PATH`` or
``etcd:URL[,URL...]``) the cluster's objects and every node's pods;
``apply --store`` makes the cluster's objects those of PATH instead of
applying them here (every node's agent then enforces them).  Exit status:
0; 2 for an invalid object (nothing is changed); 1 for a kernel or store
error; ``explain`` 3 when the flow is denied.

This module is imported to build the command line: it imports nothing
heavy until a command runs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys

from cni_plugins.core.request import DEFAULT_STATE_DIR
from cni_plugins.netpolicy import DEFAULT_SOCKET

DESCRIPTION = """\
Kubernetes NetworkPolicy enforced with nftables on this node (see netpolicy/README.md).

  pycni policy apply -f PATH...     validate, compile and apply in one transaction
  pycni policy apply -f PATH... --store file:DIR|etcd:URL[,URL]
                                    make them the cluster's (every node's agent enforces them)
  pycni policy explain SRC DST PORT[/PROTO] -f PATH...
                                    which policies and rules allow or deny that flow
                                    (SRC, DST: NAMESPACE/NAME of a pod, or an address)
  pycni policy status -f PATH...    per policy: the pods it selects, packets and bytes
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = DESCRIPTION
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    sub = parser.add_subparsers(dest="policy_command", metavar="POLICYCMD")
    sub.required = True
    for name, text in (("apply", "apply policies once (not while the node agent enforces them)"),
                       ("explain", "why a flow is allowed or denied"),
                       ("status", "per-policy selected pods and counters")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("-f", "--filename", action="append", required=True, metavar="PATH",
                       help="YAML/JSON file or directory of NetworkPolicy, Namespace and Pod objects")
        p.add_argument("--state-dir", default=os.environ.get("PYCNI_STATE_DIR") or DEFAULT_STATE_DIR,
                       help=f"where the CNI plugin's registrations are (default $PYCNI_STATE_DIR or {DEFAULT_STATE_DIR})")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.add_argument("--store", metavar="file:PATH|etcd:URL[,URL...]",
                       help="the cluster store (the overlay's), holding objects and every node's pods")
        p.add_argument("--store-prefix", default="/pycni/overlay/default", help="etcd key prefix (the overlay's)")
    apply = sub.choices["apply"]
    apply.add_argument("--node", default=socket.gethostname(),
                       help="this node's name: pods on it are enforced here (default: the host name)")
    apply.add_argument("--dry-run", action="store_true", help="print the transaction, change nothing")
    apply.add_argument("--force", action="store_true",
                       help="apply even though the node agent's controller enforces policy here")
    apply.add_argument("--socket", default=DEFAULT_SOCKET, help="the controller's socket (to detect one)")
    explain = sub.choices["explain"]
    explain.add_argument("source", metavar="SRC")
    explain.add_argument("destination", metavar="DST")
    explain.add_argument("port", metavar="PORT[/PROTO]", help="e.g. 80, 53/UDP (TCP when omitted)")
    explain.add_argument("--node-address", action="append", default=[], metavar="NODE=ADDRESS",
                         help="an address of a node, so that its own pods' traffic with it is allowed")


def _store(args):
    from .store import open_store

    kind, _, where = args.store.partition(":")
    return open_store(kind, path=where, endpoints=where.split(","), prefix=args.store_prefix)


def _inputs(args):
    from .sources import DirectorySource, EndpointRegistry, merge

    registrations = os.path.join(args.state_dir, "netpolicy", "endpoints")
    registry = EndpointRegistry(registrations) if os.path.isdir(registrations) else EndpointRegistry()
    cluster = [_store(args).list()] if args.store else []
    return merge([*(DirectorySource(p).list() for p in args.filename), *cluster, registry.list()])


def _publish(args) -> int:
    """Validate PATH's objects, then make them the store's."""
    from .parse import load_documents, parse_objects
    from .sources import DirectorySource, inputs_of

    documents = []
    for path in args.filename:
        for name in DirectorySource(path).files():
            with open(name) as f:
                found = load_documents(f.read(), name)
            parse_objects(found, name)
            documents += [item for d in found for item in (d.get("items") or [] if d.get("kind", "").endswith("List")
                                                           else [d])]
    inputs_of(parse_objects(documents))   # the same object twice is refused too
    if not args.dry_run:
        _store(args).replace_objects(documents)
    print(json.dumps(documents) if args.json else f"{len(documents)} object(s) in the cluster store")
    return 0


def _node_addresses(items) -> dict[str, list[str]]:
    nodes: dict[str, list[str]] = {}
    for item in items:
        node, _, address = item.partition("=")
        nodes.setdefault(node, []).append(address)
    return nodes


def _controller_answers(name: str) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect("\0" + name)
            return True
        except OSError:
            return False


def _apply(args) -> int:
    from .enforcer import Enforcer
    from .incremental import IncrementalCompiler

    if args.store:
        return _publish(args)
    inputs = _inputs(args)
    if not args.dry_run and not args.force and _controller_answers(args.socket):
        print(f"pycni policy: the node agent's controller enforces policy here (@{args.socket}): put the files "
              "in its policy directory, or use --force", file=sys.stderr)
        return 1
    compiler = IncrementalCompiler(args.node)
    compiler.load(inputs)
    commands = Enforcer().sync(compiler.tables(), dry_run=args.dry_run)
    print(json.dumps(commands) if args.json else f"{len(commands)} change(s)")
    return 0


def _explain(args) -> int:
    from .explain import explain

    port, _, protocol = args.port.partition("/")
    result = explain(_inputs(args), args.source, args.destination, int(port), protocol.upper() or "TCP",
                     _node_addresses(args.node_address))
    print(json.dumps(result.to_dict()) if args.json else result)
    return 0 if result.allowed else 3


def _status(args) -> int:
    from .compiler import TABLE
    from .explain import status
    from .nft import Kernel

    found = status(_inputs(args), Kernel().counters("inet", TABLE))
    if args.json:
        print(json.dumps([s.__dict__ for s in found]))
        return 0
    for s in found:
        print(f"{s.policy}  {'+'.join(s.policy_types)}  {s.packets} packets {s.bytes} bytes  "
              f"selects: {', '.join(s.selects) or '-'}")
        for r in s.rules:
            print(f"    {r['rule']}: {r['packets']} packets {r['bytes']} bytes")
    return 0


def run(args) -> int:
    from .nft import NftError
    from .parse import PolicyError

    try:
        return {"apply": _apply, "explain": _explain, "status": _status}[args.policy_command](args)
    except PolicyError as e:
        print(f"pycni policy: invalid: {e}", file=sys.stderr)
        return 2
    except (NftError, ValueError, OSError) as e:
        print(f"pycni policy: {e}", file=sys.stderr)
        return 1
