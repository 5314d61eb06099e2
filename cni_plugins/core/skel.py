"""The entry point every plugin executable runs: parse, dispatch, print.

A plugin module provides ``add(req) -> result``, ``delete(req)``,
``check(req)`` and optionally ``status(req)`` and ``gc(req)``; results are
internal (1.x-shaped) dicts that this module renders in the config's version.
"""
import json
import os
import sys

from . import version
from ..kernel.errors import KernelError
from .errors import CNIError, IO_FAILURE, KERNEL_FAILURE

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
            result = version.result_for_version(plugin.add(req), cni_version)
            json.dumps(result, allow_nan=False)  # what we print must be JSON: a bug if not
            return 0, result
        if req.command == "DEL":
            plugin.delete(req)
            return 0, None
        if req.command == "CHECK":
            plugin.check(req)
            return 0, None
        handler = getattr(plugin, req.command.lower(), None)
        if handler is not None:
            handler(req)
        # without a handler: nothing to be unready about, nothing to collect
        return 0, None
    except CNIError as e:
        error = e
    except KernelError as e:  # netlink or nftables refused what no plugin step wrapped
        error = CNIError(KERNEL_FAILURE, str(e), getattr(e, "details", ""))
    except OSError as e:
        error = CNIError(IO_FAILURE, str(e))
    except Exception as e:  # noqa: BLE001 - the runtime must always get JSON
        error = CNIError(_GENERIC, f"{type(e).__name__}: {e}")
    return 1, error.to_json(cni_version if cni_version in version.SUPPORTED else "1.1.0")


def read_stdin() -> bytes:
    # VERSION may come with no stdin at all; don't block on a terminal.
    if os.environ.get("CNI_COMMAND") == "VERSION" and sys.stdin.isatty():
        return b""
    return sys.stdin.buffer.read()


def render(output: dict | None) -> bytes:
    return b"" if output is None else json.dumps(output, allow_nan=False).encode() + b"\n"


def main(plugin, stdin: bytes | None = None) -> None:
    status, output = handle(plugin, os.environ, read_stdin() if stdin is None else stdin)
    sys.stdout.buffer.write(render(output))
    sys.stdout.flush()
    sys.exit(status)
