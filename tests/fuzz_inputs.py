"""What the fuzzing suite feeds the plugins: a hypothesis strategy for one
plugin input (CNI_* variables, network config, prevResult, and how the
runtime goes on: CHECK, the container gone before DEL, through the agent or
not) and its materialization on a Site.

An input is plain data naming site-specific things by placeholder (@NET@,
@SUBNET@, @ADDR@, @PREV@...), so it is generated before it is known which
worker runs it, printed readably when it fails, and shrunk.  Values no
Python object serializes to (NaN, 1e999, a 5,000-digit number, nesting
100,000 deep, a lone surrogate) are Raw tokens spliced into the JSON text.
Field values mix what the plugin accepts (real runtimes' forms included:
containerd's capitalized keys, podman's alias maps, Kubernetes' CNI_ARGS)
with broken ones (wrong types, out-of-range numbers, huge or deep values,
unknown keys).
"""
import json
from dataclasses import dataclass

from hypothesis import strategies as st

from cni_plugins.core import version as cni_version
from cni_plugins.core.config import fold_keys

NETWORK = "fuzznet"
CONTAINER_ID, IFNAME = "fuzzc1", "eth0"
CHAINED = ("portmap", "firewall", "tuning", "bandwidth", "dnsname", "netpolicy")


@dataclass(frozen=True)
class Raw:
    """JSON text no Python value dumps to, spliced in by name."""
    name: str

    @property
    def text(self) -> str:
        return {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity", "1e999": "1e999", "-1e999": "-1e999",
                "digits": "1" * 5000, "deep": "[" * 100_000 + "]" * 100_000, "surrogate": '"\\ud800"',
                "nul": '"a\\u0000b"', "-0": "-0", "1.0": "1.0", "1E2": "1E2", "dupkeys": '{"a": 1, "a": [2]}',
                "bigint": "123456789012345678901234567890", "hugestring": '"' + "x" * 70_000 + '"'}[self.name]


# Raw values a strict JSON decoder (and Go's) refuses: the plugin must say 6
UNDECODABLE = {"nan", "inf", "-inf", "1e999", "-1e999", "digits", "deep"}
RAW_NAMES = ("nan", "inf", "-inf", "1e999", "-1e999", "digits", "deep", "surrogate", "nul", "-0", "1.0", "1E2",
             "dupkeys", "bigint", "hugestring")
RAWS = st.sampled_from(RAW_NAMES).map(Raw)


@dataclass(frozen=True)
class Delete:
    """An edit that removes the key."""

    def __repr__(self):
        return "DELETE"


DELETE = Delete()

# --- generic hostile values ---------------------------------------------------------------
_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "\ud800", "../..", ".", "..", "a/b", "x" * 300, "\u00e9" * 8, "0x10", "1e3", "true",
                     "null", "-1", "eth0", "lo", "\t", "a\nb", "@NET@", "@ADDR@", "@GW@"]),
)
_INTS = st.one_of(st.integers(-10, 70_000), st.sampled_from([-1, 0, 2 ** 31, 2 ** 32, 2 ** 63, 2 ** 64, 10 ** 30,
                                                             -(2 ** 63), 4095, 65536]))
_FLOATS = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([1.5, 1e308, -0.0, 1e-300]))
# strings that break names and paths: no Unicode, NUL, too many bytes, separators, huge
HOSTILE_STRINGS = st.sampled_from([Raw("surrogate"), Raw("nul"), "\u00e9" * 8, "a b", "a/b", "../x", ".", "", "x" * 300,
                                   Raw("hugestring"), "\t", "-", "\ufffd", "@ADDR@/33", "@NET@:1"])
_LEAF = st.one_of(st.none(), st.booleans(), _INTS, _FLOATS, _TEXT, RAWS)
JUNK = st.recursive(_LEAF, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                   st.dictionaries(_TEXT, inner, max_size=3)), max_leaves=6)

# --- the base config of each plugin, with placeholders ----------------------------------
_BRIDGE = {"type": "bridge", "bridge": "@BRIDGE@", "isGateway": True, "ipMasq": True,
           "ipam": {"type": "host-local", "dataDir": "@DATA@", "ranges": [[{"subnet": "@SUBNET@"}]]}}
