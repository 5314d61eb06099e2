"""Hand a plugin request to the node agent, if one serves this node.

This is the first thing a plugin executable runs, so it imports only what
the interpreter has loaded anyway plus socket.  The agent listens on an
abstract unix socket: those are scoped to a network namespace, so a plugin
run inside a lab host's netns never reaches another host's agent; the agent
also refuses callers from another mount namespace.

The agent acknowledges a request with one byte as soon as it takes it on.
No listener, a refusal, or no acknowledgement in time: the caller does the
work itself, with identical results.  After the acknowledgement the caller
waits for the answer, since the work may already have begun.
"""
import os
import socket
import struct
import sys

DEFAULT_ADDRESS = "pycni-agent"  # abstract: "\0pycni-agent"
ACK = b"A"
ACK_TIMEOUT = 1.0
ANSWER_TIMEOUT = 600.0
_LEN = struct.Struct("!I")


def address(environ=os.environ) -> str:
    return "\0" + environ.get("PYCNI_AGENT_SOCKET", DEFAULT_ADDRESS)


def send_frame(sock: socket.socket, payload: bytes) -> None:
    sock.sendall(_LEN.pack(len(payload)) + payload)


def recv_exact(sock: socket.socket, n: int) -> bytes:
    chunks = []
    while n:
        chunk = sock.recv(n)
        if not chunk:
            raise ConnectionError("agent closed the connection")
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def recv_frame(sock: socket.socket) -> bytes:
    return recv_exact(sock, _LEN.unpack(recv_exact(sock, _LEN.size))[0])


def encode_request(plugin: str, environ, stdin: bytes) -> bytes:
    """plugin NUL env (KEY=VALUE NUL-separated) NUL NUL stdin: no json
    import on the client's path."""
    env = b"\0".join(f"{k}={v}".encode() for k, v in environ.items())
    return plugin.encode() + b"\0" + env + b"\0\0" + stdin


def decode_request(payload: bytes) -> tuple[str, dict, bytes]:
    plugin, _, rest = payload.partition(b"\0")
    env_blob, _, stdin = rest.partition(b"\0\0")
    env = {}
    for item in env_blob.split(b"\0") if env_blob else []:
        key, _, value = item.decode().partition("=")
        env[key] = value
    return plugin.decode(), env, stdin


def delegate(plugin: str) -> None:
    """Serve this process's request through the agent and exit, or return
    so the caller does the work itself."""
    if os.environ.get("PYCNI_NO_AGENT"):
        return
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    except OSError:
        return
    try:
        sock.connect(address())
    except OSError:
        sock.close()
        return  # no agent on this node (or in this netns)
    stdin = b"" if os.environ.get("CNI_COMMAND") == "VERSION" and sys.stdin.isatty() else sys.stdin.buffer.read()
    try:
        sock.settimeout(ACK_TIMEOUT)
        send_frame(sock, encode_request(plugin, os.environ, stdin))
        if sock.recv(1) != ACK:
            raise ConnectionError("agent refused the request")
    except OSError:
        sock.close()
        _run_locally(plugin, stdin)  # exits
    sock.settimeout(ANSWER_TIMEOUT)
    answer = recv_frame(sock)
    status, output = answer[0], answer[1:]
    sys.stdout.buffer.write(output)
    sys.stdout.flush()
    os._exit(status)


def _run_locally(plugin: str, stdin: bytes) -> None:
    from .runtime.install import PLUGINS
    from .skel import main
    import importlib

    main(importlib.import_module(PLUGINS[plugin]), stdin)
