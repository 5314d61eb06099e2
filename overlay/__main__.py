"""python -m overlay --config FILE [flags]: one node's overlay controller in
the foreground.  Flags override the file's keys (see overlay/config.py).
SIGTERM or SIGINT: leave the cluster cleanly (release the lease, remove the
device, routes and firewall table) unless --keep-on-exit, which leaves
both in place for a restart."""
import argparse
import logging
import signal
import sys

from .config import ConfigError, load
from .controller import OverlayController
from .store import StoreError

FLAGS = [  # flag, file key, type, help
    ("--cluster", "cluster", str, "overlay name"),
    ("--cluster-cidr", "clusterCIDR", str, "IPv4 pod CIDR"),
    ("--cluster-cidr6", "clusterCIDR6", str, "IPv6 pod CIDR"),
    ("--subnet-prefix-length", "subnetPrefixLength", int, "per-node IPv4 prefix length"),
    ("--subnet-prefix-length6", "subnetPrefixLength6", int, "per-node IPv6 prefix length"),
    ("--node-name", "nodeName", str, "this node's name (default: host name)"),
    ("--underlay-interface", "underlayInterface", str, "interface VXLAN runs over"),
    ("--vni", "vni", int, "VXLAN network identifier"),
    ("--port", "port", int, "VXLAN UDP port"),
    ("--mtu", "mtu", int, "VXLAN MTU (default: underlay MTU minus overhead)"),
    ("--device", "device", str, "VXLAN device name"),
    ("--store", "store", str, "file or etcd"),
    ("--store-path", "storePath", str, "file store directory"),
    ("--etcd-endpoints", "etcdEndpoints", str, "comma-separated etcd URLs"),
    ("--etcd-prefix", "etcdPrefix", str, "etcd key prefix"),
    ("--lease-ttl", "leaseTTL", int, "lease TTL in seconds"),
    ("--state-file", "stateFile", str, "where the CNI plugin reads this node's subnets and MTU"),
]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m overlay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML or JSON settings file")
    for flag, key, kind, text in FLAGS:
        parser.add_argument(flag, dest=key, type=kind, help=text)
    parser.add_argument("--direct-routing", dest="directRouting", action="store_const", const=True,
                        help="plain routes to nodes on the same underlay subnet")
    parser.add_argument("--keep-on-exit", action="store_true",
                        help="on SIGTERM/SIGINT keep the lease and dataplane (restart, upgrade)")
    parser.add_argument("-v", "--verbose", action="store_true")
    args = vars(parser.parse_args(argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s",
                        stream=sys.stderr)
    if args.pop("verbose"):
        logging.getLogger("overlay").setLevel(logging.DEBUG)
    keep = args.pop("keep_on_exit")
    try:
        controller = OverlayController(load(args.pop("config"), args))
    except (ConfigError, StoreError, OSError, ValueError) as e:
        print(f"overlay: {e}", file=sys.stderr)
        return 2
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: controller.stop(leave=not keep))
    controller.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