BASES = {
    "bridge": _BRIDGE,
    "host-local": _BRIDGE,
    "loopback": {"type": "loopback"},
    "portmap": {"type": "portmap", "capabilities": {"portMappings": True}, "prevResult": "@PREV@",
                "runtimeConfig": {"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]}},
    "firewall": {"type": "firewall", "prevResult": "@PREV@"},
    "tuning": {"type": "tuning", "sysctl": {"net.core.somaxconn": "512"}, "prevResult": "@PREV@"},
    "bandwidth": {"type": "bandwidth", "capabilities": {"bandwidth": True}, "prevResult": "@PREV@",
                  "runtimeConfig": {"bandwidth": {"ingressRate": 8_000_000, "ingressBurst": 80_000,
                                                  "egressRate": 8_000_000, "egressBurst": 80_000}}},
    "dnsname": {"type": "dnsname", "domainName": "dns.fuzz", "capabilities": {"aliases": True},
                "prevResult": "@PREV@", "runtimeConfig": {"aliases": {"@NET@": ["web"]}}},
    "overlay": {"type": "overlay", "bridge": "@BRIDGE@", "ipam": {"dataDir": "@DATA@"}},
    "netpolicy": {"type": "netpolicy", "labelsDir": "@LABELS@", "capabilities": {"labels": True, "podPorts": True},
                  "prevResult": "@PREV@", "runtimeConfig": {"labels": {"app": "web"}, "podPorts": [
                      {"name": "http", "containerPort": 80, "protocol": "TCP"}]}},
}
BASE_ARGS = {"dnsname": "IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=web-1",
             "netpolicy": "IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=web-1"}

# --- which fields each plugin reads, and values that reach its code paths ------------------
_BOOL = [True, False]
_ADDRS = ["@ADDR@", "@GW@", "10.9.9.9", "fd00:f::5", "::1", "x"]
COMMON = {
    ("cniVersion",): ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "0.2.0", "0.1.0", "2.0.0", "1.0", "", "1.0.0-rc1"],
    ("name",): ["other-net", "n" * 300, "a.b_c-d", "0net", "-net", "net work"],
    ("type",): ["bridge", "nonexistent"],
    ("runtimeConfig",): [{}, {"unknownCapability": 1}],
    ("args",): [{}, {"cni": {}}, {"cni": {"ips": ["@ADDR@"]}}, {"other": {"x": 1}}],
    ("args", "cni"): [{"ips": ["@ADDR@/24"]}, {"unknown": True}],
    ("capabilities",): [{}, {"portMappings": True, "bandwidth": True, "aliases": True, "ips": True, "mac": True}],
    ("fuzzUnknownKey",): [1, "x", {"nested": [1, 2]}],
    ("cni.dev/valid-attachments",): [[], [{"containerID": CONTAINER_ID, "ifname": IFNAME}], [{"containerID": 5}]],
}
IPAM = {
    ("ipam",): [{"type": "host-local"}, {"type": "static"}, {}, {"type": "host-local", "subnet": "@SUBNET@"}],
    ("ipam", "type"): ["host-local", "nonexistent", "../host-local", "", "bridge", "loopback", "portmap"],
    ("ipam", "dataDir"): ["@DATA@", "@DATA@/sub/dir", "@FILE@", "relative-dir", ""],
    ("ipam", "ranges"): [
        [[{"subnet": "@SUBNET@"}], [{"subnet": "fd00:f::/64"}]],
        [[{"subnet": "@SUBNET@", "rangeStart": "@ADDR@", "rangeEnd": "@ADDR@"}]],
        [[{"subnet": "10.250.0.0/30"}]], [[{"subnet": "10.250.0.0/31"}]],
        [[{"subnet": "@SUBNET@"}, {"subnet": "@SUBNET@"}]], [], [[]],
        [[{"subnet": "fd00:f::/64"}]], [[{"subnet": "0.0.0.0/0"}]], [[{"subnet": "::/0"}]],
    ],
    ("ipam", "ranges", 0, 0, "subnet"): ["10.250.1.0/24", "10.250.1.1/24", "300.1.1.0/24", "fd00:f::/120",
                                         "10.0.0.0/33", "10.0.0.0", " @SUBNET@"],
    ("ipam", "ranges", 0, 0, "rangeStart"): _ADDRS,
    ("ipam", "ranges", 0, 0, "rangeEnd"): _ADDRS,
    ("ipam", "ranges", 0, 0, "gateway"): _ADDRS,
    ("ipam", "subnet"): ["@SUBNET2@", "x"],
    ("ipam", "gateway"): _ADDRS,
    ("ipam", "routes"): [
        [{"dst": "0.0.0.0/0"}], [{"dst": "@SUBNET@"}], [{"dst": "10.99.0.0/16", "gw": "@GW@"}],
        [{"dst": "10.99.0.0/16", "gw": "10.77.0.1"}], [{"dst": "::/0"}],
        [{"dst": "10.99.0.0/16", "mtu": 1400, "advmss": 1360, "priority": 10, "table": 100, "scope": 0}],
    ],
    ("ipam", "routes", 0, "mtu"): [1400, 70000, -1, "1500"],
    ("ipam", "routes", 0, "priority"): [0, 2 ** 32 - 1, 2 ** 32, -1],
    ("ipam", "routes", 0, "table"): [100, 0, 255, 2 ** 32],
    ("ipam", "routes", 0, "scope"): [0, 200, 253, 256],
    ("ipam", "routes", 0, "advmss"): [1360, 1.5],
    ("ipam", "resolvConf"): ["/etc/resolv.conf", "/nonexistent-fuzz", "@DIR@", "/dev/null", "/proc/self/status"],
    ("ipam", "ips"): [["@ADDR@"], ["@ADDR@/24"], ["@GW@"], ["10.9.9.9"], [5], "x"],
    ("runtimeConfig", "ips"): [["@ADDR@/24"], ["@ADDR@"], ["10.9.9.9/24"], ["@GW@"], "x"],
    ("runtimeConfig", "ipRanges"): [[[{"subnet": "@SUBNET2@"}]], [[{"subnet": "fd00:f::/64"}]], "x", [5]],
}
BRIDGE = {
    **{(k,): _BOOL for k in ("isGateway", "isDefaultGateway", "forceAddress", "ipMasq", "hairpinMode",
                             "promiscMode", "preserveDefaultVlan", "macspoofchk", "enabledad",
                             "disableContainerInterface", "portIsolation")},
    ("bridge",): ["@BRIDGE2@", "lo", "b" * 15, "b" * 16, "", "a/b", "\u00e9" * 8],
    ("ipMasqBackend",): ["nftables", "iptables", "firewalld"],
    ("mtu",): [1400, 9000, 68, 65535, 67, 65536, 0],
    ("vlan",): [1, 100, 4094, 4095, -1],
    ("vlanTrunk",): [[{"id": 5}], [{"minID": 10, "maxID": 20}], [{"minID": 20, "maxID": 10}], [{}], [5]],
    ("dns",): [{"nameservers": ["10.0.0.53"], "search": ["svc.local"], "options": ["ndots:5"], "domain": "x.local"},
               {}, {"nameservers": []}, {"x": Raw("1e999")}, {"x": Raw("surrogate")}],
    ("runtimeConfig", "mac"): ["0a:58:0a:f4:01:05", "01:00:5e:00:00:01", "zz", ""],
    **IPAM,
}
PORTMAP = {
    ("runtimeConfig", "portMappings"): [
        [], [{"hostPort": 8080, "containerPort": 80}],
        [{"HostPort": 8081, "ContainerPort": 81, "Protocol": "UDP", "HostIP": ""}],
        [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp", "hostIP": "127.0.0.1"}],
        [{"hostPort": 8443, "containerPort": 443, "protocol": "sctp", "hostIP": "::1"}],
        [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 81}],
        [{"hostPort": 8080, "containerPort": 80}, {"hostPort": 8080, "containerPort": 80, "protocol": "udp"}],
        [{"hostPort": 0, "containerPort": 80}], [{"hostPort": 65536, "containerPort": 80}],
        [{"hostPort": 8080, "containerPort": 80, "protocol": "icmp"}],
    ],
    ("runtimeConfig", "portMappings", 0, "hostPort"): [1, 65535, 0, 65536, -1, "80", 80.0],
    ("runtimeConfig", "portMappings", 0, "containerPort"): [1, 65535, 0, 65536, "80"],
    ("runtimeConfig", "portMappings", 0, "protocol"): ["udp", "TCP", "sctp", "", "icmp", 6],
    ("runtimeConfig", "portMappings", 0, "hostIP"): ["", "0.0.0.0", "::", "127.0.0.1", "::1", "10.9.9.9",
                                                     "fe80::1%eth0", "x"],
    ("snat",): [True, False, "false"],
    ("markMasqBit",): [0, 13, 31, 32, -1],
    ("externalSetMarkChain",): ["KUBE-MARK-MASQ", ""],
    ("conditionsV4",): [[], ["-s", "1.2.3.4"]],
    ("backend",): ["iptables", "nftables", "x"],
}
FIREWALL = {
    ("backend",): ["iptables", "firewalld", "nftables", "x"],
    ("ingressPolicy",): ["open", "same-bridge", "isolated", ""],
    ("iptablesAdminChainName",): ["CNI-ADMIN", 5],
    ("firewalldZone",): ["trusted"],
}
TUNING = {
    ("sysctl",): [{}, {"net.core.somaxconn": "1024"}, {"net.ipv4.conf.IFNAME.arp_ignore": "1"},
                  {"net.ipv4.conf.eth0.rp_filter": "2"}, {"net.ipv4.ping_group_range": "0 2147483647"},
                  {"net.ipv4.ip_forward": "1"}, {"net.ipv6.conf.IFNAME.disable_ipv6": "1"},
                  {"net.ipv4.route.flush": "1"}, {"kernel.hostname": "x"}, {"net.ipv4.conf.../../x": "1"},
                  {"net.core.somaxconn": "abc"}, {"net.nonexistent.key": "1"}, {"net.ipv4.tcp_syncookies": "2"},
                  ["net.core.somaxconn"]],
    ("sysctl", "net.core.somaxconn"): ["256", "", "-1", "99999999999999999999", 5],
    ("mac",): ["0a:58:0a:f4:01:07", "ff:ff:ff:ff:ff:ff", "", "x"],
    ("mtu",): [1280, 9000, 68, 67, 65536],
    ("promisc",): _BOOL,
    ("allmulti",): _BOOL,
    ("txQLen",): [0, 100, 10_000, -1, 2 ** 32],
    ("dataDir",): ["/nonexistent-fuzz", 5],
    ("args", "cni"): [{"mtu": 1300}, {"sysctl": {"net.core.somaxconn": "300"}}, {"mac": "0a:58:0a:f4:01:09"},
                      {"promisc": True}, {"txQLen": 500}, {"sysctl": "x"}],
    ("runtimeConfig", "mac"): ["0a:58:0a:f4:01:08", 5],
}
_RATES = [8, 1000, 1_000_000, 10 ** 9, 7, 2 ** 64 * 8, 10 ** 30]
_BURSTS = [8, 80_000, 2 ** 32 * 8, 0]
BANDWIDTH = {
    **{(k,): _RATES for k in ("ingressRate", "egressRate")},
    **{(k,): _BURSTS for k in ("ingressBurst", "egressBurst")},
    ("runtimeConfig", "bandwidth"): [
        {}, {"ingressRate": 1_000_000, "ingressBurst": 1_000_000}, {"egressRate": 1_000_000, "egressBurst": 1_000_000},
        {"IngressRate": 1_000_000, "IngressBurst": 1_000_000, "EgressRate": 1_000_000, "EgressBurst": 1_000_000},
        {"ingressRate": 1_000_000, "ingressBurst": 1_000_000, "shapedSubnets": ["10.0.0.0/8"]}, "x"],
    **{("runtimeConfig", "bandwidth", k): _RATES + _BURSTS for k in ("ingressRate", "ingressBurst", "egressRate",
                                                                      "egressBurst")},
}
DNSNAME = {
    ("domainName",): ["dns.podman", "example.com.", "-bad-", "a" * 64 + ".com", "", 5, "\u00e9.com"],
    ("upstreams",): [["127.0.0.1"], ["[::1]:5353"], [], "x", [""]],
    ("runtimeConfig", "aliases"): [{"@NET@": ["web", "db"]}, ["web"], {"@NET@": "web"}, {"other": ["x"]},
                                   {"@NET@": ["-bad"]}, 5],
}
OVERLAY = {
    **{path: values for path, values in BRIDGE.items() if path[0] != "ipam"},
    ("cluster",): ["default", "other", "../default", "", "a" * 300, "default.json"],
    ("stateFile",): ["@STATE@", "@STATE@.left", "@DIR@", "@FILE@", "/nonexistent-fuzz/x.json", "", "relative.json",
                     "/dev/null", "/proc/self/status", "@STATE@/x"],
    ("ipam",): [{}, {"type": "host-local"}, {"type": "dhcp"},
                {"dataDir": "@DATA@", "ranges": [[{"subnet": "@SUBNET@"}]]},
                {"subnet": "@SUBNET2@"}, "x", []],
    ("ipam", "type"): ["host-local", "", "static", 5],
    ("ipam", "dataDir"): IPAM[("ipam", "dataDir")],
    ("ipam", "routes"): IPAM[("ipam", "routes")] + [[{"dst": "@CIDR@"}], "x", [5]],
    ("isGateway",): [True, False, "false"],
    ("isDefaultGateway",): [True, False, 0],
    ("mtu",): [1450, 1400, 9000, 68, 67, 65536, 0, None, "1450"],
}
# Kubernetes container ports, as runtimes pass the podPorts capability, and broken
_POD_PORTS = [[], [{"name": "http", "containerPort": 80}], [{"Name": "http", "ContainerPort": 8080, "Protocol": "UDP"}],
              [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 81}],
              [{"name": "http", "containerPort": 80}, {"name": "http", "containerPort": 80, "protocol": "UDP"}],
              [{"name": "dns", "containerPort": 53, "protocol": "SCTP"}], [{"containerPort": 80}],
              [{"name": "p" * 16, "containerPort": 80}], [{"name": "http", "containerPort": 0}],
              [{"name": "http", "containerPort": 65536}], [{"name": "http"}], [{"name": "http", "containerPort": "80"}],
              [{"name": "http", "containerPort": 80, "protocol": "icmp"}], [{"name": "-http", "containerPort": 80}],
              [{"name": "http", "containerPort": 80.5}], [5], [None], {"name": "http"}, "http"]
