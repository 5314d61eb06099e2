"""``pycni``: a cnitool-compatible CNI runtime front end, plugin installer and lab."""
from __future__ import annotations

import argparse
import json
import os
import sys

DESCRIPTION = """\
A CNI runtime in Python.

  pycni add   NETNAME NETNS_PATH   run ADD for network NETNAME, print the result
  pycni check NETNAME NETNS_PATH   run CHECK with the cached result
  pycni del   NETNAME NETNS_PATH   run DEL with the cached result, drop the cache
  pycni gc    NETNAME [CONTAINERID[/IFNAME] ...]
                                   DEL cached attachments named here, then GC
  pycni status NETNAME             run STATUS on every plugin of NETNAME
  pycni install --bin-dir DIR      write the pycni plugin executables to DIR
  pycni lab up|apply|down|status|exec|probe
                                   network namespace labs from a YAML file
  pycni agent [--overlay-config FILE ...] [--policy-dir DIR ...]
                                   the node agent: plugin requests, the overlay,
                                   network policy
  pycni policy apply|explain|status
                                   Kubernetes NetworkPolicy on this node (`pycni policy -h`)

Like cnitool, add/check/del read these environment variables:
  NETCONFPATH   directory of *.conf/*.conflist/*.json (default /etc/cni/net.d)
  CNI_PATH      plugin search path (colon separated)
  CNI_IFNAME    container interface name (default eth0)
  CNI_ARGS      "KEY=VALUE;KEY=VALUE" passed to the plugins
  CAP_ARGS      JSON object of capability args (runtimeConfig), e.g.
                '{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]}'
  CNI_CACHE_DIR result cache (default /var/lib/cni)
check and del without CAP_ARGS / CNI_ARGS use the ones cached at add.
The container ID is "cnitool-" + 20 hex digits of sha512(NETNS_PATH), as
cnitool computes it.  On failure pycni exits 1, prints the error on stderr
and, if a plugin reported it, the plugin's error JSON on stdout.
"""


def _fail(err) -> int:
    from .libcni import PluginError

    if isinstance(err, PluginError):
        print(json.dumps(err.to_json()), flush=True)
    print(f"pycni: {err}", file=sys.stderr)
    return 1


def _runtime(args):
    from . import libcni

    netdir = os.environ.get("NETCONFPATH") or "/etc/cni/net.d"
    netconf = libcni.load_conflist(netdir, args.netname)
    cni = libcni.CNIConfig(os.environ.get("CNI_PATH", ""))
    return libcni, netconf, cni


def cmd_attach(args) -> int:
    from . import libcni

    try:
        lib, netconf, cni = _runtime(args)
        cap_args = {}
        if os.environ.get("CAP_ARGS"):
            try:
                cap_args = json.loads(os.environ["CAP_ARGS"])
            except ValueError as e:
                raise libcni.LibCNIError(f"CAP_ARGS is not valid JSON: {e}") from None
            if not isinstance(cap_args, dict):
                raise libcni.LibCNIError("CAP_ARGS must be a JSON object")
        netns = os.path.abspath(args.netns)
        rt = lib.RuntimeConf(
            container_id=lib.container_id_for_netns(netns),
            netns=netns,
            ifname=os.environ.get("CNI_IFNAME") or "eth0",
            args=lib.parse_cni_args(os.environ.get("CNI_ARGS", "")),
            capability_args=cap_args,
        )
        if args.command != "add":
            # Unlike cnitool, check/del without CAP_ARGS (or CNI_ARGS) reuse
            # those cached at ADD: portmap's DEL needs its port mappings.
            _, cached = cni.get_cached_config(netconf.name, rt)
            if "CAP_ARGS" not in os.environ:
                rt.capability_args = cached.capability_args
            if "CNI_ARGS" not in os.environ:
                rt.args = cached.args
        if args.command == "add":
            result = cni.add_network_list(netconf, rt)
            print(json.dumps(result, indent=4))
        elif args.command == "check":
            cni.check_network_list(netconf, rt)
        else:
            cni.del_network_list(netconf, rt)
    except (libcni.LibCNIError, OSError) as e:
        return _fail(e)
    return 0


def cmd_gc(args) -> int:
    from . import libcni

    try:
        _, netconf, cni = _runtime(args)
        exclude = []
        for item in args.attachments:
            cid, _, ifname = item.partition("/")
            exclude.append({"containerID": cid, **({"ifname": ifname} if ifname else {})})
        errors = cni.gc_network_list(netconf, exclude=exclude)
    except (libcni.LibCNIError, OSError) as e:
        return _fail(e)
    for e in errors:
        print(f"pycni: gc: {e}", file=sys.stderr)
    return 1 if errors else 0


def cmd_status(args) -> int:
    from . import libcni

    try:
        _, netconf, cni = _runtime(args)
        cni.get_status_network_list(netconf)
    except (libcni.LibCNIError, OSError) as e:
        return _fail(e)
    print(f"network {netconf.name}: ready")
    return 0


def cmd_install(args) -> int:
    from .install import install

    for path in install(args.bin_dir):
        print(path)
    return 0


def cmd_lab(args) -> int:
    from . import lab

    return lab.run_cli(args)


def cmd_policy(args) -> int:
    from netpolicy import command

    return command.run(args)


def cmd_agent(args) -> int:
    from . import node

    return node.main(args)


