"""A CRI v1 client that plays kubelet against a runtime's unix socket.

`compile_cri(out_dir)` turns our minimal `cri_v1.proto` into Python modules
with grpcio-tools (at test time: nothing generated is kept in the tree) and
`CRIClient(socket, modules)` calls `runtime.v1.RuntimeService` with them,
in the shapes kubelet uses: sandboxes with metadata, port mappings,
annotations and DNS config; containers in a sandbox.
"""
from __future__ import annotations

import importlib
import json
import os
import sys
from dataclasses import dataclass

import grpc

PROTO = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cri_v1.proto")
TIMEOUT = 60  # seconds for one call: a sandbox start execs the whole CNI chain


def compile_cri(out_dir: str):
    """Compile cri_v1.proto into out_dir; return (messages, services) modules."""
    from grpc_tools import protoc

    proto_dir, name = os.path.split(PROTO)
    rc = protoc.main(["protoc", f"-I{proto_dir}", f"--python_out={out_dir}",
                      f"--grpc_python_out={out_dir}", os.path.join(proto_dir, name)])
    if rc != 0:
        raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} (exit {rc})")
    sys.path.insert(0, out_dir)
    try:
        stem = name.removesuffix(".proto")
        return importlib.import_module(f"{stem}_pb2"), importlib.import_module(f"{stem}_pb2_grpc")
    finally:
        sys.path.remove(out_dir)


@dataclass
class Port:
    host_port: int
    container_port: int
    protocol: str = "TCP"
    host_ip: str = ""


class CRIClient:
    def __init__(self, socket_path: str, modules):
        self.pb, grpc_mod = modules
        self.channel = grpc.insecure_channel(f"unix://{socket_path}")
        self.rt = grpc_mod.RuntimeServiceStub(self.channel)

    def close(self):
        self.channel.close()

    # --- runtime -----------------------------------------------------------
    def version(self):
        return self.rt.Version(self.pb.VersionRequest(version="v1"), timeout=TIMEOUT)

    def conditions(self) -> dict[str, tuple[bool, str, str]]:
        """{type: (status, reason, message)} from Status."""
        status = self.rt.Status(self.pb.StatusRequest(), timeout=TIMEOUT).status
        return {c.type: (c.status, c.reason, c.message) for c in status.conditions}

    def update_pod_cidr(self, cidr: str) -> None:
        self.rt.UpdateRuntimeConfig(self.pb.UpdateRuntimeConfigRequest(
            runtime_config=self.pb.RuntimeConfig(network_config=self.pb.NetworkConfig(pod_cidr=cidr))),
            timeout=TIMEOUT)

    # --- sandboxes -----------------------------------------------------------
    def sandbox_config(self, name, namespace, uid, ports=(), annotations=None, dns=None):
        pb = self.pb
        return pb.PodSandboxConfig(
            metadata=pb.PodSandboxMetadata(name=name, uid=uid, namespace=namespace, attempt=0),
            hostname=name,
            port_mappings=[pb.PortMapping(protocol=pb.Protocol.Value(p.protocol), container_port=p.container_port,
                                          host_port=p.host_port, host_ip=p.host_ip) for p in ports],
            annotations=annotations or {},
            dns_config=pb.DNSConfig(**dns) if dns else None,
        )

    def run_pod(self, config) -> str:
        return self.rt.RunPodSandbox(self.pb.RunPodSandboxRequest(config=config), timeout=TIMEOUT).pod_sandbox_id

    def stop_pod(self, pod_id: str) -> None:
        self.rt.StopPodSandbox(self.pb.StopPodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)

    def remove_pod(self, pod_id: str) -> None:
        self.rt.RemovePodSandbox(self.pb.RemovePodSandboxRequest(pod_sandbox_id=pod_id), timeout=TIMEOUT)

    def pod_status(self, pod_id: str):
        return self.rt.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id),
                                        timeout=TIMEOUT).status

    def pod_info(self, pod_id: str) -> dict:
        """containerd's verbose sandbox info (pid, runtimeSpec, cniResult, ...)."""
        resp = self.rt.PodSandboxStatus(self.pb.PodSandboxStatusRequest(pod_sandbox_id=pod_id, verbose=True),
                                        timeout=TIMEOUT)
        return json.loads(resp.info["info"])

    def pod_ids(self) -> list[str]:
        return [p.id for p in self.rt.ListPodSandbox(self.pb.ListPodSandboxRequest(), timeout=TIMEOUT).items]

    # --- containers ----------------------------------------------------------
    def run_container(self, pod_id: str, pod_config, name: str, image: str, command: list[str]) -> str:
        pb = self.pb
        config = pb.ContainerConfig(metadata=pb.ContainerMetadata(name=name), image=pb.ImageSpec(image=image),
                                    command=command)
        cid = self.rt.CreateContainer(pb.CreateContainerRequest(pod_sandbox_id=pod_id, config=config,
                                                                sandbox_config=pod_config),
                                      timeout=TIMEOUT).container_id
        self.rt.StartContainer(pb.StartContainerRequest(container_id=cid), timeout=TIMEOUT)
        return cid