NETPOLICY = {
    ("socket",): ["pycni-policy", "@NOPOLICY@", "", "p" * 120, "@NOPOLICY@\u0000x", "pycni-policy "],
    ("labelsDir",): ["@LABELS@", "@LABELS@/fuzz", "/nonexistent-fuzz", "@FILE@", "@DIR@", "relative", ""],
    ("namespace",): ["default", "fuzz", "kube-system", "Upper", "a" * 64, "-x", "", "a.b"],
    ("capabilities",): [{}, {"labels": True}, {"podPorts": True}],
    ("runtimeConfig",): [{}, {"labels": {}},
                         {"Labels": {"app": "db"}, "PodPorts": [{"name": "db", "containerPort": 5432}]},
                         {"labels": None, "podPorts": None}],
    ("runtimeConfig", "labels"): [{}, {"app": "db"}, {"role": "client"}, {"app": ""}, {"app": 5}, {"app": None},
                                  {"": "x"}, {"example.com/app": "web"}, {"a/b/c": "x"}, {"k" * 64: "v"},
                                  {"app": "v" * 64},
                                  {"app": "no spaces"}, {"app": "-web"}, {"app": {"nested": 1}}, {"app": ["web"]},
                                  {"kubernetes.io/metadata.name": "other"}, ["app"], "app=web"],
    ("runtimeConfig", "labels", "role"): ["client", "", "x" * 64, 5, True, "\u00e9"],
    ("runtimeConfig", "podPorts"): _POD_PORTS,
    ("runtimeConfig", "podPorts", 0, "name"): ["http", "metrics", "", "p" * 15, "p" * 16, "HTTP", "ht-tp", "h--p",
                                               "80", 80, None],
    ("runtimeConfig", "podPorts", 0, "containerPort"): [80, 1, 65535, 0, -1, 65536, "80", 80.0, 2 ** 64, True],
    ("runtimeConfig", "podPorts", 0, "protocol"): ["TCP", "UDP", "SCTP", "tcp", "", "ICMP", 6, None],
}
FIELDS = {"bridge": BRIDGE, "host-local": IPAM, "loopback": {}, "portmap": PORTMAP, "firewall": FIREWALL,
          "tuning": TUNING, "bandwidth": BANDWIDTH, "dnsname": DNSNAME, "overlay": OVERLAY, "netpolicy": NETPOLICY}
