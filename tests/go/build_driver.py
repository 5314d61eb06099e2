"""Build tests/go/libcni-driver (Go's libcni behind a tiny CLI) in GOPATH
mode against Debian's golang-github-appc-cni-dev.  Used by the libcni tests
and the benchmarks."""
import os
import subprocess

DRIVER_SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libcni-driver")
GOPATH_SYSTEM = "/usr/share/gocode"
LIBCNI_SRC = os.path.join(GOPATH_SYSTEM, "src", "github.com", "containernetworking", "cni", "libcni")


class BuildError(RuntimeError):
    pass


def build(work_dir: str) -> str:
    """Build into work_dir; return the binary's path."""
    if not os.path.isdir(LIBCNI_SRC):
        raise BuildError(f"libcni source missing at {LIBCNI_SRC}: install golang-github-appc-cni-dev "
                         "(listed in tools/apt-packages.txt)")
    out = os.path.join(work_dir, "libcni-driver")
    env = dict(os.environ, GO111MODULE="off", GOPATH=f"{GOPATH_SYSTEM}:{work_dir}/gopath",
               GOCACHE=f"{work_dir}/gocache", GOFLAGS="", CGO_ENABLED="0")
    proc = subprocess.run(["go", "build", "-o", out, "."], cwd=DRIVER_SRC, env=env,
                          capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        raise BuildError(f"building libcni-driver failed:\n{proc.stdout}{proc.stderr}")
    return out