def build_parser() -> argparse.ArgumentParser:
    from . import node

    p = argparse.ArgumentParser(prog="pycni", description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name, text in (("add", "attach NETNS_PATH to network NETNAME (prints the result)"),
                       ("check", "CHECK an attachment against the cached result"),
                       ("del", "detach NETNS_PATH from network NETNAME")):
        s = sub.add_parser(name, help=text, description=text)
        s.add_argument("netname")
        s.add_argument("netns", metavar="NETNS_PATH")
        s.set_defaults(func=cmd_attach)
    s = sub.add_parser("gc", help="garbage-collect a network (CNI 1.1 GC)",
                       description="DEL the cached attachments named (CONTAINERID or CONTAINERID/IFNAME), "
                                   "then send GC with the remaining cached attachments of NETNAME as "
                                   "cni.dev/valid-attachments.")
    s.add_argument("netname")
    s.add_argument("attachments", nargs="*", metavar="CONTAINERID[/IFNAME]")
    s.set_defaults(func=cmd_gc)
    s = sub.add_parser("status", help="ask every plugin of NETNAME whether it is ready (CNI 1.1 STATUS)")
    s.add_argument("netname")
    s.set_defaults(func=cmd_status)
    s = sub.add_parser("install", help="write the plugin executables into a CNI bin dir")
    s.add_argument("--bin-dir", required=True, help="target directory, e.g. /opt/cni/bin")
    s.set_defaults(func=cmd_install)
    sub.add_parser("conformance", help="check plugin binaries against the CNI spec "
                   "(`pycni conformance --help`)", add_help=False)
    s = sub.add_parser("agent", help="run the node agent in the foreground",
                       description="Serve the installed plugins' requests with warm modules and handles. "
                                   "Plugins find it on the abstract socket @pycni-agent of their network "
                                   "namespace and work alone when it is not there.  With overlay settings "
                                   "it also runs this node's VXLAN overlay: a subnet lease from the "
                                   "cluster CIDR, the VXLAN dataplane to every other node, and the node "
                                   "state the overlay plugin reads.  With --policy-dir (or "
                                   "--network-policy) it enforces Kubernetes NetworkPolicy objects and "
                                   "serves the netpolicy plugin on @pycni-policy, before it takes plugin "
                                   "requests; with the overlay too, through the overlay's store, for "
                                   "every node's pods.  SIGTERM/SIGINT: a clean leave.")
    s.add_argument("--socket", metavar="NAME", help="abstract socket name (default pycni-agent, or "
                   "$PYCNI_AGENT_SOCKET)")
    s.add_argument("-v", "--verbose", action="store_true", help="log every request served")
    node.add_arguments(s)
    s.set_defaults(func=cmd_agent)
    s = sub.add_parser("policy", help="apply, explain and observe network policies on this node")
    from netpolicy import command as policy_command  # argparse only: no heavy import

    policy_command.add_arguments(s)
    s.set_defaults(func=cmd_policy)
    s = sub.add_parser("lab", help="build a lab of hosts and pods in network namespaces from a YAML file",
                       description="Hosts are network namespaces standing for nodes; pods are network "
                                   "namespaces attached through the CNI plugins, which run inside their "
                                   "host's namespace.  See examples/two-pods.yaml.")
    lsub = s.add_subparsers(dest="lab_command", metavar="LABCMD")
    lsub.required = True
    u = lsub.add_parser("up", help="create the lab described by FILE")
    u.add_argument("file")
    u.add_argument("--cni-path", help="use plugins from DIR (default: install pycni's into the lab dir)")
    a = lsub.add_parser("apply", help="bring a running lab to its changed FILE",
                        description="Hosts and pods added or removed, hosts' underlay addresses changed, "
                                    "agents and etcd members that died started again, network policies, "
                                    "namespace labels and pod labels and ports changed; the rest keeps "
                                    "running.  It returns once every host enforces the file's policies.  "
                                    "Networks cannot change in a running lab.")
    a.add_argument("file")
    d = lsub.add_parser("down", help="tear a lab down (FILE or lab name); works after a failed up")
    d.add_argument("lab", metavar="FILE|NAME")
    st = lsub.add_parser("status", help="show hosts and pods of a lab")
    st.add_argument("lab", nargs="?", metavar="FILE|NAME", help="default: the only lab that is up")
    st.add_argument("--json", action="store_true", help="machine-readable output")
    e = lsub.add_parser("exec", help="run a command in a pod's (or host's) network namespace",
                        description="pycni lab exec [--lab NAME] POD -- CMD...   (POD is NAME or NAMESPACE/NAME; "
                                    "--host to name a host instead)")
    e.add_argument("--lab", metavar="FILE|NAME", help="default: the only lab that is up")
    e.add_argument("--host", action="store_true", help="TARGET names a host, not a pod")
    e.add_argument("target", metavar="POD")
    e.add_argument("cmd", nargs=argparse.REMAINDER, metavar="-- CMD")
    pr = lsub.add_parser("probe", help="which pod reaches which: listeners in every pod, every pair probed",
                         description="Listens on the given ports in every pod, tries every pod pair (each "
                                     "address family the pods share) in parallel with short timeouts, and "
                                     "prints a reachability matrix per port: rows are sources, columns "
                                     "destinations, '.' reachable, 'X' not.  A probe that fails is tried "
                                     "once more (--retries).  As the Kubernetes network-policy e2e suite "
                                     "and cyclonus do.")
    pr.add_argument("targets", nargs="+", metavar="PORT[/PROTO]", help="e.g. 80/tcp 53/udp (tcp when omitted)")
    pr.add_argument("--lab", metavar="FILE|NAME", help="default: the only lab that is up")
    pr.add_argument("--timeout", type=float, default=1.0, metavar="SECONDS", help="per probe (default 1)")
    pr.add_argument("--retries", type=int, default=1, metavar="N", help="tries more for a failed probe (default 1)")
    pr.add_argument("--json", action="store_true", help="every probe and its result, machine-readable")
    s.set_defaults(func=cmd_lab)
    return p


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["conformance"]:
        # its options are its own (argparse's REMAINDER would take them for ours)
        from conformance import cli

        sys.exit(cli.main(argv[1:]))
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
