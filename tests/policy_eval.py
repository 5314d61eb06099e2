"""An independent evaluator of Kubernetes NetworkPolicy semantics, the
reference the tests hold netpolicy to.

Written straight from the Kubernetes documentation (Concepts > Network
Policies, and the NetworkPolicy API reference), on the raw objects a YAML
file holds, with the standard library only: it shares no code with
netpolicy, so a misreading there does not hide here.

What the documentation says, and where it shows below:
- A pod is isolated for ingress (egress) if any NetworkPolicy in its
  namespace selects it and has Ingress (Egress) in policyTypes.
- policyTypes omitted: Ingress, plus Egress if the policy has egress rules.
- An isolated pod accepts (sends) only what at least one rule of those
  policies allows: the union.  A connection needs the source's egress and
  the destination's ingress to allow it; replies then flow freely.
- A rule allows traffic matching one of its ports AND one of its peers;
  no ports means every port, no peers means every peer.
- A peer with podSelector only: pods of the policy's namespace;
  namespaceSelector only: every pod of the matching namespaces; both: pods
  matching podSelector in namespaces matching namespaceSelector; ipBlock:
  addresses in cidr and in none of except.
- Ports: protocol (default TCP) and port; port absent: every port of the
  protocol; endPort: port..endPort; a named port is the destination pod's
  container port of that name and protocol.
- Traffic from and to the node a pod runs on is always allowed, and a pod
  can always reach itself.
"""
import ipaddress


def _labels_match(selector, labels):
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and not (key in labels and labels[key] in values):
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


class Pod:
    def __init__(self, obj):
        meta = obj["metadata"]
        self.namespace = meta.get("namespace", "default")
        self.name = meta["name"]
        self.labels = meta.get("labels") or {}
        self.node = (obj.get("spec") or {}).get("nodeName", "")
        status = obj.get("status") or {}
        self.ips = [x["ip"] for x in status.get("podIPs") or []] or [status.get("podIP")]
        self.container_ports = [p for c in (obj.get("spec") or {}).get("containers") or []
                                for p in c.get("ports") or []]

    def named_port(self, name, protocol):
        for p in self.container_ports:
            if p.get("name") == name and p.get("protocol", "TCP") == protocol:
                return p["containerPort"]
        return None


class Cluster:
    def __init__(self, policies=(), namespaces=(), pods=(), node_addresses=None):
        self.policies = list(policies)
        self.pods = [Pod(p) for p in pods]
        self.namespace_labels = {}
        for ns in namespaces:
            name = ns["metadata"]["name"]
            self.namespace_labels[name] = dict(ns["metadata"].get("labels") or {})
        for name in {p.namespace for p in self.pods} | {
                p["metadata"].get("namespace", "default") for p in self.policies}:
            self.namespace_labels.setdefault(name, {})
        for name, labels in self.namespace_labels.items():
            labels["kubernetes.io/metadata.name"] = name
        self.node_addresses = node_addresses or {}

    def pod_with_ip(self, ip):
        for pod in self.pods:
            if ipaddress.ip_address(ip) in [ipaddress.ip_address(a) for a in pod.ips]:
                return pod
        return None

    def _types(self, policy):
        spec = policy.get("spec") or {}
        if spec.get("policyTypes"):
            return spec["policyTypes"]
        return ["Ingress", "Egress"] if spec.get("egress") else ["Ingress"]

    def _policies_isolating(self, pod, direction):
        return [p for p in self.policies
                if p["metadata"].get("namespace", "default") == pod.namespace
                and _labels_match((p.get("spec") or {}).get("podSelector") or {}, pod.labels)
                and direction in self._types(p)]

    def _peer_matches(self, policy, peer, ip, pod):
        if "ipBlock" in peer:
            address = ipaddress.ip_address(ip)
            cidr = ipaddress.ip_network(peer["ipBlock"]["cidr"])
            if address.version != cidr.version or address not in cidr:
                return False
            return not any(address in ipaddress.ip_network(e) for e in peer["ipBlock"].get("except") or []
                           if ipaddress.ip_network(e).version == address.version)
        if pod is None:
            return False
        if peer.get("namespaceSelector") is None:
            if pod.namespace != policy["metadata"].get("namespace", "default"):
                return False
        elif not _labels_match(peer["namespaceSelector"], self.namespace_labels[pod.namespace]):
            return False
        return peer.get("podSelector") is None or _labels_match(peer["podSelector"], pod.labels)

    def _port_matches(self, entry, port, protocol, destination):
        if entry.get("protocol", "TCP") != protocol:
            return False
        if "port" not in entry or entry["port"] is None:
            return True
        if isinstance(entry["port"], str):
            return destination is not None and destination.named_port(entry["port"], protocol) == port
        return entry["port"] <= port <= entry.get("endPort", entry["port"])

    def _direction_allows(self, pod, direction, peer_ip, peer_pod, port, protocol, destination):
        isolating = self._policies_isolating(pod, direction)
        if not isolating:
            return True
        rules_key, peers_key = ("ingress", "from") if direction == "Ingress" else ("egress", "to")
        for policy in isolating:
            for rule in (policy.get("spec") or {}).get(rules_key) or []:
                ports = rule.get("ports") or []
                peers = rule.get(peers_key) or []
                if ports and not any(self._port_matches(e, port, protocol, destination) for e in ports):
                    continue
                if peers and not any(self._peer_matches(policy, p, peer_ip, peer_pod) for p in peers):
                    continue
                return True
        return False

    def _address(self, ref):
        """A pod's first address for "namespace/name", else ``ref`` itself."""
        for pod in self.pods:
            if f"{pod.namespace}/{pod.name}" == ref:
                return pod.ips[0]
        return ref

    def allowed(self, src, dst, port, protocol="TCP"):
        """May a new connection from src to dst:port/protocol be made?
        src, dst: addresses or "namespace/name" of pods."""
        src_ip, dst_ip = self._address(src), self._address(dst)
        src, dst = self.pod_with_ip(src_ip), self.pod_with_ip(dst_ip)
        if src is not None and src is dst:
            return True
        if dst is not None and src_ip in self.node_addresses.get(dst.node, ()):
            return True
        if src is not None and dst_ip in self.node_addresses.get(src.node, ()):
            return True
        egress = src is None or self._direction_allows(src, "Egress", dst_ip, dst, port, protocol, dst)
        ingress = dst is None or self._direction_allows(dst, "Ingress", src_ip, src, port, protocol, dst)
        return egress and ingress
