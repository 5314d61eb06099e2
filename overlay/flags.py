"""The overlay settings as command-line flags, for `python -m overlay` and
`pycni agent`: one flag per settings-file key (see overlay/config.py),
flags win over the file.  Standard library only, so that building a
command line does not load the overlay."""

FLAGS = [  # flag, file key, type, metavar, help
    ("--cluster", "cluster", str, "NAME", "overlay name"),
    ("--cluster-cidr", "clusterCIDR", str, "CIDR", "IPv4 pod CIDR"),
    ("--cluster-cidr6", "clusterCIDR6", str, "CIDR", "IPv6 pod CIDR"),
    ("--subnet-prefix-length", "subnetPrefixLength", int, "N", "per-node IPv4 prefix length"),
    ("--subnet-prefix-length6", "subnetPrefixLength6", int, "N", "per-node IPv6 prefix length"),
    ("--node-name", "nodeName", str, "NAME", "this node's name (default: host name)"),
    ("--underlay-interface", "underlayInterface", str, "IFNAME", "interface VXLAN runs over"),
    ("--vni", "vni", int, "N", "VXLAN network identifier"),
    ("--port", "port", int, "PORT", "VXLAN UDP port"),
    ("--mtu", "mtu", int, "N", "VXLAN MTU (default: underlay MTU minus overhead)"),
    ("--device", "device", str, "IFNAME", "VXLAN device name"),
    ("--store", "store", str, "KIND", "file or etcd"),
    ("--store-path", "storePath", str, "DIR", "file store directory"),
    ("--etcd-endpoints", "etcdEndpoints", str, "URLS", "comma-separated etcd URLs"),
    ("--etcd-prefix", "etcdPrefix", str, "PREFIX", "etcd key prefix"),
    ("--lease-ttl", "leaseTTL", int, "SECONDS", "lease TTL"),
    ("--state-file", "stateFile", str, "PATH", "where the CNI plugin reads this node's subnets and MTU"),
]
KEYS = [key for _, key, _, _, _ in FLAGS] + ["directRouting"]


def add_arguments(parser, skip: tuple[str, ...] = ()) -> None:
    """One flag per setting (except the file keys in ``skip``) on an
    argparse parser or argument group; each stores under its file key."""
    for flag, key, kind, metavar, text in FLAGS:
        if key not in skip:
            parser.add_argument(flag, dest=key, type=kind, metavar=metavar, help=text)
    parser.add_argument("--direct-routing", dest="directRouting", action="store_const", const=True,
                        help="plain routes to nodes on the same underlay subnet")


def overrides(values: dict) -> dict:
    """The settings given as flags (file key -> value), from vars(args)."""
    return {key: values[key] for key in KEYS if values.get(key) is not None}
