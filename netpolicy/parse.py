"""NetworkPolicy, Namespace and Pod objects (YAML or JSON) -> model types,
validated as the Kubernetes API server validates them.

Every problem is reported with its field path, the way the API server
words it (``spec.ingress[0].from[1].ipBlock.except[0]: must be a strict
subset of cidr 10.0.0.0/16``), and all problems of an object are reported
together.  NetworkPolicy objects are decoded strictly (an unknown field is
an error, as ``kubectl apply`` does by default: a misspelt ``podselector``
must not silently select every pod); Pods and Namespaces carry much we do
not use, so only the fields we read are checked.

Rules followed (Kubernetes pkg/apis/networking/validation and
apimachinery's label and CIDR validation):
- label keys are qualified names (optional DNS-1123 subdomain prefix and
  '/', then 1-63 of [A-Za-z0-9-_.] starting and ending alphanumeric);
  values 0-63 of the same characters;
- matchExpressions: In/NotIn need values, Exists/DoesNotExist take none;
- a peer names podSelector and/or namespaceSelector, or ipBlock alone;
- ipBlock cidr and except are CIDRs in strict form (no leading zeros, no
  bits set past the prefix, no IPv4-mapped IPv6), each except a strict
  subset of cidr (so of the same family);
- ports: protocol TCP, UDP or SCTP (default TCP); port 1-65535 or an
  IANA service name (1-15 of [a-z0-9-], a letter, no '--', no '-' at the
  ends); endPort only after a numeric port, within 1-65535 and >= port;
- policyTypes: at most two, each Ingress or Egress; omitted, it is
  Ingress, plus Egress when the egress list is non-empty.
"""
from __future__ import annotations

import re

import netaddr

from .model import (EGRESS, INGRESS, PROTOCOLS, Endpoint, IPBlock, LabelSelector, NamedPort,
                    Namespace, Peer, Policy, PolicyPort, Requirement, Rule)

_NAME_PART = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_PORT_NAME = re.compile(r"^[-a-z0-9]+$")
_PREFIX_LEN = re.compile(r"^(0|[1-9][0-9]{0,2})$")


class PolicyError(ValueError):
    """An object that cannot be used; ``problems`` are "field.path: message"."""

    def __init__(self, origin: str, problems: list[str]):
        self.origin = origin
        self.problems = problems
        where = f"{origin}: " if origin else ""
        super().__init__(where + "; ".join(problems))


class _Problems:
    def __init__(self):
        self.found: list[str] = []

    def add(self, path: str, message: str) -> None:
        self.found.append(f"{path}: {message}")