PREV_FIELDS = {
    ("ips",): [[], "x"],
    ("ips", 0, "address"): ["@ADDR@/24", "10.9.9.9/24", "fd00:f::5/64", "10.9.9.9", "x"],
    ("ips", 0, "gateway"): ["@GW@", "10.9.9.1", "", "x"],
    ("ips", 0, "interface"): [0, 1, 2, 3, -1, 10 ** 20, "2"],
    ("ips", 0, "version"): ["4", "6", 4],
    ("ips", 1): [{"address": "fd00:f::5/64", "gateway": "fd00:f::1", "interface": 2}],
    ("interfaces",): [[], "x"],
    ("interfaces", 1, "name"): ["veth-not-here", "@BRIDGE@", ""],
    ("interfaces", 2, "name"): ["eth1", ""],
    ("interfaces", 2, "sandbox"): ["", "/run/netns/x"],
    ("interfaces", 2, "mac"): ["zz", "00:11:22:33:44:55"],
    ("routes",): [[{"dst": "0.0.0.0/0", "gw": "@GW@"}], [{"dst": "x"}]],
    ("dns",): [{"nameservers": ["10.0.0.1"]}, {}],
    ("cniVersion",): ["0.3.1", "0.2.0", "9.9.9", 5],
}

# --- the node the overlay and netpolicy plugins find -----------------------------------------
# Edits of the node state the overlay duty wrote (placeholders as in configs)
NODE_STATE_FIELDS = {
    ("version",): [2, 0, "1", 1.0, True, None, 10 ** 30],
    ("cluster",): ["other", "", 5, None],
    ("node",): ["", 5, None, "n" * 300],
    ("clusterCIDR",): ["@CIDR@", "10.0.0.0/8", "10.9.0.0/16", "fd00::/48", "@SUBNET@", "10.0.0.0/33", "", 5, None],
    ("clusterCIDR6",): ["fd00::/16", "10.0.0.0/8", "", 5, None],
    ("subnet",): ["@SUBNET@", "10.9.9.0/24", "@ADDR@/24", "@CIDR@", "fd00::/64", "10.0.0.0/33", "", 5, None],
    ("subnet6",): ["fd00::/64", "10.9.9.0/24", "", 5, None],
    ("mtu",): [1450, 1280, 68, 67, 65535, 65536, 0, -1, "1450", 1450.5, True, None, 2 ** 64],
    ("vtep",): [{}, None, "x", []],
    ("underlay",): [{}, None, "x", []],
}
# ...and those of them that make a node state unusable whatever the other fields hold
NODE_STATE_UNUSABLE = {
    ("version",): NODE_STATE_FIELDS[("version",)],
    ("cluster",): [5, None], ("node",): [5, None],
    ("clusterCIDR",): ["fd00::/48", "10.0.0.0/33", "", 5], ("clusterCIDR6",): ["10.0.0.0/8", "", 5],
    ("subnet",): ["@ADDR@/24", "fd00::/64", "10.0.0.0/33", "", 5], ("subnet6",): ["10.9.9.0/24", "", 5],
    ("mtu",): [67, 65536, 0, -1, "1450", 1450.5, True, None, 2 ** 64],
    ("vtep",): [None, "x", []], ("underlay",): [None, "x", []],
}
# what is at the node state file's path (the .left file of a clean leave for "left")
NODE_STATE_FORMS = ("agent", "missing", "left", "empty", "edited", "raw", "value")
# label files of pods (labelsDir/<namespace>/<name>.json), as an operator or a broken tool left them; CNI_ARGS
# naming their pods
LABEL_FILES = {"fuzz/web-1": {"labels": {"role": "client"}, "ports": [{"name": "metrics", "containerPort": 9090}]},
               "fuzz/db-1": {"labels": {"app": "db"},
                             "ports": [{"name": "db", "containerPort": 5432, "protocol": "TCP"}]},
               "fuzz/torn": b'{"labels": {"app"', "fuzz/array": [], "fuzz/nonutf8": b'{"labels": {"a": "\xff"}}',
               "fuzz/badlabels": {"labels": ["app"]}, "fuzz/badports": {"ports": {"name": "http"}},
               "fuzz/badport": {"ports": [{"name": "x" * 20, "containerPort": 80}, 5]},
               "fuzz/badvalue": {"labels": {"app": "no spaces"}}, "fuzz/dir": None,
               "default/" + CONTAINER_ID: {"labels": {"app": "web"}}}
