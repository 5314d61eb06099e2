"""Pods through CNI: each host's conflists, and pods attached and detached
by the plugins run inside their host's namespace (libcni), with the host's
own CNI state dirs."""
from __future__ import annotations

import json
import os

from .. import libcni
from . import policy
from .hosts import add_namespace, delete_namespace, netns_exists, state_dir
from .spec import LOOPBACK_NET


def conflist_for(plan: dict, host: dict, network: dict) -> dict:
    version = network.get("cniVersion", plan["cniVersion"])
    data_dir = os.path.join(host["dir"], "ipam")
    if "plugins" in network:
        plugins = json.loads(json.dumps(network["plugins"]))
        for p in plugins:
            ipam = p.get("ipam")
            if isinstance(ipam, dict) and ipam.get("type") == "host-local" and "dataDir" not in ipam:
                ipam["dataDir"] = data_dir
        return {"cniVersion": version, "name": network["name"], "plugins": plugins}
    if network.get("type") == "overlay":
        # subnets and MTU come from the host's agent (its node state)
        main = {"type": "overlay", "cluster": plan["overlay"]["cluster"], "bridge": network["bridge"],
                "ipam": {"dataDir": data_dir}}
        keys = ("ipMasq", "hairpinMode")
    else:
        ranges, routes = [], []
        for key, default in (("subnet", "0.0.0.0/0"), ("subnet6", "::/0")):
            if key in network:
                ranges.append([{"subnet": network[key]}])
                routes.append({"dst": default})
        main = {
            "type": network.get("type", "bridge"),
            "bridge": network["bridge"],
            "isGateway": network.get("isGateway", True),
            "ipMasq": network.get("ipMasq", False),
            "ipam": {"type": "host-local", "dataDir": data_dir, "ranges": ranges, "routes": routes},
        }
        keys = ("mtu", "hairpinMode")
    main.update({key: network[key] for key in keys if key in network})
    plugins = [main]
    if network.get("dns"):
        plugins.append({"type": "dnsname", "domainName": network.get("domain", "dns.podman"),
                        "capabilities": {"aliases": True}})
    if plan.get("policy"):
        plugins.append(policy.conflist_entry(host))
    return {"cniVersion": version, "name": network["name"], "plugins": plugins}


def write_conflists(plan: dict, host: dict) -> None:
    files = []
    if plan["loopback"]:
        files.append(("00-loopback.conflist", {"cniVersion": plan["cniVersion"], "name": LOOPBACK_NET,
                                               "plugins": [{"type": "loopback"}]}))
    for i, network in enumerate(plan["networks"], start=10):
        files.append((f"{i}-{network['name']}.conflist", conflist_for(plan, host, network)))
    for fname, conf in files:
        with open(os.path.join(host["dir"], "net.d", fname), "w") as f:
            json.dump(conf, f, indent=2)


def _write_resolv_conf(pod: dict, result: dict) -> None:
    """The result's DNS as the pod's resolv.conf (`ip netns exec` mounts it)."""
    dns = result.get("dns") or {}
    if not dns.get("nameservers"):
        return
    lines = [f"nameserver {ns}" for ns in dns["nameservers"]]
    if dns.get("search"):
        lines.append("search " + " ".join(dns["search"]))
    if dns.get("options"):
        lines.append("options " + " ".join(dns["options"]))
    d = os.path.join("/etc/netns", pod["netns"])
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "resolv.conf"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _cni_for(plan: dict, host: dict) -> libcni.CNIConfig:
    return libcni.CNIConfig(
        [plan["binDir"]],
        os.path.join(host["dir"], "cache"),
        env={"PYCNI_STATE_DIR": state_dir(host),
             "PYCNI_RUN_DIR": os.path.join(host["dir"], "run")},
        exec_netns=f"/run/netns/{host['netns']}",
    )


def _netconfs(host: dict) -> dict[str, libcni.NetworkConfigList]:
    return {c.name: c for c in libcni.load_all(os.path.join(host["dir"], "net.d"))}


def _runtime_conf(plan: dict, pod: dict, ifname: str | None = None) -> libcni.RuntimeConf:
    return libcni.RuntimeConf(
        container_id=pod["containerId"],
        netns=f"/run/netns/{pod['netns']}",
        ifname=ifname or pod["ifname"],
        args=[("IgnoreUnknown", "1"), ("K8S_POD_NAMESPACE", pod["namespace"]),
              ("K8S_POD_NAME", pod["name"]), ("K8S_POD_INFRA_CONTAINER_ID", pod["containerId"])],
        capability_args=policy.capability_args(pod) if plan.get("policy") else {},
    )


def _steps(plan: dict, pod: dict) -> list[tuple[str, str | None]]:
    """(network, ifname) per attachment of a pod, loopback first."""
    return ([(LOOPBACK_NET, "lo")] if plan.get("loopback", True) else []) + [(pod["network"], None)]


def attach(plan: dict, host: dict, pod: dict) -> None:
    """A pod's namespace and its attachments; the result goes into ``pod``."""
    add_namespace(pod["netns"])
    cni, confs = _cni_for(plan, host), _netconfs(host)
    for network, ifname in _steps(plan, pod):
        result = cni.add_network_list(confs[network], _runtime_conf(plan, pod, ifname))
    pod["result"] = result
    pod["ips"] = [ip["address"] for ip in result.get("ips") or []]
    _write_resolv_conf(pod, result)


def detach(plan: dict, host: dict | None, pod: dict, log) -> bool:
    """DEL every attachment of a pod (best effort: each failure is logged),
    then remove its namespace; False when the namespace stays."""
    if host is not None and netns_exists(host["netns"]):
        try:
            cni, confs = _cni_for(plan, host), _netconfs(host)
        except (libcni.LibCNIError, OSError) as e:
            log(f"pod {pod['namespace']}/{pod['name']}: cannot load configs: {e}")
        else:
            for network, ifname in reversed(_steps(plan, pod)):
                if network not in confs:
                    continue
                try:
                    cni.del_network_list(confs[network], _runtime_conf(plan, pod, ifname))
                except (libcni.LibCNIError, OSError) as e:
                    log(f"pod {pod['namespace']}/{pod['name']}: DEL {network} failed: {e}")
    return delete_namespace(pod["netns"])
