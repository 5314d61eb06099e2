"""A private containerd 1.6 (Debian `containerd`) whose CRI plugin runs CNI
plugins from a directory we choose, inside a network namespace we made.

`Containerd(base, node_netns, cni_bin_dir, cni_conf_dir, ...)` writes
`base/config.toml`: its own `root`, `state`, grpc/ttrpc sockets and `opt`
dir under `base`, and a CRI section with

- `cni.bin_dir`/`cni.conf_dir`/`cni.conf_template`: the test's; containerd
  loads the first conflist of conf_dir, and when it has none and kubelet
  sends a pod CIDR (UpdateRuntimeConfig) it renders conf_template there;
- `sandbox_image`: the busybox image below, whose command is `sleep`;
- `restrict_oom_score_adj = true` (runc is refused the sandbox's
  oom_score_adj on these machines otherwise);
- `netns_mounts_under_state_dir = true` (sandbox netns mounts stay under
  `base`, not in /var/run/netns).

containerd runs with `nsenter --net=NODE`: the node's network (bridge, host
veths, nftables, host ports) is a namespace the test owns, so nothing of the
machine's own network is touched and deleting that namespace removes every
link and table.  Its environment is ours plus `env` (PYCNI_STATE_DIR, ...):
containerd hands its environment on to the plugins it execs.

`stop()` kills containerd, then whatever shim of ours is left (a shim
outlives containerd), unmounts what is still mounted under `base` and
returns what it had to clean up by force.

Learnt on Debian 12 (containerd 1.6.20): shims keep a unix socket in
/run/containerd/s/ whatever the config says (named by a hash of our address,
the namespace and the sandbox id) and remove it on exit, so `stop()` removes
that dir if it made it; runc's state goes to the runc runtime's `Root`
option (else /run/containerd/runc); `ctr images import` of an OCI archive
names the image from the index's `io.containerd.image.name` annotation;
StopPodSandbox kills the sandbox's process with SIGKILL, so a `sleep` pause
process is enough.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import signal
import subprocess
import tarfile
from pathlib import Path

from conftest import stop_process
from k8s_node import wait_for
from podman_env import make_busybox_tarball, mounts_under

NAMESPACE = "k8s.io"  # the containerd namespace the CRI plugin uses
SANDBOX_IMAGE = "localhost/pycni-pause:e2e"
SLEEP = ["/bin/sleep", "2147483647"]
SHIM = "containerd-shim-runc-v2"
SHIM_SOCKET_DIR = "/run/containerd/s"  # fixed in containerd 1.6, whatever the config says


def _run(*cmd, check=True, timeout=60, **kw):
    return subprocess.run(cmd, check=check, capture_output=True, text=True, timeout=timeout, **kw)


# --- the image ------------------------------------------------------------------
def make_oci_archive(path: str | os.PathLike, ref: str, rootfs_tar: str, cmd: list[str]) -> str:
    """An OCI image layout tarball of one uncompressed layer (rootfs_tar)
    whose default command is cmd, named `ref` for `ctr images import`."""
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())
    layer = Path(rootfs_tar).read_bytes()
    blobs = {}

    def blob(data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        blobs[digest] = data
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    layer_desc = blob(layer, "application/vnd.oci.image.layer.v1.tar")
    config = {"architecture": arch, "os": "linux", "config": {"Cmd": cmd},
              "rootfs": {"type": "layers", "diff_ids": [layer_desc["digest"]]}}
    manifest = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "config": blob(json.dumps(config).encode(), "application/vnd.oci.image.config.v1+json"),
                "layers": [layer_desc]}
    manifest_desc = blob(json.dumps(manifest).encode(), "application/vnd.oci.image.manifest.v1+json")
    manifest_desc["annotations"] = {"io.containerd.image.name": ref,
                                    "org.opencontainers.image.ref.name": ref.rsplit(":", 1)[-1]}
    files = {"oci-layout": json.dumps({"imageLayoutVersion": "1.0.0"}).encode(),
             "index.json": json.dumps({"schemaVersion": 2, "manifests": [manifest_desc]}).encode()}
    files.update({f"blobs/sha256/{d.split(':', 1)[1]}": data for d, data in blobs.items()})
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return str(path)


def make_sandbox_image(directory: Path) -> str:
    rootfs = make_busybox_tarball(directory / "busybox-rootfs.tar")
    return make_oci_archive(directory / "pause-oci.tar", SANDBOX_IMAGE, rootfs, SLEEP)


# --- containerd -----------------------------------------------------------------
class Containerd:
    def __init__(self, base: Path, node_netns: str, cni_bin_dir: str, cni_conf_dir: str,
                 cni_conf_template: str, env: dict[str, str]):
        self.base = base
        self.node_netns = node_netns
        self.address = str(base / "containerd.sock")
        self.state = base / "state"
        self.config = base / "config.toml"
        self.log_path = base / "containerd.log"
        self.env = {**os.environ, **env}
        self.proc: subprocess.Popen | None = None
        self.made_shim_dir = not os.path.exists(SHIM_SOCKET_DIR)
        base.mkdir(parents=True, exist_ok=True)
        self.config.write_text(f"""\
