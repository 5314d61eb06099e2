"""The entry point every plugin executable runs: parse, dispatch, print.

A plugin module provides ``add(req) -> result``, ``delete(req)``,
``check(req)`` and optionally ``status(req)`` and ``gc(req)``; results are
internal (1.x-shaped) dicts that this module renders in the config's version.
"""
import json
import os
import sys

from . import version
from .errors import CNIError, IO_FAILURE, UNSUPPORTED_FIELD

# Unexpected exceptions map to this code so that the runtime still gets JSON.
_GENERIC = 999


def handle(plugin, environ, stdin: bytes) -> tuple[int, dict | None]:
    """Run one request; return (exit status, JSON to print or None)."""
    from .request import from_environment

    cni_version = "1.1.0"
    try:
        req = from_environment(environ, stdin)
        cni_version = req.cni_version
        if req.command == "VERSION":
            return 0, {"cniVersion": cni_version, "supportedVersions": list(version.SUPPORTED)}
        if req.command == "ADD":
            result = plugin.add(req)
            return 0, version.result_for_version(result, cni_version)
        if req.command == "DEL":
            plugin.delete(req)
            return 0, None
        if req.command == "CHECK":
            plugin.check(req)
            return 0, None
        handler = getattr(plugin, req.command.lower(), None)
        if handler is None:
            if req.command == "STATUS":
                return 0, None  # nothing to be unready about
            raise CNIError(UNSUPPORTED_FIELD, f"{req.command} is not supported by this plugin")
        handler(req)
        return 0, None
    except CNIError as e:
        return 1, e.to_json(cni_version if cni_version in version.SUPPORTED else "1.1.0")
    except OSError as e:
        return 1, CNIError(IO_FAILURE, str(e)).to_json(cni_version if cni_version in version.SUPPORTED else "1.1.0")
    except Exception as e:  # noqa: BLE001 - the runtime must always get JSON
        return 1, CNIError(_GENERIC, f"{type(e).__name__}: {e}").to_json(
            cni_version if cni_version in version.SUPPORTED else "1.1.0"
        )


def main(plugin) -> None:
    stdin = sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") != "VERSION" or not sys.stdin.isatty() else b""
    status, output = handle(plugin, os.environ, stdin)
    if output is not None:
        sys.stdout.write(json.dumps(output))
        sys.stdout.write("\n")
    sys.stdout.flush()
    sys.exit(status)
