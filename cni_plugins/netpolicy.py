"""netpolicy: register a pod with the node's network-policy controller
(chained after an interface plugin, e.g. bridge).

The controller runs in the node agent (`pycni agent`; netpolicy/service.py)
and listens on the abstract socket ``@pycni-policy`` of the node's network
namespace.  ADD sends the pod's endpoint and returns only once the
controller has put the pod's rules in the kernel: the runtime starts the
container's process after ADD returns, so a pod that a deny-all policy
selects never sends or receives a packet it should not.  (Before that,
bridge has plugged the veth in, but nothing in the pod runs.)  With no
controller there, ADD fails with code 11 ("try again later"): the runtime
retries, where going on would start the pod unprotected.

What the endpoint holds:

- addresses: prevResult's IPs on the container's interfaces;
- namespace and name: CNI_ARGS ``K8S_POD_NAMESPACE`` and ``K8S_POD_NAME``
  (Kubernetes runtimes), else the config's ``namespace`` (default
  "default") and the container ID (podman passes only K8S_POD_NAME);
- labels and named ports: the file ``<labelsDir>/<namespace>/<name>.json``
  (``{"labels": {...}, "ports": [{"name", "containerPort", "protocol"}]}``;
  ``labelsDir`` defaults to /etc/pycni/netpolicy/pods; JSON only: this runs
  on every container start with the standard library alone), then the
  capabilities ``labels`` (an object) and ``podPorts`` (Kubernetes
  container ports: ``[{"name", "containerPort", "protocol"}]``) from
  runtimeConfig, which win.  Ports without a name are not needed (policies
  name numbered ports by number).

Registrations are kept per attachment (network, container ID, interface):
DEL removes the attachment's, GC those of the network that
``cni.dev/valid-attachments`` does not list, CHECK asks whether the
controller has the attachment with prevResult's addresses, STATUS whether
a controller answers (code 50 if not).  The controller validates the
endpoint (labels, names, ports) and names the field it refuses (code 7).
"""
import json
import os

from .core.agent_client import recv_frame, send_frame
from .core.config import bad_config, fold_keys, typed
from .core.errors import (CHECK_FAILED, INVALID_CONFIG, KERNEL_FAILURE, NOT_READY, TRY_AGAIN_LATER,
                          CNIError)
from .core.plain import plain
from .core.request import Request

PLUGIN = "netpolicy"
DEFAULT_SOCKET = "pycni-policy"
DEFAULT_LABELS_DIR = "/etc/pycni/netpolicy/pods"
ANSWER_TIMEOUT = 120.0   # a registration waits for the controller's lock and a kernel transaction
_ERROR_CODES = {"invalid": INVALID_CONFIG, "kernel": KERNEL_FAILURE}


# --- config -------------------------------------------------------------------
@plain
class PolicyConfig:
    network: str
    socket: str = DEFAULT_SOCKET
    labels_dir: str = DEFAULT_LABELS_DIR
    namespace: str = "default"


def parse_config(req: Request) -> PolicyConfig:
    c = req.config
    return PolicyConfig(network=c["name"], socket=typed(PLUGIN, c, "socket", str, DEFAULT_SOCKET),
                        labels_dir=typed(PLUGIN, c, "labelsDir", str, DEFAULT_LABELS_DIR),
                        namespace=typed(PLUGIN, c, "namespace", str, "default"))


def attachment(req: Request) -> dict:
    return {"network": req.network, "containerID": req.container_id, "ifname": req.ifname}


# --- the endpoint: pure, from the request and the pod's file -------------------------
def pod_identity(req: Request, cfg: PolicyConfig) -> tuple[str, str]:
    return (req.args.get("K8S_POD_NAMESPACE") or cfg.namespace,
            req.args.get("K8S_POD_NAME") or req.container_id)


def pod_file_path(cfg: PolicyConfig, namespace: str, name: str) -> str:
    return os.path.join(cfg.labels_dir, namespace, name + ".json")


def read_pod_file(path: str) -> dict:
    """The pod's labels file ({} when there is none)."""
    try:
        with open(path, "rb") as f:
            content = json.loads(f.read())
    except FileNotFoundError:
        return {}
    except (ValueError, UnicodeDecodeError, IsADirectoryError) as e:
        raise bad_config(PLUGIN, f"{path}: not JSON: {e}") from None
    if not isinstance(content, dict):
        raise bad_config(PLUGIN, f"{path}: must be a JSON object with labels and ports")
    return content