version = 2
root = "{base / 'root'}"
state = "{self.state}"
disabled_plugins = ["io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.zfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.aufs"]

[grpc]
  address = "{self.address}"
[ttrpc]
  address = "{self.address}.ttrpc"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = "{base / 'opt'}"
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{SANDBOX_IMAGE}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "{cni_bin_dir}"
      conf_dir = "{cni_conf_dir}"
      conf_template = "{cni_conf_template}"
      max_conf_num = 1
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
      Root = "{base / 'runc'}"
""")

    def start(self, timeout=30) -> None:
        self.log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            ["nsenter", f"--net=/run/netns/{self.node_netns}", "containerd", "--config", str(self.config)],
            stdout=self.log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        wait_for(lambda: self.proc.poll() is not None or os.path.exists(self.address), timeout,
                 f"containerd's socket {self.address}")
        if self.proc.poll() is not None:
            raise RuntimeError(f"containerd exited with {self.proc.returncode}:\n{self.log_tail()}")

    def log_tail(self, lines=40) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def ctr(self, *args, timeout=60) -> str:
        proc = _run("ctr", "--address", self.address, "-n", NAMESPACE, *args, check=False, timeout=timeout)
        if proc.returncode:
            raise RuntimeError(f"ctr {' '.join(args)}: exit {proc.returncode}: {proc.stderr}")
        return proc.stdout

    def import_image(self, archive: str) -> None:
        self.ctr("images", "import", archive)

    def shims(self) -> list[int]:
        """pids of runc shims serving this containerd (by its address)."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argv and os.path.basename(argv[0].decode(errors="replace")) == SHIM \
                    and self.address.encode() in argv:
                pids.append(int(pid))
        return pids

    def stop(self) -> list[str]:
        """Stop containerd; kill and unmount what it left; return what was left."""
        problems = []
        if self.proc and self.proc.poll() is None:
            if not stop_process(self.proc, 15):
                problems.append("containerd ignored SIGTERM for 15 s")
        if self.proc:
            self.log.close()
        for pid in self.shims():
            problems.append(f"shim pid {pid} still running after containerd stopped")
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for target in mounts_under(self.base):
            problems.append(f"still mounted: {target}")
            _run("umount", "-l", target, check=False)
        if self.made_shim_dir:
            left = os.listdir(SHIM_SOCKET_DIR) if os.path.isdir(SHIM_SOCKET_DIR) else []
            if left:
                problems.append(f"shim sockets left in {SHIM_SOCKET_DIR}: {left}")
            else:
                _remove_empty_dirs(SHIM_SOCKET_DIR)
        return problems


def _remove_empty_dirs(path: str) -> None:
    """rmdir path and its parents while they are empty (os.removedirs, quietly)."""
    try:
        os.removedirs(path)
    except OSError:
        pass
