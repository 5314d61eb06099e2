"""Run a plugin module through pycni's skel, with hooks to misbehave."""
import json
import os
import sys

from cni_plugins.core import skel


def run(plugin, *, post=None, plain_errors=False):
    """Like skel.main; ``post(status, output, environ)`` may rewrite the output."""
    stdin = sys.stdin.buffer.read() if os.environ.get("CNI_COMMAND") != "VERSION" else b""
    status, output = skel.handle(plugin, os.environ, stdin)
    if post is not None:
        output = post(status, output, os.environ)
    if status and plain_errors:
        sys.stdout.write(f"error: {(output or {}).get('msg', 'failed')}\n")
        sys.exit(status)
    if output is not None:
        sys.stdout.write(json.dumps(output) + "\n")
    sys.exit(status)