def _ports(items, where: str) -> list[dict]:
    """Kubernetes container ports -> the named ones as the controller takes them."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise bad_config(PLUGIN, f"{where} must be a list of container ports")
    ports = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise bad_config(PLUGIN, f"{where}[{i}] must be an object")
        item = fold_keys(item, ("name", "containerPort", "protocol"))
        if item.get("name"):
            ports.append({"name": item["name"], "port": item.get("containerPort"),
                          "protocol": item.get("protocol") or "TCP"})
    return ports


def _labels(value, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_config(PLUGIN, f"{where} must be an object of labels")
    return value


def container_addresses(prev: dict) -> list[str]:
    """prevResult's addresses on the container's interfaces (an IP naming
    no interface counts too)."""
    interfaces = prev.get("interfaces") or []
    found = []
    for ip in prev.get("ips") or []:
        index = ip.get("interface")
        in_container = index is None or (isinstance(index, int) and 0 <= index < len(interfaces)
                                         and interfaces[index].get("sandbox"))
        if in_container and isinstance(ip.get("address"), str):
            found.append(ip["address"].split("/")[0])
    return list(dict.fromkeys(found))


def make_endpoint(req: Request, cfg: PolicyConfig, prev: dict, pod_file: dict) -> dict:
    """What the controller is asked to register (it validates every field)."""
    namespace, name = pod_identity(req, cfg)
    runtime = fold_keys(req.runtime_config, ("labels", "podPorts"))
    labels = {**_labels(pod_file.get("labels"), "labels file: labels"),
              **_labels(runtime.get("labels"), "runtimeConfig.labels")}
    ports = _ports(pod_file.get("ports"), "labels file: ports") + _ports(runtime.get("podPorts"),
                                                                         "runtimeConfig.podPorts")
    return {"namespace": namespace, "name": name, "labels": labels,
            "addresses": container_addresses(prev), "ports": ports}


# --- the controller ---------------------------------------------------------------
def call(cfg: PolicyConfig, request: dict, unavailable_code: int = TRY_AGAIN_LATER) -> dict:
    """One request to the controller, its answer; a missing or failing
    controller is a CNI error (``unavailable_code``)."""
    import _socket

    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        try:
            sock.connect(b"\0" + cfg.socket.encode())
        except OSError as e:
            raise CNIError(unavailable_code, f"{PLUGIN}: no network-policy controller answers on @{cfg.socket} "
                           "(`pycni agent` with network policy): refusing to leave the pod unprotected",
                           str(e)) from None
        try:
            sock.settimeout(ANSWER_TIMEOUT)
            send_frame(sock, json.dumps(request).encode())
            answer = json.loads(recv_frame(sock))
        except (OSError, ValueError) as e:
            raise CNIError(unavailable_code, f"{PLUGIN}: the network-policy controller did not answer",
                           f"{type(e).__name__}: {e}") from None
    finally:
        sock.close()
    if "error" in answer:
        raise CNIError(_ERROR_CODES.get(answer.get("kind"), unavailable_code), f"{PLUGIN}: {answer['error']}")
    return answer


# --- CNI commands ---------------------------------------------------------------
def add(req: Request) -> dict:
    cfg = parse_config(req)
    prev = req.require_prev_result(PLUGIN)
    namespace, name = pod_identity(req, cfg)
    endpoint = make_endpoint(req, cfg, prev, read_pod_file(pod_file_path(cfg, namespace, name)))
    call(cfg, {"op": "register", "attachment": attachment(req), "endpoint": endpoint})
    return json.loads(json.dumps(prev))


def delete(req: Request) -> None:
    call(parse_config(req), {"op": "unregister", "attachment": attachment(req)})


def check(req: Request) -> None:
    cfg = parse_config(req)
    prev = req.require_prev_result(PLUGIN)
    found = call(cfg, {"op": "registered", "attachment": attachment(req)}).get("endpoint")
    if found is None:
        raise CNIError(CHECK_FAILED, f"{PLUGIN}: the policy controller has no registration of this attachment")
    if sorted(found.get("addresses") or []) != sorted(container_addresses(prev)):
        raise CNIError(CHECK_FAILED, f"{PLUGIN}: registered addresses {found.get('addresses')} differ from "
                       f"prevResult's {container_addresses(prev)}")


def gc(req: Request) -> None:
    valid = [a for a in req.config.get("cni.dev/valid-attachments") or [] if isinstance(a, dict)]
    call(parse_config(req), {"op": "retain", "network": req.network, "attachments": valid})


def status(req: Request) -> None:
    call(parse_config(req), {"op": "ping"}, unavailable_code=NOT_READY)
