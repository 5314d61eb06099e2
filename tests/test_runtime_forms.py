"""Every capability in the exact form each real runtime sends it.

Each case attaches a pod netns to a node netns through `pycni add` (libcni's
injection: a plugin whose conflist entry enables a capability gets CAP_ARGS'
value verbatim in runtimeConfig), with the runtime's own CNI_ARGS, and then
checks what a user sees: a host port answered from the pod, tc shaping at
the rate asked, the MAC or address asked for, an address from the ranges
asked for; forms no plugin of ours uses must still be accepted.  `pycni
del` must then leave nothing.  The chain is test_containerd.py's (bridge +
host-local + portmap + bandwidth + tuning), every capability enabled.

What each runtime sends, read from their sources (containerd v1.6.20 with
go-cni v1.1.6; cri-o and ocicni main; podman 4.3's containers/common
v0.50 libnetwork/cni; containernetworking/cni libcni), the containerd column
also recorded live by test_containerd.py::test_what_containerd_sends:

| capability | containerd 1.6 | CRI-O (ocicni) | podman 4.3 (CNI backend) | libcni / cnitool |
|---|---|---|---|---|
| portMappings | `[{"HostPort":8080,"ContainerPort":80,"Protocol":"tcp","HostIP":""}]`: go-cni's struct has no JSON tags, so keys are Go field names; `HostIP` always there, `""` when unset; protocol lower case; hostPort 0 dropped | not sent: CRI-O programs host ports itself; ocicni's type (for other callers) is `{"hostPort","containerPort","protocol","hostIP":""}` | `[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]`, `hostIP` only when set, one entry per protocol and per port of a range | CAP_ARGS as given; convention as podman |
| bandwidth | `{"IngressRate":bps,"IngressBurst":4294967295,"EgressRate":0,"EgressBurst":0}` from kubelet's `kubernetes.io/ingress-bandwidth`/`egress-bandwidth` annotations: bits/s, burst MaxUint32 bits, 0 for a direction not annotated, all four keys always | `{"ingressRate":bps,"ingressBurst":34359738359,"egressRate":0,"egressBurst":0}`: burst MaxUint32*8-1 bits, 0 for a direction not annotated | not sent | CAP_ARGS; cni.dev's example has bursts of the same order as the rate |
| ipRanges | never sent: UpdateRuntimeConfig's pod CIDR only renders `cni.conf_template` (`{{.PodCIDR}}`) into the conf dir | `[[{"subnet":"10.1.0.0/16"}]]` (rangeStart, rangeEnd, gateway only when set) if its caller sets it; CRI-O does not | not sent | CAP_ARGS |
| mac | not sent | CNI_ARGS `MAC=` | CNI_ARGS `MAC=` | `"aa:bb:cc:dd:ee:ff"` |
| ips | not sent | CNI_ARGS `IP=` | one address: CNI_ARGS `IP=a.b.c.d`; several: `["a.b.c.d","fd00::5"]`, no prefix length | `["a.b.c.d/24"]` |
| aliases | not sent | `{"NETWORK":["alias"]}` | `{"NETWORK":["alias"]}` (tested end to end in test_podman.py, test_dnsname.py) | CAP_ARGS |
| dns | `{"Servers":[..],"Searches":[..],"Options":[..]}` (untagged) from the CRI DNSConfig | not sent | not sent | `{"servers","searches","options"}` |
| cgroupPath | not sent (containerd 1.7 and later: the sandbox's cgroup parent) | the sandbox's cgroup parent: `/kubepods/besteffort/pod<uid>` (cgroupfs) or `kubepods-besteffort-pod<uid_>.slice` (systemd) | not sent | CAP_ARGS |
| io.kubernetes.cri.pod-annotations | every pod annotation (string map) | every pod annotation | not sent | CAP_ARGS |
| CNI_ARGS | `IgnoreUnknown=1;K8S_POD_NAMESPACE;K8S_POD_NAME;K8S_POD_INFRA_CONTAINER_ID=<sandbox id>;K8S_POD_UID` (a Go map: any order) | the same keys, that order, plus `IP=`/`MAC=` | `IgnoreUnknown=1;K8S_POD_NAME=<container name>` plus `IP=`/`MAC=` | CNI_ARGS |

The reference Go plugins decode runtimeConfig with encoding/json, which
matches keys case-insensitively, so they take containerd's capitalized
forms; with Debian's reference portmap and bandwidth (1.1.1) put in place of
ours, every portMappings and bandwidth case below passes (checked by hand on
this machine), and ours match keys the same way (core.config.fold_keys).
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import unique

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri"))
from k8s_node import (PYCNI, eth0_ipv4, eth0_mac, free_port, host_veth_of, k8s_conflist, leftovers, listen_in,
                      pod_subnets, shaping, tcp_answer, wait_for)
from k8s_node import installed  # noqa: E402,F401  (a fixture: pytest finds it by name)

K8S_ARGS = ("K8S_POD_INFRA_CONTAINER_ID=0123abcd;K8S_POD_UID=5f0c6a4e-1b2c-4d3e-8f90-a1b2c3d4e5f6;IgnoreUnknown=1;"
            "K8S_POD_NAMESPACE=default;K8S_POD_NAME=web-0")
PODMAN_ARGS = "IgnoreUnknown=1;K8S_POD_NAME=web"
MAC = "0a:58:0a:f4:00:2a"
RATE = {"ingress": 10_000_000, "egress": 20_000_000}   # bits/s
PASS_THROUGH = {"dns": True, "cgroupPath": True, "io.kubernetes.cri.pod-annotations": True}

# (id, CAP_ARGS, CNI_ARGS, what the user then sees).  In the
# JSON, "{port}" is a free host port, "{subnet}"/"{other}" this run's pod
# subnet and a second one, "{subnet.7}" an address in it.
FORMS = [
    ("portMappings-containerd", {"portMappings": [{"HostPort": "{port}", "ContainerPort": 8080, "Protocol": "tcp",
                                                   "HostIP": ""}]}, K8S_ARGS, "published"),
    ("portMappings-ocicni", {"portMappings": [{"hostPort": "{port}", "containerPort": 8080, "protocol": "tcp",
                                               "hostIP": ""}]}, K8S_ARGS, "published"),
    ("portMappings-podman", {"portMappings": [{"hostPort": "{port}", "containerPort": 8080, "protocol": "tcp"}]},
     PODMAN_ARGS, "published"),
    ("portMappings-podman-hostIP", {"portMappings": [{"hostPort": "{port}", "containerPort": 8080,
                                                      "protocol": "tcp", "hostIP": "127.0.0.1"}]},
     PODMAN_ARGS, "published"),
    ("bandwidth-containerd", {"bandwidth": {"IngressRate": RATE["ingress"], "IngressBurst": 4294967295,
                                            "EgressRate": RATE["egress"], "EgressBurst": 4294967295}},
     K8S_ARGS, "shaped"),
    ("bandwidth-crio", {"bandwidth": {"ingressRate": RATE["ingress"], "ingressBurst": 34359738359,
                                      "egressRate": RATE["egress"], "egressBurst": 34359738359}},
     K8S_ARGS, "shaped"),
    ("bandwidth-crio-1G", {"bandwidth": {"ingressRate": 1_000_000_000, "ingressBurst": 34359738359,
                                         "egressRate": 0, "egressBurst": 0}}, K8S_ARGS, "shaped"),
    ("bandwidth-libcni", {"bandwidth": {"ingressRate": RATE["ingress"], "ingressBurst": 1_000_000,
                                        "egressRate": RATE["egress"], "egressBurst": 1_000_000}},
     "", "shaped"),
    ("ipRanges-subnet", {"ipRanges": [[{"subnet": "{other}"}]]}, K8S_ARGS, "in other"),
    ("ipRanges-range", {"ipRanges": [[{"subnet": "{other}", "rangeStart": "{other.50}", "rangeEnd": "{other.60}",
                                       "gateway": "{other.1}"}]]}, K8S_ARGS, "in other .50-.60"),
    ("mac-libcni", {"mac": MAC}, "", "mac"),
    ("mac-cni-args", {}, f"{PODMAN_ARGS};MAC={MAC}", "mac"),
    ("ips-libcni", {"ips": ["{subnet.7}/24"]}, "", "address .7"),
    ("ips-podman", {"ips": ["{subnet.7}"]}, PODMAN_ARGS, "address .7"),
    ("ips-cni-args", {}, f"{PODMAN_ARGS};IP={{subnet.7}}", "address .7"),
    ("dns-containerd", {"dns": {"Servers": ["10.96.0.10"], "Searches": ["default.svc.cluster.local"],
                                "Options": ["ndots:5"]}}, K8S_ARGS, "attached"),
    ("dns-libcni", {"dns": {"servers": ["10.96.0.10"], "searches": ["svc.cluster.local"], "options": ["ndots:5"]}},
     "", "attached"),
    ("cgroupPath-crio-cgroupfs", {"cgroupPath": "/kubepods/besteffort/pod5f0c6a4e-1b2c-4d3e-8f90-a1b2c3d4e5f6"},
     K8S_ARGS, "attached"),
    ("cgroupPath-crio-systemd", {"cgroupPath": "kubepods-besteffort-pod5f0c6a4e_1b2c_4d3e_8f90_a1b2c3d4e5f6.slice"},
     K8S_ARGS, "attached"),
    ("pod-annotations", {"io.kubernetes.cri.pod-annotations": {"kubernetes.io/ingress-bandwidth": "10M",
                                                               "kubernetes.io/config.source": "api"}},
     K8S_ARGS, "attached"),
]


def fill(value, fields: dict):
    """Put this run's port, subnets and addresses into a case's JSON."""
    if isinstance(value, dict):
        return {k: fill(v, fields) for k, v in value.items()}
    if isinstance(value, list):
        return [fill(v, fields) for v in value]
    if value == "{port}":
        return fields["port"]
    if isinstance(value, str):
        for key, sub in fields.items():
            value = value.replace("{" + key + "}", str(sub))
    return value


class Attachment:
    """A pod netns attached in a node netns by `pycni add`, as a runtime on
    libcni does, every capability of the chain enabled; `pycni del` detaches."""

    def __init__(self, installed: Path, tmp: Path, node_ns: str, pod_ns: str, subnet, cap_args: dict, cni_args: str):
        self.node_ns, self.path = node_ns, f"/run/netns/{pod_ns}"
        # the container id cnitool (and `pycni add`) derive from the netns path
        self.container_id = "cnitool-" + hashlib.sha512(self.path.encode()).hexdigest()[:20]
        self.data_dir, self.state_dir, self.run_dir = tmp / "ipam", tmp / "state", tmp / "run"
        self.network = unique("forms-")
        conf = k8s_conflist(self.network, unique("pf"), self.data_dir, subnet and str(subnet), capabilities={
            "bridge": {"mac": True, "ips": True, "ipRanges": True, **PASS_THROUGH},
            "portmap": PASS_THROUGH, "bandwidth": PASS_THROUGH, "tuning": {"mac": True, **PASS_THROUGH}})
        conf_dir = tmp / "net.d"
        conf_dir.mkdir()
        (conf_dir / "10-forms.conflist").write_text(json.dumps(conf))
        self.env = {**os.environ, "NETCONFPATH": str(conf_dir), "CNI_PATH": str(installed),
                    "CNI_CACHE_DIR": str(tmp / "cache"), "CAP_ARGS": json.dumps(cap_args), "CNI_ARGS": cni_args,
                    "PYCNI_STATE_DIR": str(self.state_dir), "PYCNI_RUN_DIR": str(self.run_dir)}

    def pycni(self, command: str) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.node_ns, PYCNI, command, self.network, self.path],
                              capture_output=True, text=True, env=self.env, timeout=120)

    def add(self) -> str:
        """ADD; the pod's address from the result."""
        proc = self.pycni("add")
        assert proc.returncode == 0, f"pycni add: {proc.stderr}{proc.stdout}"
        return json.loads(proc.stdout)["ips"][0]["address"].split("/")[0]

    def delete(self) -> None:
        proc = self.pycni("del")
        assert proc.returncode == 0, f"pycni del: {proc.stderr}{proc.stdout}"


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0]) for c in FORMS])
def test_runtime_forms_are_accepted(case, installed, make_netns, tmp_path):
    _, cap_args, cni_args, expect = case
    subnet, other = pod_subnets(2)
    fields = {"port": free_port(), "subnet": subnet, "other": other,
              **{f"{name}.{n}": net.network_address + n for name, net in (("subnet", subnet), ("other", other))
                 for n in (1, 7, 50, 60)}}
    node_ns, pod_ns = make_netns("pcnf"), make_netns("pcnp")
    # A runtime that sends ipRanges supplies the ranges: host-local prepends
    # them to the configured ones (as the reference does), so the conflist has none.
    configured = None if "ipRanges" in cap_args else subnet
    att = Attachment(installed, tmp_path, node_ns, pod_ns, configured, fill(cap_args, fields),
                     fill(cni_args, fields))
    listener = None
    try:
        ip = att.add()
        veth = host_veth_of(node_ns, att.path)
        assert eth0_ipv4(att.path) == [ip]
        if expect == "published":
            listener = listen_in(att.path, 8080)
            wait_for(lambda: tcp_answer(node_ns, "127.0.0.1", fields["port"]) == "hi\n", 10,
                     f"127.0.0.1:{fields['port']} answered from the pod")
        elif expect == "shaped":   # at the rates asked, whatever the keys' case (bits/s; tc says bytes/s)
            asked = {k.lower(): v for k, v in cap_args["bandwidth"].items()}
            assert shaping(node_ns, veth) == tuple([asked[f"{d}rate"] // 8] if asked[f"{d}rate"] else []
                                                   for d in ("ingress", "egress"))
        elif expect == "mac":
            assert eth0_mac(att.path) == MAC
        elif expect == "address .7":
            assert ip == str(fields["subnet.7"])
        elif expect == "in other":
            assert ipaddress.ip_address(ip) in other
        elif expect == "in other .50-.60":
            assert fields["other.50"] <= ipaddress.ip_address(ip) <= fields["other.60"]
        else:
            assert expect == "attached" and ipaddress.ip_address(ip) in subnet
        att.delete()
        assert not leftovers(node_ns, veth, ip, att.data_dir / att.network, [att.state_dir, att.run_dir],
                             [ip, att.container_id])
    finally:
        if listener:
            listener.kill()
            listener.wait()
        att.pycni("del")   # idempotent; cleans up after a failed check