POD_ARGS = ["IgnoreUnknown=1;K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=" + name.split("/")[1] for name in LABEL_FILES] + [
    "K8S_POD_NAMESPACE=fuzz", "K8S_POD_NAME=web-1", "K8S_POD_NAMESPACE=Fuzz;K8S_POD_NAME=web-1",
    "K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=../fuzz/web-1", "K8S_POD_NAMESPACE=..;K8S_POD_NAME=x",
    "K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=" + "w" * 254, "K8S_POD_NAMESPACE=fuzz;K8S_POD_NAME=web-1/../../x"]
PLUGIN_ARGS = {"netpolicy": POD_ARGS}
# the policy controller's objects: pods of namespace fuzz isolated, named ports and labels matter
POLICIES = [
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
     "metadata": {"name": "isolate", "namespace": "fuzz"},
     "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [
         {"from": [{"podSelector": {"matchLabels": {"role": "client"}}}], "ports": [{"port": "http"}]}],
         "egress": [{"to": [{"podSelector": {"matchLabels": {"app": "db"}}}], "ports": [{"port": "db"}]}]}},
    {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "web", "namespace": "default"},
     "spec": {"podSelector": {"matchLabels": {"app": "web"}}, "ingress": [
         {"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "fuzz"}}}]}]}},
]


def write_label_files(directory) -> None:
    for name, content in LABEL_FILES.items():
        path = directory / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        if content is None:
            path.mkdir()
        else:
            path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())


# --- one input ------------------------------------------------------------------------------
# CNI_NETNS forms (materialized per site): the pod, and everything a runtime or an attacker may pass
NETNS_FORMS = ("pod", "missing", "file", "dir", "self", "node", "mnt", "devnull", "relative", "empty", "absent",
               "nonutf8")
PATH_FORMS = ("bin", "missing", "empty", "absent", "multi", "relative")
# the container is gone before the runtime's DEL: its netns path is missing, or CNI_NETNS is empty
GONE_FORMS = ("", "missing", "empty")


@dataclass(frozen=True)
class Input:
    plugin: str
    command: object = "ADD"             # CNI_COMMAND: str, bytes (not UTF-8) or None (unset)
    container_id: object = CONTAINER_ID
    ifname: object = IFNAME
    netns: str = "pod"                  # one of NETNS_FORMS
    args: object = ""
    path: str = "bin"                   # one of PATH_FORMS
    version: str = "1.0.0"
    edits: tuple = ()                   # ((path, value), ...) on the base config
    raw: str = ""                       # a mutation of the whole document (RAW_DOCUMENT)
    prev: tuple = ("real",)             # ("real",), ("none",), ("edited", edits), ("value", junk)
    agent: bool = False
    gone: str = ""                      # one of GONE_FORMS
    check: bool = False
    again: bool = False                 # the runtime sends ADD again (the unedited config) before DEL
    node_state: tuple = ("agent",)      # (one of NODE_STATE_FORMS, edits | raw mutation | junk)


# whole-document mutations, and whether a decoder must refuse the result (code 6)
RAW_DOCUMENT = {"": False, "truncate": True, "trailing": True, "nonutf8": True, "empty": True, "null": True,
                "array": True, "nul": True, "bom": False, "dupkey": False, "whitespace": False}


def _often(default, strategy, percent: int = 85):
    """``default`` most of the time, else something from ``strategy``."""
    return st.integers(0, 99).flatmap(lambda n: st.just(default) if n < percent else strategy)


def _no_nul(value):
    return value.replace("\0", "") if isinstance(value, str) else value.replace(b"\0", b"")


_IDS = st.one_of(
    st.from_regex(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]{0,80}", fullmatch=True),
    st.sampled_from(["c" * 300, "c" * 600, "", "a/b", "a:b", "-a", ".a", "a b", "\u00e9", b"\xff\xfe", "x" * 5000,
                     None]),
)
_IFNAMES = st.sampled_from(["net1", "e" * 15, "a.b", "\u00e9" * 7, "eth0.5", "lo", "", "e" * 16, "\u00e9" * 8, ".",
                            "..", "a/b", "a:b", "a b", b"\xff\xfe", "\t", None])
_ARGS = st.one_of(
    st.sampled_from(["IgnoreUnknown=1", "IgnoreUnknown=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=pod-1;"
                     "K8S_POD_INFRA_CONTAINER_ID=abc", "IP=@ADDR@", "IP=@ADDR@,fd00:f::7", "MAC=0a:58:0a:f4:01:05",
                     "K8S_POD_NAME=Web_2", "foo", "=x", ";;", "a=b=c", "K8S_POD_NAME=../x", "IP=999.1.1.1", "IP=@GW@",
                     "MAC=zz", b"K8S_POD_NAME=\xff", None]),
    st.text(max_size=30).map(_no_nul),
)
_COMMANDS = st.sampled_from(["CHECK", "DEL", "VERSION", "GC", "STATUS", "add", "", "ADD ", b"\xff", None])


@st.composite
def _edit(draw, fields: dict):
    paths = sorted(fields, key=repr) + sorted(COMMON, key=repr)
    path = draw(st.sampled_from(paths))
    known = fields.get(path) or COMMON.get(path) or []
    value = draw(st.one_of(*([st.sampled_from(known)] if known else []), HOSTILE_STRINGS, JUNK, st.just(DELETE)))
    return path, value


@st.composite
def _prev_edit(draw):
    path = draw(st.sampled_from(sorted(PREV_FIELDS, key=repr)))
    return path, draw(st.one_of(st.sampled_from(PREV_FIELDS[path]), HOSTILE_STRINGS, JUNK, st.just(DELETE)))


@st.composite
def _node_state_edit(draw):
    path = draw(st.sampled_from(sorted(NODE_STATE_FIELDS, key=repr)))
    return path, draw(st.one_of(st.sampled_from(NODE_STATE_FIELDS[path]), HOSTILE_STRINGS, JUNK, st.just(DELETE)))


_EDITED_NODE_STATE = st.tuples(st.just("edited"), st.lists(_node_state_edit(), min_size=1, max_size=3).map(tuple))
_NODE_STATES = st.one_of(st.sampled_from([(form,) for form in NODE_STATE_FORMS[1:4]]),
                         _EDITED_NODE_STATE, _EDITED_NODE_STATE,   # the one with most to find: twice as often
                         st.tuples(st.just("raw"), st.sampled_from(sorted(set(RAW_DOCUMENT) - {""}))),
                         st.tuples(st.just("value"), JUNK))


def plugin_input(plugin: str):
    """One input for ``plugin``: mostly what a runtime sends, each part
    broken now and then, so that some ADDs succeed and some fail deep down."""
    chained = plugin in CHAINED
    prev = (st.one_of(st.just(("real",)), st.tuples(st.just("edited"), st.lists(_prev_edit(), min_size=1,
                                                                                 max_size=3).map(tuple)),
                      st.just(("none",)), st.tuples(st.just("value"), JUNK))
            if chained else _often(("none",), st.tuples(st.just("value"), JUNK), 90))
    args = st.one_of(_ARGS, st.sampled_from(PLUGIN_ARGS[plugin])) if plugin in PLUGIN_ARGS else _ARGS
    return st.builds(
        Input,
        plugin=st.just(plugin),
        command=_often("ADD", _COMMANDS, 88),
        container_id=_often(CONTAINER_ID, _IDS, 85),
        ifname=_often(IFNAME, _IFNAMES, 88),
        netns=_often("pod", st.sampled_from(NETNS_FORMS), 85),
        args=_often(BASE_ARGS.get(plugin, ""), args, 85),
        path=_often("bin", st.sampled_from(PATH_FORMS), 92),
        version=st.sampled_from(cni_version.SUPPORTED[::-1]),
        edits=st.lists(_edit(FIELDS[plugin]), max_size=4).map(tuple),
        raw=_often("", st.sampled_from(sorted(RAW_DOCUMENT)), 92),
        prev=prev,
        agent=st.booleans(),
        gone=_often("", st.sampled_from(GONE_FORMS[1:]), 85),
        check=_often(False, st.just(True), 85),
        again=_often(False, st.just(True), 88),
        node_state=_often(("agent",), _NODE_STATES, 70) if plugin == "overlay" else st.just(("agent",)),
    )


# --- materializing on a site --------------------------------------------------------------------
ABSENT_POLICY_SOCKET = "pycni-policy-absent"   # no controller serves it on any site


def labels_dir(site):
    return site.root / "labels"


def placeholders(site) -> dict[str, str]:
    net = site.subnet.rsplit(".", 1)[0]
    return {"@NET@": NETWORK, "@BRIDGE2@": site.bridge + "2", "@BRIDGE@": site.bridge, "@DATA@": str(site.data),
            "@FILE@": str(site.not_netns_file), "@DIR@": str(site.not_netns_dir), "@SUBNET2@": "10.251.0.0/24",
            "@SUBNET@": site.subnet, "@ADDR@": f"{net}.77", "@GW@": f"{net}.1", "@STATE@": site.node_state_path,
            "@CIDR@": site.agent_node_state().cluster_cidr, "@LABELS@": str(labels_dir(site)),
            "@NOPOLICY@": ABSENT_POLICY_SOCKET}


def _substitute(value, names: dict, prev):
    if isinstance(value, Raw):
        return f"@@RAW:{value.name}@@"
    if isinstance(value, str):
        if value == "@PREV@":
            return prev
        for name, real in names.items():
            value = value.replace(name, real)
        return value
    if isinstance(value, list):
        return [_substitute(v, names, prev) for v in value]
    if isinstance(value, dict):
        return {_substitute(k, names, prev): _substitute(v, names, prev) for k, v in value.items()}
    return value


def apply_edit(doc, path: tuple, value) -> None:
    """Set (or delete) ``path`` in ``doc``; intermediate objects are made,
    a path through something else (a list too short, a string) is skipped."""
    node = doc
    for key in path[:-1]:
        if isinstance(node, dict) and isinstance(key, str):
            node = node.setdefault(key, {})
        elif isinstance(node, list) and isinstance(key, int) and key < len(node):
            node = node[key]
        else:
            return
    last = path[-1]
    if isinstance(node, dict) and isinstance(last, str):
        if value is DELETE:
            node.pop(last, None)
        else:
            node[last] = value
    elif isinstance(node, list) and isinstance(last, int) and last <= len(node):
        if value is DELETE:
            if last < len(node):
                del node[last]
        elif last == len(node):
            node.append(value)
        else:
            node[last] = value


def prev_result(inp: Input, real: dict | None):
    """The prevResult the input asks for (the real one in the config's
    version, as libcni converts it), or None for none."""
    kind = inp.prev[0]
    if kind == "none":
        return None
    if kind == "value":
        return inp.prev[1]
    result = json.loads(json.dumps(real or {"cniVersion": "1.0.0"}))
    if inp.version in cni_version.SUPPORTED:
        result = cni_version.result_for_version(cni_version.result_to_internal(result), inp.version)
    for path, value in inp.prev[1] if kind == "edited" else ():
        apply_edit(result, path, value)
    return result


def config_document(inp: Input, site, real_prev: dict | None) -> dict:
    doc = {"cniVersion": inp.version, "name": "@NET@", **json.loads(json.dumps(BASES[inp.plugin]))}
    for path, value in inp.edits:
        apply_edit(doc, path, value)
    prev = prev_result(inp, real_prev)
    if prev is None:
        doc.pop("prevResult", None)
    elif "prevResult" in doc or inp.plugin not in CHAINED:
        doc["prevResult"] = "@PREV@"
    return _substitute(doc, placeholders(site), _substitute(prev, placeholders(site), None))


def _one_of(value, values) -> bool:
    """``value`` is among ``values`` as JSON tells them apart (1, 1.0 and true are three)."""
    def text(v):
        return json.dumps(v, sort_keys=True, default=repr)   # a Raw is none of them

    return text(value) in {text(v) for v in values}


def _unusable_node_state(inp: Input) -> str:
    form, *detail = inp.node_state
    if form in ("missing", "left", "empty", "value") or form == "raw" and RAW_DOCUMENT[detail[0]]:
        return form
    last = dict(detail[0]) if form == "edited" else {}   # the last edit of each field wins
    return next((f"{path[0]} {value!r}" for path, value in last.items()
                 if _one_of(value, NODE_STATE_UNUSABLE[path])), "")


# labels and named container ports the policy controller must refuse (Kubernetes' rules)
BAD_LABEL_KEYS = ("", "a/b/c", "k" * 64)
BAD_LABEL_VALUES = ("v" * 64, "x" * 64, "no spaces", "-web", 5, True, None, "\u00e9", {"nested": 1}, ["web"])
PORT_NAME_ALLOWED = set("abcdefghijklmnopqrstuvwxyz0123456789-")


def _bad_named_port(port) -> bool:
    if not isinstance(port, dict):
        return True
    port = fold_keys(port, ("name", "containerPort", "protocol"))
    name, number = port.get("name"), port.get("containerPort")
    if not name:
        return False   # the plugin passes on named ports only
    return (not isinstance(name, str) or len(name) > 15 or not set(name) <= PORT_NAME_ALLOWED or "--" in name
            or name[0] == "-" or name[-1] == "-" or not set(name) & set("abcdefghijklmnopqrstuvwxyz")
            or type(number) is not int or not 1 <= number <= 65535
            or (port.get("protocol") or "TCP") not in ("TCP", "UDP", "SCTP"))


def _refused_endpoint(doc: dict) -> str:
    runtime = doc.get("runtimeConfig")
    runtime = fold_keys(runtime, ("labels", "podPorts")) if isinstance(runtime, dict) else {}
    labels, ports = runtime.get("labels"), runtime.get("podPorts")
    if labels is not None and not isinstance(labels, dict) or ports is not None and not isinstance(ports, list):
        return "labels or podPorts of the wrong type"
    bad = [k for k, v in (labels or {}).items() if k in BAD_LABEL_KEYS or _one_of(v, BAD_LABEL_VALUES)]
    bad += [p for p in ports or () if _bad_named_port(p)]
    return f"the controller must refuse {bad[0]!r}" if bad else ""


def doomed(inp: Input, doc: dict, site) -> str:
    """Why an ADD of config ``doc`` must fail whatever else the input holds
    ("" if it may succeed): a netpolicy plugin with no controller to ask or
    with labels or ports the controller refuses, an overlay plugin whose
    node state is gone or cannot be used."""
    if inp.plugin == "netpolicy":
        if doc.get("socket") == ABSENT_POLICY_SOCKET:
            return "no policy controller serves its socket"
        return _refused_endpoint(doc)
    reads_site_state = doc.get("stateFile") in (None, "", site.node_state_path) and doc.get("cluster", "default") \
        == "default"
    unusable = _unusable_node_state(inp) if inp.plugin == "overlay" and reads_site_state else ""
    return f"the node state is unusable ({unusable})" if unusable else ""


def node_state_files(inp: Input, site) -> tuple[bytes | None, bytes | None]:
    """What the input puts at the node state file's path and at the path of
    the file a clean leave renames it to (None: nothing)."""
    kind, *detail = inp.node_state
    agent = site.agent_node_state().to_json()
    if kind in ("missing", "left"):
        return None, (serialize(agent, "")[0] if kind == "left" else None)
    if kind == "empty":
        return b"", None
    if kind == "value":
        return serialize(_substitute(detail[0], placeholders(site), None), "")[0], None
    for path, value in detail[0] if kind == "edited" else ():
        apply_edit(agent, path, value)
    return serialize(_substitute(agent, placeholders(site), None), detail[0] if kind == "raw" else "")[0], None


def serialize(doc, raw: str) -> tuple[bytes, bool]:
    """The config's bytes with Raw tokens spliced in and the whole-document
    mutation applied; and whether a strict decoder must refuse them."""
    text = json.dumps(doc)
    undecodable = RAW_DOCUMENT[raw]
    for name in sorted({n for n in RAW_NAMES if f'"@@RAW:{n}@@"' in text}):
        undecodable = undecodable or name in UNDECODABLE
        text = text.replace(f'"@@RAW:{name}@@"', Raw(name).text)
    data = text.encode("utf-8", "surrogatepass")
    data = {
        "": lambda d: d,
        "truncate": lambda d: d[: len(d) // 2],
        "trailing": lambda d: d + b" x",
        "nonutf8": lambda d: d.replace(NETWORK.encode(), b"\xff" + NETWORK.encode(), 1) if NETWORK.encode() in d
        else d + b"\xff",
        "empty": lambda d: b"",
        "null": lambda d: b"null",
        "array": lambda d: b"[" + d + b"]",
        "nul": lambda d: d + b"\0",
        "bom": lambda d: b"\xef\xbb\xbf" + d,
        "dupkey": lambda d: d[:-1] + b', "cniVersion": "0.0.1"}' if d.endswith(b"}") else d,
        "whitespace": lambda d: b"\r\n\t " + d.replace(b", ", b" ,\n\t") + b"\n",
    }[raw](data)
    return data, undecodable


def effective_version(stdin: bytes):
    """The cniVersion a plugin reads from these bytes, if any."""
    try:
        doc = json.loads(stdin)
    except (ValueError, RecursionError):
        return None
    return doc.get("cniVersion") if isinstance(doc, dict) else None


def netns_value(form: str, site):
    return {"pod": site.pod_path, "missing": site.pod_path + "-gone", "file": str(site.not_netns_file),
            "dir": str(site.not_netns_dir), "self": "/proc/self/ns/net", "node": site.node_path,
            "mnt": "/proc/self/ns/mnt", "devnull": "/dev/null", "relative": "netns", "empty": "", "absent": None,
            "nonutf8": b"/run/netns/\xff"}[form]


def path_value(form: str, site):
    return {"bin": site.bin_dir, "missing": "/nonexistent-fuzz", "empty": "", "absent": None,
            "multi": f"/nonexistent-fuzz:{site.bin_dir}", "relative": "bin"}[form]


def environment(inp: Input, site, command=None, netns=None) -> dict:
    """The CNI_* variables of the input (``command``/``netns`` override it: the runtime's DEL)."""
    names = placeholders(site)
    env = site.private_env(inp.agent)
    values = {"CNI_COMMAND": inp.command if command is None else command, "CNI_CONTAINERID": inp.container_id,
              "CNI_IFNAME": inp.ifname, "CNI_NETNS": netns_value(inp.netns, site) if netns is None else netns,
              "CNI_ARGS": inp.args, "CNI_PATH": path_value(inp.path, site)}
    for key, value in values.items():
        if isinstance(value, str):
            value = _substitute(value, names, None)
        if value is not None:
            env[key] = value
    return env
