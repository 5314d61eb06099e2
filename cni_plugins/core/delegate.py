"""IPAM delegation: run the network's IPAM plugin as the spec says.

The IPAM plugin named by ``ipam.type`` is looked up in CNI_PATH and executed
with the same environment and stdin.  When the binary found there is our own
host-local, it runs in-process instead (same code, same files, same locking)
to save an interpreter start on every container start.
"""
import json
import os

from . import version
from .errors import CNIError, INVALID_CONFIG, IO_FAILURE
from .plain import replace
from .request import Request
from .records import request_environ

_OURS = b"# pycni "  # second line of the executables `pycni install` writes
_IN_PROCESS = {"host-local": "ipam.host_local"}


def _find(req: Request, plugin_type: str) -> str:
    for directory in req.path:
        candidate = os.path.join(directory, plugin_type)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CNIError(IO_FAILURE, f"failed to find plugin {plugin_type!r} in path {req.path}")


def _in_process_module(binary: str, plugin_type: str):
    module = _IN_PROCESS.get(plugin_type)
    if module is None:
        return None
    with open(binary, "rb") as f:
        head = f.read(256)
    if _OURS not in head:
        return None
    import importlib

    return importlib.import_module(module)


def ipam_type(req: Request) -> str:
    conf = req.config.get("ipam")
    if not isinstance(conf, dict) or not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CNIError(INVALID_CONFIG, "network config lacks ipam.type")
    return conf["type"]


def run(req: Request, command: str) -> dict | None:
    """Run the IPAM plugin for ``command``; for ADD return its result (1.x)."""
    plugin_type = ipam_type(req)
    binary = _find(req, plugin_type)
    module = _in_process_module(binary, plugin_type)
    if module is not None:
        sub = replace(req, command=command)
        handler = {"ADD": "add", "DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}[command]
        fn = getattr(module, handler, None)
        return fn(sub) if fn else None

    env = dict(request_environ.get(os.environ))
    env.update({"CNI_COMMAND": command, "CNI_CONTAINERID": req.container_id, "CNI_NETNS": req.netns,
                "CNI_IFNAME": req.ifname, "CNI_PATH": os.pathsep.join(req.path)})
    import subprocess

    proc = subprocess.run([binary], input=req.raw_config, env=env, capture_output=True)
    out = proc.stdout.strip()
    parsed = None
    if out:
        try:
            parsed = json.loads(out)
        except ValueError:
            raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} printed invalid JSON", out.decode(errors="replace")) from None
    if proc.returncode != 0:
        if isinstance(parsed, dict) and "code" in parsed:
            raise CNIError(parsed["code"], parsed.get("msg", ""), parsed.get("details", ""))
        raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} failed", proc.stderr.decode(errors="replace"))
    if command == "ADD":
        if not isinstance(parsed, dict):
            raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} returned no result")
        return version.result_to_internal(parsed)
    return None
