"""IPAM delegation: run the network's IPAM plugin as the spec says.

The IPAM plugin named by ``ipam.type`` is looked up in CNI_PATH and executed
with the caller's environment and the same stdin.  When the executable
found there is one of ours (`pycni install` wrote it), its module runs
in-process instead (same code, same files, same locking), saving an
interpreter start on every container start.
"""
from . import execute, registry, version
from .errors import CNIError, INVALID_CONFIG, IO_FAILURE
from .plain import replace
from .request import Request

_OURS = b"\n# pycni "  # the executables `pycni install` writes: "# pycni <type> plugin, ..."
_HANDLERS = {"ADD": "add", "DEL": "delete", "CHECK": "check", "GC": "gc", "STATUS": "status"}


def ipam_type(req: Request) -> str:
    conf = req.config.get("ipam")
    if not isinstance(conf, dict) or not isinstance(conf.get("type"), str) or not conf["type"]:
        raise CNIError(INVALID_CONFIG, "network config lacks ipam.type")
    return conf["type"]


def _our_type(binary: str) -> str | None:
    """The registered type behind one of our executables, else None."""
    with open(binary, "rb") as f:
        head = f.read(256)
    start = head.find(_OURS)
    if start < 0:
        return None
    name = head[start + len(_OURS):].split(b" ", 1)[0].decode(errors="replace")
    return name if name in registry.PLUGINS else None


def run(req: Request, command: str) -> dict | None:
    """Run the IPAM plugin for ``command``; for ADD return its result (1.x)."""
    plugin_type = ipam_type(req)
    binary = execute.find(req.path, plugin_type)
    if binary is None:
        raise CNIError(IO_FAILURE, f"failed to find plugin {plugin_type!r} in path {req.path}")
    ours = _our_type(binary)
    if ours is not None:
        if ours not in registry.IPAM:
            raise CNIError(INVALID_CONFIG, f"ipam.type {plugin_type!r} is not an IPAM plugin")
        handler = getattr(registry.load(ours), _HANDLERS[command], None)
        return handler(replace(req, command=command)) if handler else None

    env = execute.cni_environ(req.environ, command, container_id=req.container_id, netns=req.netns,
                              ifname=req.ifname, args=req.environ.get("CNI_ARGS", ""), path=req.path)
    out = execute.run([binary], env, req.raw_config)
    if out.output_error:
        raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} printed invalid JSON",
                       out.stdout.decode(errors="replace").strip())
    if out.rc != 0:
        error = out.error_object()
        if error is not None:
            raise CNIError(error["code"], error.get("msg", ""), error.get("details", ""))
        raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} failed", out.stderr)
    if command == "ADD":
        if not isinstance(out.output, dict):
            raise CNIError(IO_FAILURE, f"IPAM plugin {plugin_type} returned no result")
        return version.result_to_internal(out.output, f"IPAM plugin {plugin_type}'s result")
    return None