# --- typed access -------------------------------------------------------------
def _mapping(p: _Problems, value, path: str, known: tuple[str, ...] | None = None) -> dict:
    """``value`` as a dict ({} for null); with ``known``, other keys are errors."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        p.add(path, "must be an object")
        return {}
    for key in value:
        if known is not None and key not in known:
            p.add(f"{path}.{key}" if path else str(key), "unknown field")
    return value


def _list(p: _Problems, value, path: str) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        p.add(path, "must be a list")
        return []
    return value


def _string(p: _Problems, value, path: str) -> str | None:
    if not isinstance(value, str):
        p.add(path, "must be a string")
        return None
    return value


def _integer(p: _Problems, value, path: str) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        p.add(path, "must be an integer")
        return None
    return value


# --- names and labels ---------------------------------------------------------
def _check_dns_subdomain(p: _Problems, value: str, path: str) -> None:
    if len(value) > 253 or not _DNS_SUBDOMAIN.match(value):
        p.add(path, f"{value!r} must be a lowercase RFC 1123 subdomain of at most 253 characters")


def _check_dns_label(p: _Problems, value: str, path: str) -> None:
    if len(value) > 63 or not _DNS_LABEL.match(value):
        p.add(path, f"{value!r} must be a lowercase RFC 1123 label of at most 63 characters")


def _check_label_key(p: _Problems, key, path: str) -> None:
    if not isinstance(key, str):
        p.add(path, f"label key {key!r} must be a string")
        return
    prefix, _, name = key.rpartition("/")
    if "/" in key and (not prefix or len(prefix) > 253 or not _DNS_SUBDOMAIN.match(prefix)):
        p.add(path, f"{key!r}: prefix must be a lowercase RFC 1123 subdomain")
    if len(name) > 63 or not _NAME_PART.match(name):
        p.add(path, f"{key!r}: name part must be 1-63 characters of [A-Za-z0-9-_.], "
                    "starting and ending with an alphanumeric character")


def _check_label_value(p: _Problems, value, path: str) -> None:
    if not isinstance(value, str):
        p.add(path, f"label value {value!r} must be a string")
    elif value and (len(value) > 63 or not _NAME_PART.match(value)):
        p.add(path, f"{value!r} must be at most 63 characters of [A-Za-z0-9-_.], "
                    "starting and ending with an alphanumeric character")


def _labels(p: _Problems, value, path: str) -> dict[str, str]:
    labels = _mapping(p, value, path)
    for key, val in labels.items():
        _check_label_key(p, key, path)
        _check_label_value(p, val, path)
    return {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}


def _selector(p: _Problems, value, path: str) -> LabelSelector:
    obj = _mapping(p, value, path, ("matchLabels", "matchExpressions"))
    match_labels = _labels(p, obj.get("matchLabels"), f"{path}.matchLabels")
    requirements = []
    for i, item in enumerate(_list(p, obj.get("matchExpressions"), f"{path}.matchExpressions")):
        at = f"{path}.matchExpressions[{i}]"
        expr = _mapping(p, item, at, ("key", "operator", "values"))
        key = _string(p, expr.get("key"), f"{at}.key")
        if key is not None:
            _check_label_key(p, key, f"{at}.key")
        operator = expr.get("operator")
        values = _list(p, expr.get("values"), f"{at}.values")
        if operator in ("In", "NotIn"):
            if not values:
                p.add(f"{at}.values", "must be specified when `operator` is 'In' or 'NotIn'")
        elif operator in ("Exists", "DoesNotExist"):
            if values:
                p.add(f"{at}.values", "may not be specified when `operator` is 'Exists' or 'DoesNotExist'")
        else:
            p.add(f"{at}.operator", f"{operator!r} is not a valid selector operator "
                                    "(In, NotIn, Exists, DoesNotExist)")
        for j, v in enumerate(values):
            _check_label_value(p, v, f"{at}.values[{j}]")
        if key is not None:
            requirements.append(Requirement(key, str(operator), tuple(sorted(set(map(str, values))))))
    return LabelSelector(tuple(sorted(match_labels.items())), tuple(requirements))


# --- addresses ----------------------------------------------------------------
def _cidr(p: _Problems, value, path: str) -> netaddr.IPNetwork | None:
    text = _string(p, value, path)
    if text is None:
        return None
    _, slash, length = text.partition("/")
    try:
        if not slash or not _PREFIX_LEN.match(length):
            raise netaddr.AddrFormatError(text)
        network = netaddr.IPNetwork(text)
    except (netaddr.AddrFormatError, ValueError):
        p.add(path, f"{text!r} must be a valid CIDR value (e.g. 10.9.8.0/24 or 2001:db8::/64), "
                    "without leading zeros")
        return None
    if network.version == 6 and network.ip.is_ipv4_mapped():
        p.add(path, f"{text!r} must not be an IPv4-mapped IPv6 address")
        return None
    if network.ip != network.network:
        p.add(path, f"{text!r} must not have bits set beyond the prefix length "
                    f"(did you mean {network.cidr}?)")
        return None
    return network


def _ip_block(p: _Problems, value, path: str) -> IPBlock | None:
    obj = _mapping(p, value, path, ("cidr", "except"))
    if not obj.get("cidr"):
        p.add(f"{path}.cidr", "Required value")
        return None
    cidr = _cidr(p, obj["cidr"], f"{path}.cidr")
    excepts = []
    for i, item in enumerate(_list(p, obj.get("except"), f"{path}.except")):
        at = f"{path}.except[{i}]"
        network = _cidr(p, item, at)
        if network is None or cidr is None:
            continue
        if (network.version != cidr.version or network not in cidr
                or network.prefixlen <= cidr.prefixlen):
            p.add(at, f"{item} must be a strict subset of cidr {cidr}")
        excepts.append(str(network))
    return IPBlock(str(cidr), tuple(excepts)) if cidr is not None else None


def _peer(p: _Problems, value, path: str) -> Peer:
    obj = _mapping(p, value, path, ("podSelector", "namespaceSelector", "ipBlock"))
    present = [k for k in ("podSelector", "namespaceSelector", "ipBlock") if obj.get(k) is not None]
    if not present:
        p.add(path, "must specify a peer (podSelector, namespaceSelector or ipBlock)")
    elif "ipBlock" in present and len(present) > 1:
        p.add(path, "may not specify both ipBlock and another peer")
    return Peer(
        pod_selector=_selector(p, obj["podSelector"], f"{path}.podSelector")
        if obj.get("podSelector") is not None else None,
        namespace_selector=_selector(p, obj["namespaceSelector"], f"{path}.namespaceSelector")
        if obj.get("namespaceSelector") is not None else None,
        ip_block=_ip_block(p, obj["ipBlock"], f"{path}.ipBlock")
        if obj.get("ipBlock") is not None else None,
    )


# --- ports --------------------------------------------------------------------
def _port_name_problems(name: str) -> list[str]:
    problems = []
    if len(name) > 15:
        problems.append("must be no more than 15 characters")
    if not _PORT_NAME.match(name):
        problems.append("must contain only alpha-numeric characters (a-z, 0-9), and hyphens (-)")
    if not re.search("[a-z]", name):
        problems.append("must contain at least one letter (a-z)")
    if "--" in name:
        problems.append("must not contain consecutive hyphens")
    if name.startswith("-") or name.endswith("-"):
        problems.append("must not begin or end with a hyphen")
    return problems


def _protocol(p: _Problems, value, path: str) -> str:
    if value is None:
        return "TCP"
    if value not in PROTOCOLS:
        p.add(path, f"Unsupported value: {value!r}: supported values: \"TCP\", \"UDP\", \"SCTP\"")
        return "TCP"
    return value


def _check_port_number(p: _Problems, value: int, path: str) -> None:
    if not 1 <= value <= 65535:
        p.add(path, f"{value}: must be between 1 and 65535, inclusive")


def _policy_port(p: _Problems, value, path: str) -> PolicyPort:
    obj = _mapping(p, value, path, ("protocol", "port", "endPort"))
    protocol = _protocol(p, obj.get("protocol"), f"{path}.protocol")
    port, end_port = obj.get("port"), obj.get("endPort")
    if end_port is not None:
        end_port = _integer(p, end_port, f"{path}.endPort")
    if port is None:
        if end_port is not None:
            p.add(f"{path}.endPort", "may not be specified when `port` is not specified")
    elif isinstance(port, str):
        for problem in _port_name_problems(port):
            p.add(f"{path}.port", f"{port!r}: {problem}")
        if end_port is not None:
            p.add(f"{path}.endPort", "may not be specified when `port` is non-numeric")
    elif _integer(p, port, f"{path}.port") is not None:
        _check_port_number(p, port, f"{path}.port")
        if end_port is not None:
            _check_port_number(p, end_port, f"{path}.endPort")
            if end_port < port:
                p.add(f"{path}.endPort", f"{end_port}: must be greater than or equal to `port`")
    return PolicyPort(protocol, port, end_port)


# --- objects ------------------------------------------------------------------
def _rules(p: _Problems, value, path: str, peers_field: str) -> tuple[Rule, ...]:
    rules = []
    for i, item in enumerate(_list(p, value, path)):
        at = f"{path}[{i}]"
        obj = _mapping(p, item, at, ("ports", peers_field))
        ports = tuple(_policy_port(p, x, f"{at}.ports[{j}]")
                      for j, x in enumerate(_list(p, obj.get("ports"), f"{at}.ports")))
        peers = tuple(_peer(p, x, f"{at}.{peers_field}[{j}]")
                      for j, x in enumerate(_list(p, obj.get(peers_field), f"{at}.{peers_field}")))
        rules.append(Rule(ports, peers))
    return tuple(rules)


def _policy_types(p: _Problems, value, spec: dict) -> frozenset[str]:
    types = _list(p, value, "spec.policyTypes")
    if len(types) > 2:
        p.add("spec.policyTypes", "may not specify more than two policyTypes")
        return frozenset()
    for i, t in enumerate(types):
        if t not in (INGRESS, EGRESS):
            p.add(f"spec.policyTypes[{i}]", f"Unsupported value: {t!r}: supported values: "
                                            "\"Ingress\", \"Egress\"")
    if types:
        return frozenset(types)
    # The API server's default: every policy is about ingress; it is about
    # egress too when it has egress rules.
    return frozenset({INGRESS, EGRESS} if spec.get("egress") else {INGRESS})


def _metadata(p: _Problems, value, *, namespaced: bool) -> tuple[str, str, dict]:
    meta = _mapping(p, value, "metadata")
    name = meta.get("name")
    if not name:
        p.add("metadata.name", "Required value: name is required")
        name = ""
    elif _string(p, name, "metadata.name") is not None:
        _check_dns_subdomain(p, name, "metadata.name")
    namespace = meta.get("namespace") or "default"
    if namespaced and _string(p, namespace, "metadata.namespace") is not None:
        _check_dns_label(p, namespace, "metadata.namespace")
    return str(name), str(namespace), _labels(p, meta.get("labels"), "metadata.labels")


def _raise(p: _Problems, origin: str) -> None:
    if p.found:
        raise PolicyError(origin, p.found)


def parse_policy(obj, origin: str = "") -> Policy:
    p = _Problems()
    top = _mapping(p, obj, "", ("apiVersion", "kind", "metadata", "spec"))
    name, namespace, _ = _metadata(p, top.get("metadata"), namespaced=True)
    origin = f"{origin}: NetworkPolicy {namespace}/{name}" if origin else f"NetworkPolicy {namespace}/{name}"
    spec = _mapping(p, top.get("spec"), "spec", ("podSelector", "ingress", "egress", "policyTypes"))
    policy = Policy(
        namespace=namespace, name=name,
        pod_selector=_selector(p, spec.get("podSelector"), "spec.podSelector"),
        ingress=_rules(p, spec.get("ingress"), "spec.ingress", "from"),
        egress=_rules(p, spec.get("egress"), "spec.egress", "to"),
        policy_types=_policy_types(p, spec.get("policyTypes"), spec),
        origin=origin,
    )
    _raise(p, origin)
    return policy


def parse_namespace(obj, origin: str = "") -> Namespace:
    p = _Problems()
    name, _, labels = _metadata(p, _mapping(p, obj, "").get("metadata"), namespaced=False)
    if name:
        _check_dns_label(p, name, "metadata.name")
    origin = f"{origin}: Namespace {name}" if origin else f"Namespace {name}"
    _raise(p, origin)
    return Namespace(name, labels, origin)


def _address(p: _Problems, text, path: str) -> str | None:
    try:
        return str(netaddr.IPAddress(text))
    except (netaddr.AddrFormatError, ValueError, TypeError):
        p.add(path, f"{text!r} is not an IP address")
        return None


def _pod_addresses(p: _Problems, status: dict) -> tuple[str, ...]:
    found = [status["podIP"]] if status.get("podIP") else []
    for i, item in enumerate(_list(p, status.get("podIPs"), "status.podIPs")):
        found.append(_mapping(p, item, f"status.podIPs[{i}]").get("ip"))
    addresses = [_address(p, text, "status.podIPs") for text in found]
    return tuple(dict.fromkeys(a for a in addresses if a))


def _container_ports(p: _Problems, spec: dict) -> tuple[NamedPort, ...]:
    ports = []
    for i, container in enumerate(_list(p, spec.get("containers"), "spec.containers")):
        at = f"spec.containers[{i}].ports"
        for j, item in enumerate(_list(p, _mapping(p, container, f"spec.containers[{i}]").get("ports"), at)):
            port = _mapping(p, item, f"{at}[{j}]")
            number = _integer(p, port.get("containerPort"), f"{at}[{j}].containerPort")
            if number is not None:
                _check_port_number(p, number, f"{at}[{j}].containerPort")
            protocol = _protocol(p, port.get("protocol"), f"{at}[{j}].protocol")
            name = port.get("name")
            if name is None or number is None:
                continue  # only named ports matter to policies
            for problem in _port_name_problems(str(name)):
                p.add(f"{at}[{j}].name", f"{name!r}: {problem}")
            ports.append(NamedPort(str(name), number, protocol))
    return tuple(ports)


def parse_pod(obj, origin: str = "") -> Endpoint:
    """A v1 Pod as an endpoint: metadata, spec.nodeName, named container
    ports, status.podIP(s)."""
    p = _Problems()
    top = _mapping(p, obj, "")
    name, namespace, labels = _metadata(p, top.get("metadata"), namespaced=True)
    origin = f"{origin}: Pod {namespace}/{name}" if origin else f"Pod {namespace}/{name}"
    spec = _mapping(p, top.get("spec"), "spec")
    endpoint = Endpoint(namespace, name, labels, _pod_addresses(p, _mapping(p, top.get("status"), "status")),
                        _container_ports(p, spec), str(spec.get("nodeName") or ""), origin)
    _raise(p, origin)
    return endpoint


def parse_endpoint(obj, origin: str = "") -> Endpoint:
    """An endpoint in the compact form the netpolicy CNI plugin registers
    (and the registry stores): {"namespace", "name", "labels", "addresses",
    "ports": [{"name", "port", "protocol"}], "node"}."""
    p = _Problems()
    top = _mapping(p, obj, "", ("namespace", "name", "labels", "addresses", "ports", "node"))
    name = _string(p, top.get("name"), "name") or ""
    if name:
        _check_dns_subdomain(p, name, "name")
    namespace = _string(p, top.get("namespace", "default"), "namespace") or ""
    _check_dns_label(p, namespace, "namespace")
    addresses = [_address(p, text, f"addresses[{i}]")
                 for i, text in enumerate(_list(p, top.get("addresses"), "addresses"))]
    ports = []
    for i, item in enumerate(_list(p, top.get("ports"), "ports")):
        port = _mapping(p, item, f"ports[{i}]", ("name", "port", "protocol"))
        port_name = _string(p, port.get("name"), f"ports[{i}].name")
        for problem in _port_name_problems(port_name or "x"):
            p.add(f"ports[{i}].name", f"{port_name!r}: {problem}")
        number = _integer(p, port.get("port"), f"ports[{i}].port")
        if number is not None:
            _check_port_number(p, number, f"ports[{i}].port")
            ports.append(NamedPort(port_name or "", number, _protocol(p, port.get("protocol"), f"ports[{i}].protocol")))
    node = _string(p, top.get("node", ""), "node") or ""
    origin = f"{origin}: endpoint {namespace}/{name}" if origin else f"endpoint {namespace}/{name}"
    endpoint = Endpoint(namespace, name, _labels(p, top.get("labels"), "labels"), tuple(a for a in addresses if a),
                        tuple(ports), node, origin)
    _raise(p, origin)
    return endpoint


def endpoint_record(endpoint: Endpoint) -> dict:
    """The compact form of an endpoint (parse_endpoint's input)."""
    return {"namespace": endpoint.namespace, "name": endpoint.name, "labels": dict(endpoint.labels),
            "addresses": list(endpoint.addresses), "node": endpoint.node,
            "ports": [{"name": p.name, "port": p.port, "protocol": p.protocol} for p in endpoint.ports]}


# --- documents ----------------------------------------------------------------
_KINDS = {
    ("networking.k8s.io/v1", "NetworkPolicy"): parse_policy,
    ("v1", "Namespace"): parse_namespace,
    ("v1", "Pod"): parse_pod,
}
_LISTS = {("v1", "List"), ("networking.k8s.io/v1", "NetworkPolicyList"), ("v1", "PodList"),
          ("v1", "NamespaceList")}


def parse_objects(objects, origin: str = "") -> list:
    """Model objects from decoded documents (lists expanded); the first
    invalid object raises PolicyError."""
    parsed = []
    for i, obj in enumerate(objects):
        if obj is None:
            continue  # an empty YAML document
        where = f"{origin}[{i}]" if origin else f"[{i}]"
        kind = (obj.get("apiVersion"), obj.get("kind")) if isinstance(obj, dict) else None
        if kind in _LISTS:
            parsed += parse_objects(obj.get("items") or [], f"{where}.items")
        elif kind in _KINDS:
            parsed.append(_KINDS[kind](obj, where))
        else:
            raise PolicyError(where, [f"unsupported object {kind!r}: expected NetworkPolicy "
                                      "(networking.k8s.io/v1), Namespace or Pod (v1), or a List of them"])
    return parsed


def load_documents(text: str, origin: str = "") -> list:
    """YAML (one or more documents) or JSON -> the decoded documents."""
    if text.lstrip()[:1] in ("{", "["):  # JSON (`kubectl get -o json`): its own parser is six times faster
        import json

        try:
            found = json.loads(text)
            return [found]
        except ValueError:
            pass  # YAML after all (flow style), or broken: YAML says which
    import yaml

    try:  # libyaml's loader when there is one: ten times faster on thousands of objects
        return [d for d in yaml.load_all(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)) if d is not None]
    except yaml.YAMLError as e:
        raise PolicyError(origin, [f"not YAML or JSON: {e}"]) from None


def load_text(text: str, origin: str = "") -> list:
    """YAML (one or more documents) or JSON -> model objects."""
    return parse_objects(load_documents(text, origin), origin)

